"""Zero-shot CLIP (Radford et al., 2021, arXiv:2103.00020): the dataset's hand-crafted prompt, nothing learned."""

from __future__ import annotations

import torch

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import Context, Prompts, Task
from prompt_tuning.methods.frame import embed_prompts


class ZeroShot(Context):
    """One fixed prompt per class, ``task.template.format(classname)``; no parameters, so no training."""

    def __init__(self, clip: FrozenCLIP, task: Task):
        super().__init__()
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        embeddings, eot = embed_prompts(clip, task.prompts())
        self.register_buffer("embeddings", embeddings, persistent=False)  # (n_cls, L, D)
        self.register_buffer("eot_index", eot, persistent=False)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.embeddings.unsqueeze(0), self.eot_index)
