"""A method of a kind the package does not ship, written in one file: class-aware prompts put into one middle
block of the text tower (TCP's place for them). A small network maps each class's zero-shot text feature to
``n`` vectors that replace positions ``1..n`` at the input of block ``layer``, different for every class; so the
prompts follow the class set (any class set works) and the hook tells the backbone it changes rows unequally."""

from __future__ import annotations

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP, Hook, Layout
from prompt_tuning.methods.base import Prompts, Task
from prompt_tuning.methods.classifier import zero_shot_classifier
from prompt_tuning.methods.contexts.zeroshot import ZeroShot


class ClassPromptHook(Hook):
    """At the input of text block ``layer``, positions ``1..n`` of each prompt take its class's vectors."""

    class_uniform = False  # every class's row changes differently: no prefix may be shared across classes

    def __init__(self, layer: int, vectors: torch.Tensor):
        self.layer, self.vectors = layer, vectors  # (C, n, width)

    def before_block(self, i: int, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        if i != self.layer:
            return x
        rows = torch.arange(x.shape[0], device=x.device) % layout.classes + layout.class_offset
        n = self.vectors.shape[1]
        return torch.cat([x[:, :1], self.vectors[rows].to(x.dtype), x[:, 1 + n:]], dim=1)


class ClassAwarePrompt(ZeroShot):
    """Class-aware prompts from the zero-shot class features, inserted at one middle text block.

    Args:
        n: vectors per class (positions 1..n of the hand-crafted prompt are replaced at ``layer``).
        layer: the text block whose input takes them (None: the middle one).
        hidden: the generator's hidden width.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, n: int = 2, layer: int | None = None, hidden: int = 16):
        super().__init__(clip, task)
        self.n = n
        self.layer = clip.text_blocks // 2 if layer is None else layer
        self.generator = nn.Sequential(nn.Linear(clip.embed_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, n * clip.width)).to(clip.device)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        super().set_task(clip, task)
        classifier = zero_shot_classifier(clip, task.classnames, task.template)
        self.register_buffer("zero_shot", classifier, persistent=False)  # (C, d)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        vectors = self.generator(self.zero_shot).view(len(self.zero_shot), self.n, -1)  # (C, n, width)
        return Prompts(self.embeddings.unsqueeze(0), self.eot_index, text_hook=ClassPromptHook(self.layer, vectors))
