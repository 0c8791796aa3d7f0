"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022, arXiv:2207.09519; gaopengcuhk/Tip-Adapter ``main.py``, ``utils.py``).

A cache model built from the few-shot training set: the keys are the training images' features (the mean over
``augment_views`` augmented views of the unnormalised features, then normalised), the values their one-hot labels.
For a normalised test feature ``f``::

    logits = 100 * f @ W.T + alpha * exp(-beta * (1 - f @ keys.T)) @ values

with ``W`` zero-shot CLIP's classifier. ``alpha`` (residual ratio) and ``beta`` (sharpness) are searched on the
validation features over the authors' grid: ``beta`` in ``0.1 + i * (scale_beta - 0.1) / steps_beta`` and
``alpha`` likewise, beta in the outer loop, keeping the first best (strictly better) accuracy.

Tip-Adapter-F (``fine_tune: true``) makes the keys a parameter, trains them with cross-entropy at the initial
``alpha``/``beta`` (AdamW, eps 1e-4, cosine over all steps, batch 256: the method's recipe), then searches
``alpha``/``beta`` with the trained keys. The authors also keep the epoch with the best *test* accuracy and report
the larger of two test accuracies; this toolkit tests the last epoch once, as for every method.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.methods.base import Capabilities, FrozenFeatures, Head, Task, refuse_other_classes
from prompt_tuning.methods.classifier import check_templates, zero_shot_classifier

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP

log = logging.getLogger(__name__)


def search_grid(scale: float, steps: int) -> list[float]:
    """The authors' search values: ``[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


class TipAdapter(Head):
    """Training-free cache model over frozen features (Tip-Adapter), or its fine-tuned keys (Tip-Adapter-F).

    Args:
        alpha, beta: the initial residual ratio and sharpness (``init_alpha``, ``init_beta``; used for training,
            and kept when ``search`` is false).
        search: choose alpha and beta on the validation features after fitting / training.
        search_scale: the largest ``(beta, alpha)`` searched (per dataset in the authors' configs).
        search_steps: values searched for ``(beta, alpha)`` (200, 20).
        augment_views: augmented views of each training image averaged into its key (``augment_epoch``, 10).
        fine_tune: train the keys (Tip-Adapter-F).
        val: validation images of the search: the dataset's ``full`` val split (the authors) or the protocol's
            ``fewshot`` draw.
        scale: the zero-shot logits' factor (the authors' constant 100, CLIP's learned temperature).
        templates: the zero-shot classifier's prompts (default: the dataset's; ImageNet: the authors' 7).
    """

    def __init__(self, clip: FrozenCLIP, task: Task, alpha: float = 1.0, beta: float = 1.0, search: bool = True,
                 search_scale: Sequence[float] = (7.0, 3.0), search_steps: Sequence[int] = (200, 20),
                 augment_views: int = 10, fine_tune: bool = False, val: Literal["full", "fewshot"] = "full",
                 scale: float = 100.0, templates: Sequence[str] | None = None):
        super().__init__()
        self.templates = check_templates(templates)
        if len(search_scale) != 2 or len(search_steps) != 2 or min(search_steps) < 1 or augment_views < 0:
            raise ValueError(f"search_scale={list(search_scale)!r} and search_steps={list(search_steps)!r} need "
                             f"two values each (beta, alpha), steps >= 1; augment_views={augment_views!r} >= 0")
        if val not in ("full", "fewshot"):
            raise ValueError(f"val={val!r}: choose full or fewshot")
        self.init_alpha, self.init_beta = float(alpha), float(beta)
        self.alpha, self.beta = self.init_alpha, self.init_beta
        self.search, self.search_scale, self.search_steps = search, tuple(search_scale), tuple(search_steps)
        self.scale = scale
        self.capabilities = Capabilities(fits=True, fit_views=augment_views, fit_val=val, class_bound=True)
        self.keys = nn.Parameter(torch.empty(0, clip.embed_dim, device=clip.device), requires_grad=fine_tune)
        self._fitted: tuple[str, ...] = ()
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        refuse_other_classes(self, self._fitted, task)
        self.classnames = task.classnames
        classifier = zero_shot_classifier(clip, task.classnames, self.templates or task.template)
        self.register_buffer("classifier", classifier, persistent=False)  # (C, d)
        if not self._fitted:
            self.register_buffer("values", torch.empty(0, len(task.classnames), device=clip.device), persistent=False)

    def fit(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        """Build the cache: keys = normalise(mean over views of the training features), values = one-hot."""
        keys = F.normalize(data.train.float().mean(dim=0), dim=-1).to(self.keys.device)  # (N, d)
        self.keys.data = keys
        self.values = F.one_hot(data.train_labels, len(self.classnames)).float().to(self.keys.device)  # (N, C)
        self.alpha, self.beta = self.init_alpha, self.init_beta
        self._fitted = tuple(self.classnames)

    def _logits(self, f: torch.Tensor, alpha: float, beta: float, affinity: torch.Tensor | None = None):
        clip_logits = self.scale * f @ self.classifier.T
        if affinity is None:
            affinity = f @ self.keys.T  # (B, N)
        cache_logits = (-1 * (beta - beta * affinity)).exp() @ self.values  # the authors' order of operations
        return clip_logits + cache_logits * alpha

    def select(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        """Search alpha and beta on the validation features (the authors' grid and order)."""
        if not self.search:
            return
        f = F.normalize(data.val.float(), dim=-1).to(self.keys.device)
        labels = data.val_labels.to(self.keys.device)
        clip_logits = self.scale * f @ self.classifier.T
        affinity = f @ self.keys.T
        alphas = search_grid(self.search_scale[1], self.search_steps[1])
        best, best_beta, best_alpha = 0, 0.0, 0.0
        for beta in search_grid(self.search_scale[0], self.search_steps[0]):
            cache_logits = (-1 * (beta - beta * affinity)).exp() @ self.values
            for alpha in alphas:
                correct = int(((clip_logits + cache_logits * alpha).argmax(-1) == labels).sum())
                if correct > best:
                    best, best_beta, best_alpha = correct, beta, alpha
        self.alpha, self.beta = best_alpha, best_beta
        log.info("tip-adapter: alpha %.3f, beta %.3f (val acc %.2f)", best_alpha, best_beta,
                 100.0 * best / max(1, len(labels)))

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        return self._logits(F.normalize(image_features, dim=-1), self.alpha, self.beta)
