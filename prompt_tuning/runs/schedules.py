"""Learning-rate schedules, named by ``optim.scheduler.class_path`` like every other part of a run.

`WarmupCosine` is CoOp's Dassl schedule (a constant warm-up, then a cosine over ``max_epochs``), counted in
epochs or, with ``interval: step``, in optimisation steps (Tip-Adapter-F's per-step ``CosineAnnealingLR``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def warmup_cosine(epoch: int, max_epochs: int, warmup_epochs: int, lr: float, warmup_lr: float) -> float:
    """Learning-rate factor of an epoch: ``warmup_lr / lr`` during warm-up, then cosine from 1 over
    ``max_epochs`` (Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=max_epochs)``)."""
    if epoch < warmup_epochs:
        return warmup_lr / lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs))


class Schedule:
    """Base class: `scheduler` builds the torch scheduler of an optimizer; ``interval`` says when Lightning
    steps it (``epoch`` or ``step``)."""

    interval: Literal["epoch", "step"] = "epoch"

    def scheduler(self, optimizer: torch.optim.Optimizer, max_epochs: int,
                  steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The scheduler of ``optimizer`` for a run of ``max_epochs`` epochs and ``steps`` optimisation steps."""
        raise NotImplementedError


class WarmupCosine(Schedule):
    """A constant warm-up at ``warmup_lr``, then a cosine decay from the optimizer's rate to 0.

    Args:
        warmup_epochs: epochs at ``warmup_lr`` before the cosine starts (CoOp: 1).
        warmup_lr: the warm-up rate (CoOp: 1e-5).
        interval: ``epoch``: the rate changes once per epoch (Dassl); ``step``: the warm-up and the cosine count
            optimisation steps (the warm-up then lasts ``warmup_epochs`` epochs' worth of steps).
    """

    def __init__(self, warmup_epochs: int = 1, warmup_lr: float = 1e-5, interval: Literal["epoch", "step"] = "epoch"):
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval={interval!r}: choose epoch or step")
        self.warmup_epochs, self.warmup_lr, self.interval = warmup_epochs, warmup_lr, interval

    def scheduler(self, optimizer: torch.optim.Optimizer, max_epochs: int,
                  steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        lr = optimizer.param_groups[0]["lr"]
        length, warmup = max_epochs, self.warmup_epochs
        if self.interval == "step":  # the same schedule counted in optimisation steps
            length = max(1, steps)
            warmup = self.warmup_epochs * max(1, length // max_epochs)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warmup_cosine(e, length, warmup, lr, self.warmup_lr))
