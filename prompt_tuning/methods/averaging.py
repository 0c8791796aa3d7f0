"""Averaging a method's learned tensors over epochs: PromptSRC's Gaussian-weighted prompt aggregation (GPA;
Khattak et al., ICCV 2023, arXiv:2307.06948; muzairkhattak/PromptSRC trainers/promptsrc.py).

At the end of epoch ``e`` (1-based, after its last optimiser step) the learned tensors, weighted by
``w_e = g(e) / sum_{a=1..N} g(a)`` with ``g`` the Gaussian density of mean ``mean`` and std ``std`` and ``N`` the
number of epochs, are added to a running sum; after epoch ``N`` the sum replaces the learned tensors, so the
checkpoint and every evaluation use the aggregated prompts. Training itself continues from the un-averaged
tensors, as in the authors' code. The running sum is a persistent buffer: a resumed run continues it exactly.
The authors sum the whole model's state in fp16, frozen weights included, which changes many of them (see
docs/methods.md); here only the learned tensors are summed, in fp32.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def gaussian_weights(n_epochs: int, mean: float, std: float) -> list[float]:
    """``w_e`` for ``e = 1..n_epochs``: the Gaussian density at ``e``, normalised to sum to 1."""
    if std <= 0:
        raise ValueError(f"std={std!r} must be > 0")
    g = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, n_epochs + 1)]
    total = sum(g)
    if total == 0.0:
        raise ValueError(f"mean={mean!r}, std={std!r}: every one of the {n_epochs} epochs gets weight 0")
    return [x / total for x in g]


class Averaging(nn.Module):
    """Base class: `attach` to the method's learned tensors, then `epoch_end` after every epoch (before its
    checkpoint is written); its state is checkpointed with the method's."""

    def attach(self, module: nn.Module) -> None:
        raise NotImplementedError

    def epoch_end(self, module: nn.Module, epoch: int, n_epochs: int) -> None:
        raise NotImplementedError


class GaussianPromptAveraging(Averaging):
    """Gaussian prompt aggregation over epochs.

    Args:
        mean, std: the Gaussian over epoch numbers (PromptSRC base-to-novel: 15, 1).
    """

    def __init__(self, mean: float = 15.0, std: float = 1.0):
        super().__init__()
        self.mean, self.std = float(mean), float(std)
        self._names: list[str] = []

    def attach(self, module: nn.Module) -> None:
        """Keep a running sum for each learned parameter of ``module`` (persistent buffers: checkpointed)."""
        self._names = [name for name, p in module.named_parameters() if p.requires_grad]
        for i, name in enumerate(self._names):
            self.register_buffer(f"sum_{i}", torch.zeros_like(module.get_parameter(name)))

    @torch.no_grad()
    def epoch_end(self, module: nn.Module, epoch: int, n_epochs: int) -> None:
        """Add epoch ``epoch`` (0-based) to the sum; after the last epoch, load the average into ``module``."""
        w = gaussian_weights(n_epochs, self.mean, self.std)[epoch]
        for i, name in enumerate(self._names):
            total = getattr(self, f"sum_{i}")
            total.add_(module.get_parameter(name), alpha=w)
            if epoch == n_epochs - 1:
                module.get_parameter(name).copy_(total)
