"""A method of a kind the package does not ship, written in one file: a learned residual bottleneck added to the
hidden states after each of the last ``k`` blocks of both towers (adapters in the higher layers, as MMA places
them), on top of the dataset's hand-crafted prompt. The up-projections start at zero, so at step 0 the method is
zero-shot CLIP exactly."""

from __future__ import annotations

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP, Hook, Layout
from prompt_tuning.methods.base import Capabilities, Prompts, Task
from prompt_tuning.methods.contexts.zeroshot import ZeroShot


class Bottlenecks(nn.Module):
    """One residual bottleneck ``x + up(relu(down(x)))`` per hooked block (``up`` zero-initialised)."""

    def __init__(self, blocks: int, width: int, hidden: int):
        super().__init__()
        self.down = nn.ModuleList([nn.Linear(width, hidden) for _ in range(blocks)])
        self.up = nn.ModuleList([nn.Linear(hidden, width) for _ in range(blocks)])
        for up in self.up:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)


class AdapterHook(Hook):
    """Adds block ``i``'s residual to its output, for the last ``len(adapters.down)`` blocks of the tower.
    Position-wise and the same for every row: the text pass may stop at the EOT and share prefixes."""

    def __init__(self, adapters: Bottlenecks):
        self.adapters = adapters

    def after_block(self, i: int, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        j = i - (layout.blocks - len(self.adapters.down))
        if j < 0:
            return x
        return x + self.adapters.up[j](torch.relu(self.adapters.down[j](x)))


class ResidualAdapter(ZeroShot):
    """Residual adapters after the last ``k`` blocks of the text and image towers.

    Args:
        k: adapted blocks per tower.
        hidden: the bottleneck width.
    """

    capabilities = Capabilities(image_tower=True)

    def __init__(self, clip: FrozenCLIP, task: Task, k: int = 1, hidden: int = 8):
        super().__init__(clip, task)
        self.text_adapters = Bottlenecks(k, clip.width, hidden).to(clip.device)
        self.image_adapters = Bottlenecks(k, clip.vision_width, hidden).to(clip.device)

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        return Prompts(self.embeddings.unsqueeze(0), self.eot_index, text_hook=AdapterHook(self.text_adapters))

    def image_hook(self) -> Hook:
        return AdapterHook(self.image_adapters)
