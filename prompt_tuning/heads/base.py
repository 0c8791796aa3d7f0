"""The contract of a head: a `Context` that scores frozen image features with its own function.

A head keeps what a prompt context keeps (one file, one YAML, the same data, protocols, feature cache, sweeps,
tables and plots) and changes only how images are scored: it overrides `Context.score`. A head that learns from
the training set outside gradient steps (a cache model, a scikit-learn fit) sets ``fits = True`` and implements
`Context.fit` (before any gradient step) and `Context.select` (after them, e.g. a search on validation images).
Its frozen text side, when it has one, is the zero-shot classifier of `zero_shot_classifier`, computed once
per class set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from prompt_tuning.contexts.base import Context, Task
from prompt_tuning.errors import UserError

if TYPE_CHECKING:
    from prompt_tuning.clip import FrozenCLIP


def zero_shot_classifier(clip: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Zero-shot CLIP's class weights ``(C, d)``, normalised: each class's prompt features (one per template,
    underscores in names read as spaces), normalised, averaged over templates and normalised again (CLIP's
    prompt ensembling; with one template, the template's normalised feature)."""
    prompts = [t.format(name.replace("_", " ")) for name in classnames for t in templates]
    features = clip.encode_text(prompts).view(len(classnames), len(templates), -1)
    if len(templates) == 1:
        return features[:, 0]
    return F.normalize(features.mean(dim=1), dim=-1)


class Head(Context):
    """Base class of heads.

    Args:
        templates: the hand-crafted prompts of the zero-shot classifier (default: the dataset's template).
    """

    def __init__(self, templates: Sequence[str] | None = None):
        super().__init__()
        if templates is not None:
            templates = [templates] if isinstance(templates, str) else list(templates)
            bad = [t for t in templates if "{}" not in t]
            if not templates or bad:
                raise ValueError(f"templates={templates!r}: each template needs a {{}} where the class name goes")
        self.templates = templates
        self.classnames: tuple[str, ...] = ()

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        """Rebuild the zero-shot classifier for ``task`` (the dataset's template unless ``templates`` is set)."""
        self.classnames = task.classnames
        templates = self.templates or [task.template]
        self.register_buffer("classifier", zero_shot_classifier(clip, task.classnames, templates), persistent=False)

    def text_features(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None):
        """The frozen zero-shot classifier ``(1, C, d)``; a head's class side is fixed."""
        return self.classifier.unsqueeze(0), None


def check_same_classes(head: Head, fitted: tuple[str, ...], task: Task) -> None:
    """Refuse to rebind a class-bound head that was fitted on ``fitted`` to another class set."""
    if fitted and tuple(task.classnames) != fitted:
        raise UserError(
            f"{type(head).__name__} learned a classifier over its {len(fitted)} training classes and cannot test "
            f"another class set ({len(task.classnames)} classes): use protocol=fewshot with eval_subsets [all]"
        )
