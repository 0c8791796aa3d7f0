"""The two prompt rules of the multimodal methods, as hooks (muzairkhattak/multimodal-prompt-learning
``clip/model.py``): deep text prompts replace positions of the text sequence at the input of each block, visual
prompts are appended after the patch tokens and then replace themselves at the input of each block.
IVLP, deep language prompting, VPT-deep, MaPLe and PromptSRC use them; the backbone never learns which.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prompt_tuning.backbone.hooks import Hook, Layout
from prompt_tuning.core.errors import UserError


class DeepTextPrompts(Hook):
    """``prompts[j]`` ``(m, width)`` (shared by every prompt) or ``(n, m, width)`` (one per prompt) replaces positions
    ``start .. start + m - 1`` at the input of text block ``j + 1``, raw (no positional embedding), as the authors
    do; blocks after the last one carry the previous block's outputs at those positions.

    Args:
        prompts: one tensor per deep block (``depth - 1`` of them).
        start: the first position replaced (1: right after the start token).
    """

    def __init__(self, prompts: Sequence[torch.Tensor], start: int = 1):
        self.prompts, self.first = list(prompts), start
        self.class_uniform = all(p.dim() == 2 for p in self.prompts)  # per-prompt sets cannot share a prefix

    def start(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        if len(self.prompts) >= layout.blocks:
            raise UserError(f"{len(self.prompts)} deep text prompt layers for a text transformer of {layout.blocks} "
                            "blocks: the prompt depth is at most the block count")
        m = max((p.shape[-2] for p in self.prompts), default=0)
        if self.prompts and self.first + m > int(layout.eot_index.min()):
            raise UserError("deep text prompts would overwrite a prompt's end-of-text token")
        return x

    def before_block(self, i: int, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        if not 1 <= i <= len(self.prompts):
            return x
        p = self.prompts[i - 1].to(x.dtype)
        lo, hi = max(self.first, layout.start), min(self.first + p.shape[-2], layout.start + x.shape[1])
        if lo >= hi:  # none of the replaced positions is in this part of the sequence
            return x
        p = p[..., lo - self.first:hi - self.first, :]
        p = p.expand(x.shape[0], -1, -1) if p.dim() == 2 else p
        a, b = lo - layout.start, hi - layout.start
        return torch.cat([x[:, :a], p, x[:, b:]], dim=1)


class VisualPrompts(Hook):
    """``prompts[0]`` ``(m, width)`` is appended after the patch tokens once the positional embedding is added (so
    it gets none) and before ``ln_pre``; ``prompts[j]`` replaces the last ``m`` tokens at the input of image block
    ``j``, raw. The class token is pooled, so the prompts are never removed. Shared by every image."""

    def __init__(self, prompts: Sequence[torch.Tensor]):
        self.prompts = list(prompts)

    def start(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        if len(self.prompts) > layout.blocks:
            raise UserError(f"{len(self.prompts)} visual prompt layers for an image transformer of {layout.blocks} "
                            "blocks: the prompt depth is at most the block count")
        if not self.prompts:
            return x
        return torch.cat([x, self.prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)

    def before_block(self, i: int, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        if not 1 <= i < len(self.prompts):
            return x
        n, p = self.prompts[0].shape[-2], self.prompts[i]
        if p.shape[-2] != n:
            raise UserError(f"visual prompts of layer {i} have {p.shape[-2]} tokens, layer 0 has {n}")
        return torch.cat([x[:, : x.shape[1] - n], p.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
