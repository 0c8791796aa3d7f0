"""ECO: Ensembling Context Optimization (Agnolucci et al., ICCV 2023 Workshops, arXiv:2307.14063).

K learnable contexts, possibly shorter than CoOp's, trained jointly. A class's weight is the average of its K
normalised text features (renormalised, as in CLIP's prompt ensembling), so once trained the ensemble collapses
to a single weight matrix and inference costs the same as one prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import Prompts, Task
from prompt_tuning.methods.contexts.coop import CoOp


class ECO(CoOp):
    """An ensemble of K unified contexts whose class features are averaged.

    Args:
        clip, task: as for `CoOp`.
        n_prompts: K, the number of contexts.
        n_ctx: vectors per context.
        init_std: standard deviation of each context's random initialisation.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, n_prompts: int = 8, n_ctx: int = 4, init_std: float = 0.02):
        super().__init__(clip, task, n_ctx=n_ctx, init_std=init_std)
        ctx = torch.empty(n_prompts, n_ctx, clip.width, device=clip.device)
        nn.init.normal_(ctx, std=init_std)
        self.ctx = nn.Parameter(ctx)  # (K, n_ctx, D)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.assemble(self.ctx), self.frame.eot_index, shared_prefix=self.frame.shared_prefix())

    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """``(K, C, d)`` -> ``(1, C, d)``: the renormalised mean of the members' normalised features."""
        return F.normalize(features.mean(dim=0, keepdim=True), dim=-1)
