"""Training objectives. An objective maps a forward pass's `Outputs`, the labels and the `Inputs` it declared in
``needs`` to named loss terms; the module sums the terms (or hands them to a gradient rule), in fp32. Objectives
see logits, features and frozen zero-shot features, never a method's internals; the frozen features they keep are
computed once per class set (non-persistent buffers, so checkpoints stay method-only).

An objective that needs more than the forward pass (the frozen image features of the batch, the epoch, ...)
names it in ``needs``; the run resolves every name in one place (`prompt_tuning.runs.inputs`) and passes it in
`Inputs`. Logits carry a leading set axis ``(M, B, C)`` (prompt sets or Monte-Carlo samples).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.methods.base import Inputs, Outputs, Task
from prompt_tuning.methods.classifier import check_templates, zero_shot_classifier

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP


def set_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over sets: ``mean_m CE(logits[m], labels)`` for logits ``(M, B, C)``."""
    m, b, c = logits.shape
    return F.cross_entropy(logits.reshape(m * b, c), labels.repeat(m))


class Objective(nn.Module):
    """Base class: ``forward(outputs, labels, inputs) -> {name: loss term}``; `set_task` rebuilds frozen targets.

    Attributes:
        needs: the fields of `Inputs` the objective reads (e.g. ``{"frozen_image_features"}``); the others are
            None.
    """

    needs: ClassVar[frozenset[str]] = frozenset()

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        """Rebuild what depends on the class set (nothing by default)."""

    def forward(self, outputs: Outputs, labels: torch.Tensor, inputs: Inputs | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class CrossEntropy(Objective):
    """Cross-entropy (CoOp, CoCoOp, ECO): ``{"ce": mean_m CE(logits[m], labels)}``."""

    def forward(self, outputs: Outputs, labels: torch.Tensor, inputs: Inputs | None = None) -> dict[str, torch.Tensor]:
        return {"ce": set_cross_entropy(outputs.logits, labels)}


class _ZeroShotTargets(Objective):
    """Keeps the frozen hand-crafted-prompt text features ``(C, d)`` of the current class set.

    ``template`` (with ``{}`` for the class name) replaces the dataset's template: the authors of KgCoOp and
    ProGrad use their own per-dataset prompts for the teacher, which the method's recipes set per dataset.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, template: str | None = None):
        super().__init__()
        if template is not None and "{}" not in template:
            raise ValueError(f"template={template!r} needs a {{}} where the class name goes")
        self.template = template
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        features = zero_shot_classifier(clip, task.classnames, self.template or task.template)
        self.register_buffer("zs_features", features, persistent=False)


class KnowledgeGuided(_ZeroShotTargets):
    """KgCoOp (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", CVPR 2023,
    arXiv:2303.13283): cross-entropy plus ``weight * (1 - mean_c cos(w_c, w_c^clip))``, the distance between the
    learned class text features and those of the dataset's hand-crafted prompt.

    This is the authors' code's form; for unit vectors ``1 - cos = ||w - w^clip||^2 / 2``, so it equals the
    paper's mean squared L2 distance with half the weight.

    Args:
        weight: lambda (8.0 in the paper and code).
        template: the hand-crafted prompt (default: the dataset's); the authors' per-dataset ones are set by
            the method's recipes.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, weight: float = 8.0, template: str | None = None):
        super().__init__(clip, task, template)
        self.weight = weight

    def distance(self, text_features: torch.Tensor) -> torch.Tensor:
        """``1 - mean cos`` between text features ``(S, C, d)`` (normalised) and the zero-shot ones."""
        return 1.0 - (text_features * self.zs_features.to(text_features.dtype)).sum(-1).mean()

    def forward(self, outputs: Outputs, labels: torch.Tensor, inputs: Inputs | None = None) -> dict[str, torch.Tensor]:
        return {
            "ce": set_cross_entropy(outputs.logits, labels),
            "kg": self.weight * self.distance(outputs.text_features),
        }


class ZeroShotDistillation(_ZeroShotTargets):
    """ProGrad's two losses (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023,
    arXiv:2205.14865): cross-entropy, and the KL divergence from zero-shot CLIP's predictions (hand-crafted
    prompt) to the prompt's predictions, at temperature T (computed as the soft-target cross-entropy, as the
    authors' code does: same gradient as the KL). With the `ProGrad` gradient rule the KL term only steers the
    cross-entropy gradient; without it the two are summed (plain distillation).

    Args:
        temperature: T (1.0).
        template: the teacher's hand-crafted prompt (default: the dataset's); see `KnowledgeGuided`.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, temperature: float = 1.0, template: str | None = None):
        super().__init__(clip, task, template)
        self.temperature = temperature
        self.logit_scale = float(clip.logit_scale)

    def forward(self, outputs: Outputs, labels: torch.Tensor, inputs: Inputs | None = None) -> dict[str, torch.Tensor]:
        t = self.temperature
        zs_logits = self.logit_scale * outputs.image_features @ self.zs_features.to(outputs.image_features.dtype).T
        teacher = F.softmax(zs_logits / t, dim=-1)  # (B, C)
        student = F.log_softmax(outputs.logits / t, dim=-1)  # (M, B, C)
        kl = -(teacher * student).sum(-1).mean() * t * t
        return {"ce": set_cross_entropy(outputs.logits, labels), "kl": kl}


class MonteCarloLikelihood(Objective):
    """Bayesian prompt learning's data term (Derakhshani et al., ICCV 2023, arXiv:2210.02390): the negative log of
    the Monte-Carlo average likelihood, ``-mean_b log (1/M) sum_m p(y_b | x_b, r_m)``, as in the authors' code
    (``estimator="log_mean_exp"``); ``estimator="mean_ce"`` averages the cross-entropy over samples instead.
    The KL term comes from the context (its ``aux_loss``)."""

    def __init__(self, estimator: str = "log_mean_exp"):
        super().__init__()
        if estimator not in ("log_mean_exp", "mean_ce"):
            raise ValueError(f"estimator={estimator!r}: choose log_mean_exp or mean_ce")
        self.estimator = estimator

    def forward(self, outputs: Outputs, labels: torch.Tensor, inputs: Inputs | None = None) -> dict[str, torch.Tensor]:
        if self.estimator == "mean_ce":
            return {"nll": set_cross_entropy(outputs.logits, labels)}
        m = outputs.logits.shape[0]
        log_p = outputs.logits.log_softmax(-1).gather(-1, labels.view(1, -1, 1).expand(m, -1, 1)).squeeze(-1)
        return {"nll": -(torch.logsumexp(log_p, dim=0) - math.log(m)).mean()}


class SelfRegulating(Objective):
    """PromptSRC's self-regulating objective (Khattak et al., "Self-regulating Prompts: Foundational Model
    Adaptation without Forgetting", ICCV 2023, arXiv:2307.06948; muzairkhattak/PromptSRC trainers/promptsrc.py):

    ``CE + text_weight * mean|t - t0| + image_weight * mean|f - f0| + KL(p0 || p) / (B * C)``

    with ``t``/``f`` the prompted normalised class text / image features, ``t0`` the frozen class features
    (the mean of the *unnormalised* frozen text features over ``templates``, then normalised), ``f0`` the frozen
    image tower's normalised features of the same images, ``p0 = softmax(logit_scale * f0 @ t0.T)`` (no
    gradient) and ``p`` the prompted prediction; the KL is summed and divided by the number of logits, as the
    authors' ``F.kl_div(..., reduction="sum", log_target=True) / logits.numel()``.

    Args:
        text_weight, image_weight: 25 and 10 in every released config.
        templates: the frozen text targets' templates: a list, or the name of a tuple in
            `prompt_tuning.methods.templates` (the authors: ``CLIP_IMAGENET_60``).
    """

    needs = frozenset({"frozen_image_features"})

    def __init__(self, clip: FrozenCLIP, task: Task, text_weight: float = 25.0, image_weight: float = 10.0,
                 templates: str | list[str] = "CLIP_IMAGENET_60"):
        super().__init__()
        if isinstance(templates, str) and "{}" not in templates:
            from prompt_tuning.methods import templates as named

            if not hasattr(named, templates):
                raise ValueError(f"templates={templates!r}: not a list of prompts nor a name in "
                                 "prompt_tuning.methods.templates")
            templates = list(getattr(named, templates))
        self.templates = check_templates(templates)
        self.text_weight, self.image_weight = text_weight, image_weight
        self.logit_scale = float(clip.logit_scale)
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        """Remember the class set; its frozen targets are computed at the first training step that needs them
        (evaluating on other class sets never pays for ``len(templates)`` text passes)."""
        object.__setattr__(self, "_target_of", (clip, task.classnames))  # not a submodule: never checkpointed
        self.register_buffer("_frozen_text", None, persistent=False)

    @property
    def frozen_text(self) -> torch.Tensor:
        """Frozen class features ``(C, d)``: the normalised mean of the unnormalised template features."""
        if self._frozen_text is None:
            clip, classnames = self._target_of
            self._frozen_text = zero_shot_classifier(clip, classnames, self.templates, mean="raw")
        return self._frozen_text

    def forward(self, outputs: Outputs, labels: torch.Tensor, inputs: Inputs | None = None) -> dict[str, torch.Tensor]:
        logits = outputs.logits[0]  # (B, C)
        t0 = self.frozen_text.to(logits.dtype)
        terms = {"ce": F.cross_entropy(logits, labels),
                 "text_l1": self.text_weight * F.l1_loss(outputs.text_features[0], t0)}
        f0 = inputs.frozen_image_features if inputs is not None else None
        if f0 is None:
            raise ValueError("SelfRegulating needs the frozen image features of the batch (training only)")
        terms["image_l1"] = self.image_weight * F.l1_loss(outputs.image_features, f0.to(logits.dtype))
        with torch.no_grad():
            zs_logits = self.logit_scale * f0.to(logits.dtype) @ t0.T
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                      log_target=True)
        terms["logit_kl"] = kl / logits.numel()
        return terms
