"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023,
arXiv:2110.04544; gaopengcuhk/CLIP-Adapter ``clip_adapter.py``): a residual bottleneck MLP on the frozen image
features, trained with cross-entropy against the zero-shot classifier of hand-crafted prompts.

``f' = ratio * A(f) + (1 - ratio) * f`` with ``A = ReLU(W2 ReLU(W1 f))`` (no biases, ``W1: d -> d / reduction``),
``logits = logit_scale * normalise(f') @ normalise(w_c)``; ``f`` is the image encoder's unnormalised output, as
in the authors' code. Only the adapter is trained (the authors use CoOp's trainer and schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.methods.base import Head, Task
from prompt_tuning.methods.classifier import check_templates, zero_shot_classifier

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP


class ClipAdapter(Head):
    """Residual feature adapter on the image side; the class side is zero-shot CLIP's and any class set works.

    Args:
        reduction: bottleneck factor of the adapter (4).
        ratio: residual ratio, the adapter's share of the new feature (0.2 in the authors' code).
        templates: hand-crafted prompts of the classifier (default: the dataset's template; the authors use
            CoOp's per-dataset ones, which the dataset configs hold).
    """

    def __init__(self, clip: FrozenCLIP, task: Task, reduction: int = 4, ratio: float = 0.2,
                 templates: Sequence[str] | None = None):
        super().__init__()
        self.templates = check_templates(templates)
        d = clip.embed_dim
        if reduction < 1 or d // reduction < 1 or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"reduction={reduction!r} must be in [1, {d}] and ratio={ratio!r} in [0, 1]")
        self.ratio = ratio
        self.adapter = nn.Sequential(
            nn.Linear(d, d // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(d // reduction, d, bias=False),
            nn.ReLU(inplace=True),
        ).to(clip.device)
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        """Zero-shot CLIP's classifier of ``task`` (the dataset's template unless ``templates`` is set)."""
        classifier = zero_shot_classifier(clip, task.classnames, self.templates or task.template)
        self.register_buffer("classifier", classifier, persistent=False)

    def adapt(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised adapted features ``(B, d)`` of unnormalised image features."""
        x = self.adapter(image_features)
        return F.normalize(self.ratio * x + (1 - self.ratio) * image_features, dim=-1)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        return clip.logit_scale.float() * self.adapt(image_features) @ self.classifier.float().T
