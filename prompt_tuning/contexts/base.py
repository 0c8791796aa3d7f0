"""The contract every prompt method implements.

A `Context` turns the class names of a `Task` into prompt embeddings with a leading *set* axis
``(S, C, L, D)``: S = 1 for CoOp, K contexts for an ensemble, Monte-Carlo samples for a variational prompt, one
set per image for a conditional context. `FrozenCLIP.encode_prompts` then gives class text features
``(S, C, d)``; the module scores each image against its set(s) and averages predictions over sets.

Everything a context builds from class names (token prefixes, suffixes, positions) is a *non-persistent* buffer:
checkpoints hold only learned vectors, and `set_task` rebinds a trained context to another class set (e.g. the
novel classes of a base-to-novel split).

A *head* (linear probe, CLIP-Adapter, Tip-Adapter) is a context that scores frozen image features its own way:
it overrides `score`, and, if it learns from the training set without (or before) gradient steps, sets
``fits = True`` and implements `fit` (and `select`, called after gradient training). See
`prompt_tuning.heads.base.Head`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from prompt_tuning.precision import full_precision

if TYPE_CHECKING:
    from prompt_tuning.clip import FrozenCLIP


@dataclass(frozen=True)
class Task:
    """What a context is asked to classify.

    Args:
        classnames: class names in label order.
        template: the dataset's hand-crafted prompt, with ``{}`` for the class name.
    """

    classnames: tuple[str, ...]
    template: str = "a photo of a {}."

    def __post_init__(self):
        object.__setattr__(self, "classnames", tuple(self.classnames))

    def prompts(self) -> list[str]:
        """The hand-crafted prompt of every class (underscores in names read as spaces)."""
        return [self.template.format(name.replace("_", " ")) for name in self.classnames]


@dataclass
class Prompts:
    """Prompt embeddings ``(S, C, L, D)``, the end-of-text position of each class's prompt ``(C,)``, an
    optional extra loss the context adds to training (e.g. a variational prompt's weighted KL term), and optional
    deep prompts: ``deep[j]`` ``(m, D)`` replaces positions ``deep_start ..`` at the input of text block ``j + 1``
    (see `FrozenCLIP.encode_prompts`)."""

    embeddings: torch.Tensor
    eot_index: torch.Tensor
    aux_loss: torch.Tensor | None = None
    deep: list[torch.Tensor] | None = None
    deep_start: int = 1


@dataclass
class Outputs:
    """What a forward pass gives objectives: logits ``(M, B, C)``, normalised image features ``(B, d)``,
    normalised class text features (``(S, C, d)``; ``(M * B, C, d)`` for conditional contexts), the
    context's auxiliary loss (or None) and, in training, for an objective with ``needs_frozen_image_features``,
    the normalised features of the same images through the *unprompted* image tower ``(B, d)``."""

    logits: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    aux_loss: torch.Tensor | None = None
    frozen_image_features: torch.Tensor | None = None  # normalised, unprompted tower (objectives that ask)


@dataclass
class FrozenFeatures:
    """Frozen, *unnormalised* image features of a run's training and validation images, for methods that fit
    on them (`Context.fit`).

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


class Context(nn.Module):
    """Base class of prompt methods.

    Subclasses take ``(clip, task, **hyper_parameters)`` in ``__init__`` (the keyword defaults are the method's
    schema, the YAML under ``configs/method/`` holds the paper's values) and implement `set_task` and `forward`.

    Attributes:
        conditional: `forward` needs image features ``(B, d)`` and returns ``S = M * B`` prompt sets ordered
            ``(m, b)``: set ``m * B + b`` prompts image ``b`` (M = 1 for CoCoOp, M samples for a conditional
            variational context).
        stochastic: `forward` draws random samples, so evaluation must not reuse class features across batches.
        frozen_image_tower: the method leaves the image encoder untouched, so image features may be cached
            (a method with visual prompts sets this to False and always sees images).
        fits: the method learns from the frozen features of the training set outside gradient steps (`fit`,
            `select`); the run then hands it a `FrozenFeatures` (from the feature cache when enabled).
        fit_views: with ``fits``, how many augmented views of each training image `fit` receives (0: one view
            under the evaluation transform).
        fit_val: with ``fits``, the validation images `fit` receives: the protocol's few-shot ``val`` draw
            (``min(K, 4)`` per class), or the dataset's ``full`` validation split.
        class_bound: what the method learns belongs to the training classes (a classifier over them, a cache of
            their labels), so it cannot be tested on another class set; such runs are refused before training.
    """

    conditional: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    frozen_image_tower: ClassVar[bool] = True
    fits: ClassVar[bool] = False
    fit_views: int = 0
    fit_val: Literal["fewshot", "full"] = "fewshot"
    class_bound: ClassVar[bool] = False

    @property
    def shared_prefix(self) -> int:
        """Leading prompt positions that are the same for every class of a prompt set (start token and a unified
        context before the class name); `FrozenCLIP.encode_prompts` may compute them once per set. 0: none."""
        return 0

    @property
    def sets_per_image(self) -> int:
        """Prompt sets a conditional context makes per image (M); bounds the images per evaluation text pass."""
        return 1

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        """(Re)build everything that depends on the class names; learned parameters are kept."""
        raise NotImplementedError

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        """Prompt embeddings ``(S, C, L, D)``; ``image_features`` ``(B, d)`` for conditional contexts."""
        raise NotImplementedError

    def visual_prompts(self) -> list[torch.Tensor] | None:
        """Visual prompt tokens per layer for the image tower (`FrozenCLIP.encode_images`): ``[0]`` ``(m, width)``
        is appended to the patch tokens, ``[j]`` replaces them at the input of block ``j``. None (the default):
        the image tower runs as is. A context that returns prompts has ``frozen_image_tower`` false."""
        return None

    def fit(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        """Learn from the frozen training features before any gradient step (``fits`` methods only)."""

    def select(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        """Called once after gradient training (or right after `fit` when nothing is trained): e.g. choose
        hyper-parameters on the validation features (``fits`` methods only)."""

    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """Combine the normalised text features of the sets ``(S, C, d)``; identity unless overridden (an
        ensemble averages its members here, so it scores like a single prompt)."""
        return features

    def text_features(
        self, clip: FrozenCLIP, image_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised class text features ``(S, C, d)`` (after `reduce`) and the context's auxiliary loss."""
        prompts = self(image_features)
        s, c, length, dim = prompts.embeddings.shape

        def encode(embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:  # (S, c', L, D) -> (S, c', d)
            n = embeddings.shape[1]
            return clip.encode_prompts(embeddings.reshape(s * n, length, dim), eot.repeat(s), prompts.deep,
                                       prompts.deep_start, self.shared_prefix, s).view(s, n, -1)

        chunk = clip.text_chunk
        if chunk and c > chunk and torch.is_grad_enabled():  # one chunk of classes' activations at a time
            features = torch.cat([
                torch.utils.checkpoint.checkpoint(encode, prompts.embeddings[:, i:i + chunk],
                                                  prompts.eot_index[i:i + chunk], use_reentrant=False)
                for i in range(0, c, chunk)], dim=1)
        else:
            features = encode(prompts.embeddings, prompts.eot_index)
        with full_precision(features):
            return self.reduce(F.normalize(features.float(), dim=-1)), prompts.aux_loss

    def score(self, clip: FrozenCLIP, image_features: torch.Tensor,
              text_features: torch.Tensor | None = None) -> Outputs:
        """Logits of images against the class prompts: ``logit_scale * normalise(img) @ normalise(txt).T`` per
        prompt set.

        Args:
            image_features: ``(B, d)`` unnormalised image features.
            text_features: ``(S, C, d)`` class features from `text_features` to reuse (evaluation), or None.
        """
        aux = None
        if text_features is None:  # the text pass runs under the trainer's precision (bf16 autocast on a GPU)
            text_features, aux = self.text_features(clip, F.normalize(image_features, dim=-1))
        with full_precision(image_features):  # the logits never in bf16 (see prompt_tuning.precision)
            img = F.normalize(image_features.float(), dim=-1)
            txt = text_features.float()
            if self.conditional:  # set m * B + b belongs to image b
                b = img.shape[0]
                logits = torch.einsum("bd,mbcd->mbc", img, txt.view(-1, b, *txt.shape[1:]))  # (M, B, C)
            else:
                logits = torch.einsum("bd,scd->sbc", img, txt)
            return Outputs(clip.logit_scale.float() * logits, img, txt, None if aux is None else aux.float())


def embed_prompts(clip: FrozenCLIP, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings of `texts`, cut after the longest end-of-text token, and each text's EOT position.

    Returns:
        ``(n, L, width)`` embeddings with ``L = max(eot) + 1``, and ``(n,)`` EOT positions.
    """
    tokens = clip.tokenize(texts)
    eot = clip.eot_index(tokens)
    return clip.token_embeddings(tokens)[:, : int(eot.max()) + 1], eot
