"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023, arXiv:2210.03117;
muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``, ``clip/model.py``).

Text prompts as in IVLP (`prompt_tuning.methods.contexts.ivlp`): the input context ``ctx`` ``(n, text width)`` and
one learned set per text block ``1..depth-1``. The visual prompts are *coupled* to them: the image tower's input
prompts are ``proj(ctx)`` (appended after the patch tokens, before ``ln_pre``; present even at depth 1), and those
of image block ``j`` are ``proj_j(text prompts of block j)``, replacing the last ``n`` tokens; each ``proj`` is a
learned ``Linear(text width, vision width)``. As in the authors' code the ``depth - 1`` deep projections start as
copies of one linear layer (identical initialisation), and ``proj`` is another.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP, Hook
from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Capabilities, Context, Prompts, Task
from prompt_tuning.methods.contexts.ivlp import check_depth, init_text_context, normal_prompts
from prompt_tuning.methods.frame import PromptFrame
from prompt_tuning.methods.prompt_hooks import DeepTextPrompts, VisualPrompts


class MaPLe(Context):
    """Text prompts in the first ``depth`` text blocks, projected into the first ``depth`` image blocks.

    Args:
        n_ctx: prompt vectors per layer (both towers).
        depth: prompt depth J (layers 0..J-1 of each tower).
        ctx_init: words the input context starts from (see `prompt_tuning.methods.contexts.ivlp`).
        init_std: standard deviation of the deep text prompts' (and a random context's) initialisation.
    """

    capabilities = Capabilities(image_tower=True)

    def __init__(self, clip: FrozenCLIP, task: Task, n_ctx: int = 2, depth: int = 9,
                 ctx_init: str | None = "a photo of a", init_std: float = 0.02):
        super().__init__()
        if n_ctx < 1 or depth < 1:
            raise UserError(f"n_ctx={n_ctx} and depth={depth} must be >= 1")
        check_depth(clip, depth, depth, names=("depth", "depth"))
        ctx, prefix = init_text_context(clip, n_ctx, ctx_init, init_std)
        self.ctx = nn.Parameter(ctx)
        self.frame = PromptFrame(prefix, n_ctx)
        self.proj = nn.Linear(clip.width, clip.vision_width).to(clip.device)
        self.deep_text = normal_prompts(depth - 1, n_ctx, clip.width, clip.device, init_std)
        one = nn.Linear(clip.width, clip.vision_width).to(clip.device)
        self.deep_proj = nn.ModuleList([copy.deepcopy(one) for _ in range(depth - 1)])
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        self.frame.set_task(clip, task)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.frame.assemble(self.ctx), self.frame.eot_index, shared_prefix=self.frame.shared_prefix(),
                       text_hook=DeepTextPrompts(self.deep_text.unbind(0)))

    def image_hook(self) -> Hook:
        return VisualPrompts([self.proj(self.ctx)] + [p(t) for p, t in zip(self.deep_proj, self.deep_text.unbind(0))])
