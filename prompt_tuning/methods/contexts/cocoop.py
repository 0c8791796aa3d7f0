"""CoCoOp: Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for Vision-Language
Models", CVPR 2022, arXiv:2203.05557).

A light meta-net maps each image's (normalised) feature to a bias added to every context vector, so each image
gets its own prompts: ``v_m(x) = v_m + pi(x)``, with ``pi = Linear(d, d/16) -> ReLU -> Linear(d/16, ctx_dim)``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import Capabilities, Prompts, Task
from prompt_tuning.methods.contexts.coop import CoOp


class CoCoOp(CoOp):
    """Image-conditional context: unified context vectors plus a per-image bias from a meta-net.

    Args:
        clip, task: as for `CoOp`.
        n_ctx, ctx_init: as for `CoOp` (the paper: 4 vectors from "a photo of a").
        reduction: the meta-net's bottleneck, ``hidden = d // reduction`` (16).
    """

    capabilities = Capabilities(conditional=True)

    def __init__(self, clip: FrozenCLIP, task: Task, n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                 reduction: int = 16):
        super().__init__(clip, task, n_ctx=n_ctx, ctx_init=ctx_init)
        d = clip.embed_dim
        hidden = max(1, d // reduction)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(d, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, clip.width)),
        ])).to(clip.device)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        if image_features is None:
            raise ValueError("CoCoOp prompts depend on the image: pass image_features")
        bias = self.meta_net(image_features)  # (B, ctx_dim)
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, n_ctx, ctx_dim)
        return Prompts(self.assemble(ctx), self.frame.eot_index, shared_prefix=self.frame.shared_prefix(),
                       per_image=True)  # (B, C, L, D): one set per image
