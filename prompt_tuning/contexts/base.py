"""The contract every prompt method implements.

A `Context` turns the class names of a `Task` into prompt embeddings with a leading *set* axis
``(S, C, L, D)``: S = 1 for CoOp, K contexts for an ensemble, Monte-Carlo samples for a variational prompt, one
set per image for a conditional context. `FrozenCLIP.encode_prompts` then gives class text features
``(S, C, d)``; the module scores each image against its set(s) and averages predictions over sets.

Everything a context builds from class names (token prefixes, suffixes, positions) is a *non-persistent* buffer:
checkpoints hold only learned vectors, and `set_task` rebinds a trained context to another class set (e.g. the
novel classes of a base-to-novel split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

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
    """Prompt embeddings ``(S, C, L, D)``, the end-of-text position of each class's prompt ``(C,)``, and an
    optional extra loss the context adds to training (e.g. a variational prompt's weighted KL term)."""

    embeddings: torch.Tensor
    eot_index: torch.Tensor
    aux_loss: torch.Tensor | None = None


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
    """

    conditional: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    frozen_image_tower: ClassVar[bool] = True

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
        features = clip.encode_prompts(prompts.embeddings.reshape(s * c, length, dim), prompts.eot_index.repeat(s))
        return self.reduce(F.normalize(features, dim=-1).view(s, c, -1)), prompts.aux_loss


def embed_prompts(clip: FrozenCLIP, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings of `texts`, cut after the longest end-of-text token, and each text's EOT position.

    Returns:
        ``(n, L, width)`` embeddings with ``L = max(eot) + 1``, and ``(n,)`` EOT positions.
    """
    tokens = clip.tokenize(texts)
    eot = clip.eot_index(tokens)
    return clip.token_embeddings(tokens)[:, : int(eot.max()) + 1], eot
