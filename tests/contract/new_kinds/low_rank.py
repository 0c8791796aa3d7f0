"""A method of a kind the package does not ship, written in one file: low-rank updates of the attention
projections (CLIP-LoRA's place for them): each block's query/key/value projection ``W`` runs as
``W + B A`` with a learned rank-``r`` pair, ``B`` zero-initialised, in the image tower (and optionally the text
tower), on top of the dataset's hand-crafted prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP, Hook, Projections
from prompt_tuning.methods.base import Capabilities, Prompts, Task
from prompt_tuning.methods.contexts.zeroshot import ZeroShot


class LowRank(nn.Module):
    """One ``(B, A)`` pair per block: ``B`` ``(3w, r)`` zeros, ``A`` ``(r, w)`` small random."""

    def __init__(self, blocks: int, width: int, rank: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(blocks, rank, width) * 0.02)
        self.b = nn.Parameter(torch.zeros(blocks, 3 * width, rank))


class LowRankHook(Hook):
    """Block ``i`` attends with ``in_weight + b[i] @ a[i]``."""

    def __init__(self, update: LowRank):
        self.update = update

    def attention(self, i: int, weights: Projections) -> Projections:
        delta = self.update.b[i] @ self.update.a[i]
        return Projections(weights.in_weight + delta.to(weights.in_weight.dtype), weights.in_bias,
                           weights.out_weight, weights.out_bias)


class LowRankAttention(ZeroShot):
    """Low-rank updates of the attention projections of every block of the chosen towers.

    Args:
        rank: r.
        towers: ``image``, ``text``, or both.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, rank: int = 2, towers: Sequence[str] = ("image",)):
        super().__init__(clip, task)
        if not set(towers) <= {"image", "text"} or not towers:
            raise ValueError(f"towers={list(towers)!r}: choose image, text or both")
        self.towers = tuple(towers)
        if "image" in towers:
            self.image_update = LowRank(clip.vision_blocks, clip.vision_width, rank).to(clip.device)
        if "text" in towers:
            self.text_update = LowRank(clip.text_blocks, clip.width, rank).to(clip.device)
        self.capabilities = Capabilities(image_tower="image" in towers)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        hook = LowRankHook(self.text_update) if "text" in self.towers else None
        return Prompts(self.embeddings.unsqueeze(0), self.eot_index, text_hook=hook)

    def image_hook(self) -> Hook | None:
        return LowRankHook(self.image_update) if "image" in self.towers else None
