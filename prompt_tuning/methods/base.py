"""The method contract: what a prompt method, or a head, is and declares.

A method is one of two kinds, siblings under `Method`:

* a `Context` turns the class names of a `Task` into prompt embeddings with a leading *set* axis ``(S, C, L, D)``
  (S = 1 for CoOp, K contexts for an ensemble, Monte-Carlo samples for a variational prompt, one set per image for
  a conditional context). The frozen CLIP's text pass gives class text features ``(S, C, d)``; images are scored
  against them, ``logit_scale * normalise(img) @ normalise(txt).T`` per set, and predictions average over sets.
* a `Head` scores frozen image features its own way (a linear probe, a cache model, an adapter on the features).

Either declares what it is in one `Capabilities` (``self.capabilities``), may change the image tower through a
`Hook` (`Method.image_hook`), and may learn from frozen features outside gradient steps (`Method.fit`,
`Method.select`). Everything a method builds from class names is a *non-persistent* buffer: checkpoints hold only
what it learns, and `set_task` rebinds it to another class set (the novel classes of a base-to-novel split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.precision import full_precision

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP, Hook


def check_template(template: str, where: str = "the template") -> str:
    """A hand-crafted prompt names the class once, as ``{}``, and has no other braces: a template without one
    gives every class the same prompt, and ``{foo}`` or a second ``{}`` cannot be filled."""
    if not isinstance(template, str) or template.count("{}") != 1 or template.replace("{}", "").count("{") or (
            template.replace("{}", "").count("}")):
        raise UserError(f"{where} {template!r} must hold exactly one {{}}, where the class name goes, and no other "
                        "braces")
    return template


@dataclass(frozen=True)
class Task:
    """What a method is asked to classify.

    Args:
        classnames: class names in label order.
        template: the dataset's hand-crafted prompt, with ``{}`` for the class name.
    """

    classnames: tuple[str, ...]
    template: str = "a photo of a {}."

    def __post_init__(self):
        object.__setattr__(self, "classnames", tuple(self.classnames))
        check_template(self.template)

    def prompts(self) -> list[str]:
        """The hand-crafted prompt of every class (underscores in names read as spaces)."""
        return [self.template.format(name.replace("_", " ")) for name in self.classnames]


@dataclass(frozen=True)
class Capabilities:
    """What a method is, in one place; the build, the module, the cache and export read this and nothing else.

    Attributes:
        conditional: in evaluation, the prompt sets depend on each image (CoCoOp's meta-net, the per-image draws of
            Bayesian prompts), so class features are computed per batch, in chunks of images.
        sets_per_image: prompt sets a conditional method makes per image (bounds the images per text pass).
        stochastic: prompts are random draws, so class features are never reused across evaluation batches.
        image_tower: the method changes the image tower (`Method.image_hook`), so its image features never come
            from the feature cache (the frozen features an objective needs still can).
        fits: the method learns from the frozen features of the training set outside gradient steps
            (`Method.fit` before them, `Method.select` after); the run hands it a `FrozenFeatures`.
        fit_views: with ``fits``: augmented views of each training image `fit` receives (0: one view under the
            evaluation transform).
        fit_val: with ``fits``: the validation images it receives: the protocol's few-shot draw, or the dataset's
            ``full`` val split.
        class_bound: what the method learns belongs to the training classes (a classifier over them, a cache of
            their labels), so it cannot be tested on another class set; such runs are refused before training.
    """

    conditional: bool = False
    sets_per_image: int = 1
    stochastic: bool = False
    image_tower: bool = False
    fits: bool = False
    fit_views: int = 0
    fit_val: Literal["fewshot", "full"] = "fewshot"
    class_bound: bool = False


@dataclass
class Prompts:
    """What a context's forward pass gives the text tower.

    Attributes:
        embeddings: ``(S, C, L, D)`` prompt embeddings (positions past the last end-of-text token may be cut off).
        eot_index: ``(C,)`` the end-of-text position of each class's prompt.
        shared_prefix: leading positions every class of a set shares (the start token and a unified context), which
            the text pass may compute once per set; 0: none.
        per_image: the sets pair with the images of the batch: set ``m * B + b`` prompts image ``b``.
        text_hook: the context's changes to the text pass (deep prompts, adapters, ...), or None.
        aux_loss: an extra training loss of the context (a variational prompt's weighted KL term), or None.
    """

    embeddings: torch.Tensor
    eot_index: torch.Tensor
    shared_prefix: int = 0
    per_image: bool = False
    text_hook: Hook | None = None
    aux_loss: torch.Tensor | None = None


@dataclass
class TextSide:
    """Normalised class text features ``(S, C, d)``, the context's auxiliary loss, and whether the sets pair
    with the images of the batch (`Prompts.per_image`)."""

    features: torch.Tensor
    aux_loss: torch.Tensor | None = None
    per_image: bool = False


@dataclass
class Outputs:
    """A forward pass, as objectives see it: logits ``(M, B, C)`` (at least fp32), normalised image features
    ``(B, d)``, normalised class text features (``(S, C, d)``; ``(M * B, C, d)`` for sets per image; None for a
    head without a text side) and the method's auxiliary loss (or None)."""

    logits: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor | None
    aux_loss: torch.Tensor | None = None


@dataclass
class Inputs:
    """What an objective may ask for beside the forward pass, by naming fields in its ``needs``
    (`prompt_tuning.methods.objectives.Objective`); the run resolves each named one in one place
    (`prompt_tuning.runs.inputs`), the others stay None.

    Attributes:
        frozen_image_features: ``(B, d)`` normalised features of the batch's images through the *unprompted*
            image tower (the method's own for a method that leaves the tower alone; from the feature cache, or a
            second pass, otherwise).
        zero_shot_text_features: ``(C, d)`` frozen CLIP's normalised class features of the dataset's template.
        epoch: the training epoch, 0-based.
        max_epochs: the number of training epochs.
    """

    frozen_image_features: torch.Tensor | None = None
    zero_shot_text_features: torch.Tensor | None = None
    epoch: int | None = None
    max_epochs: int | None = None


@dataclass
class FrozenFeatures:
    """Frozen, *unnormalised* image features of a run's training and validation images, for methods that fit
    on them (`Method.fit`).

    Attributes:
        train: ``(V, N, d)``: V views of the N training images (augmented views, or V = 1 evaluation view).
        train_labels: ``(N,)``.
        val: ``(M, d)`` validation images under the evaluation transform.
        val_labels: ``(M,)``.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor


class Method(nn.Module):
    """What every method has: `capabilities`, `set_task`, optional fitting and an optional image hook.

    Subclasses take ``(clip, task, **hyper_parameters)`` in ``__init__``: the keyword defaults are the method's
    schema, the YAML under ``configs/method/`` holds the paper's values. A method whose capabilities depend on its
    arguments sets ``self.capabilities`` in ``__init__``.
    """

    capabilities: Capabilities = Capabilities()

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        """(Re)build everything that depends on the class names; learned parameters are kept."""
        raise NotImplementedError

    def image_hook(self) -> Hook | None:
        """The method's changes to the image tower's pass, or None (the tower runs as is). A method that returns
        a hook declares ``capabilities.image_tower``."""
        return None

    def fit(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        """Learn from the frozen training features before any gradient step (``capabilities.fits`` only)."""

    def select(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        """Called once after gradient training (or right after `fit` when nothing is trained): e.g. choose
        hyper-parameters on the validation features (``capabilities.fits`` only)."""

    def class_features(self, clip: FrozenCLIP) -> torch.Tensor | None:
        """Class features an evaluation may compute once and pass to every `score` of it, or None."""
        return None

    def score(self, clip: FrozenCLIP, image_features: torch.Tensor,
              class_features: torch.Tensor | None = None) -> Outputs:
        """`Outputs` of unnormalised image features ``(B, d)``; ``class_features`` from `class_features`."""
        raise NotImplementedError

    @property
    def export_kind(self) -> Literal["class_weights", "tensors"] | None:
        """What ``prompt-tuning export`` writes for this method: class weights usable with open_clip alone, the
        learned tensors (they need this toolkit), or nothing (the method cannot be exported)."""
        return None


def refuse_other_classes(method: Method, fitted: tuple[str, ...], task: Task) -> None:
    """A class-bound method fitted on the classes ``fitted`` refuses to be rebound to another class set."""
    if fitted and tuple(task.classnames) != fitted:
        raise UserError(
            f"{type(method).__name__} learned a classifier over its {len(fitted)} training classes and cannot test "
            f"another class set ({len(task.classnames)} classes): use protocol=fewshot with eval_subsets [all]"
        )


class Context(Method):
    """Base class of prompt methods: ``forward(image_features)`` gives `Prompts`; the text pass, the reduction
    over sets and the scoring are shared."""

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        """Prompt embeddings ``(S, C, L, D)``; ``image_features`` ``(B, d)`` (normalised) for prompts that depend
        on the images."""
        raise NotImplementedError

    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """Combine the normalised text features of the sets ``(S, C, d)``; identity unless overridden (an
        ensemble averages its members here, so it scores like a single prompt)."""
        return features

    def encode(self, clip: FrozenCLIP, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised class text features ``(S, C, d)`` (after `reduce`, in fp32) of `Prompts`, and their
        auxiliary loss. The text pass runs under the trainer's precision (bf16 autocast on a GPU)."""
        features = clip.encode_prompts(prompts.embeddings, prompts.eot_index, prompts.text_hook,
                                       prompts.shared_prefix)
        with full_precision(features):
            return self.reduce(F.normalize(features.float(), dim=-1)), prompts.aux_loss

    def text_side(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> TextSide:
        """The class side of a forward pass: `encode` of the context's `Prompts` (a context whose class
        features need no prompts, such as VPT's frozen ones, overrides this)."""
        prompts = self(image_features)
        features, aux = self.encode(clip, prompts)
        return TextSide(features, aux, prompts.per_image)

    def text_features(self, clip: FrozenCLIP,
                      image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised class text features ``(S, C, d)`` (after `reduce`) and the context's auxiliary loss."""
        side = self.text_side(clip, image_features)
        return side.features, side.aux_loss

    def class_features(self, clip: FrozenCLIP) -> torch.Tensor | None:
        if self.capabilities.conditional or self.capabilities.stochastic:
            return None  # they depend on the image or on fresh draws: computed per batch
        return self.text_features(clip)[0]

    def score(self, clip: FrozenCLIP, image_features: torch.Tensor,
              class_features: torch.Tensor | None = None) -> Outputs:
        """Logits of images against the class prompts: ``logit_scale * normalise(img) @ normalise(txt).T`` per
        prompt set, in fp32 whatever the autocast (`prompt_tuning.core.precision`).

        Args:
            image_features: ``(B, d)`` unnormalised image features.
            class_features: ``(S, C, d)`` class features from `class_features` to reuse (evaluation), or None.
        """
        side = TextSide(class_features)
        if class_features is None:  # the text pass runs under the trainer's precision (bf16 autocast on a GPU)
            side = self.text_side(clip, F.normalize(image_features, dim=-1))
        with full_precision(image_features):
            img = F.normalize(image_features.float(), dim=-1)
            txt = side.features.float()
            if side.per_image:  # set m * B + b belongs to image b
                b = img.shape[0]
                logits = torch.einsum("bd,mbcd->mbc", img, txt.view(-1, b, *txt.shape[1:]))  # (M, B, C)
            else:
                logits = torch.einsum("bd,scd->sbc", img, txt)
            aux = None if side.aux_loss is None else side.aux_loss.float()
            return Outputs(clip.logit_scale.float() * logits, img, txt, aux)

    @property
    def export_kind(self) -> Literal["class_weights", "tensors"] | None:
        caps = self.capabilities
        if caps.image_tower:
            return None  # class text features alone would classify with the wrong image features
        return "tensors" if caps.conditional or caps.stochastic else "class_weights"


class Head(Method):
    """Base class of heads: methods that score frozen image features with a function of their own (`logits`).

    A head keeps what a prompt context keeps (one file, one YAML, the same data, protocols, feature cache, sweeps,
    tables and plots). Its frozen text side, when it has one, is zero-shot CLIP's classifier
    (`prompt_tuning.methods.classifier.zero_shot_classifier`), computed once per class set by `set_task`.
    """

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, C)`` of unnormalised fp32 image features ``(B, d)`` (at least fp32: they are called with
        autocast off)."""
        raise NotImplementedError

    def score(self, clip: FrozenCLIP, image_features: torch.Tensor,
              class_features: torch.Tensor | None = None) -> Outputs:
        with full_precision(image_features):  # every head's scores in fp32 (prompt_tuning.core.precision)
            f = image_features.float()
            classifier = getattr(self, "classifier", None)  # (C, d) zero-shot class weights, where the head has them
            txt = None if classifier is None else classifier.float().unsqueeze(0)
            return Outputs(self.logits(clip, f).unsqueeze(0), F.normalize(f, dim=-1), txt)
