"""The one place where the inputs objectives ask for are resolved (`prompt_tuning.methods.base.Inputs`).

An objective names what it needs beside the forward pass in ``needs``; each name is a `Provider` here: how a
training step computes it, and what a training batch must carry for it (the build reads that to prepare the
data). A new input is one entry here and one name in an objective, not an edit along the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from prompt_tuning.core.errors import UserError
from prompt_tuning.methods.base import Inputs


@dataclass(frozen=True)
class Provider:
    """How an `Inputs` field is computed in a training step: ``resolve(module, batch, image_features)`` with the
    `prompt_tuning.runs.module.PromptTuner` of the step, and the key a training batch must carry for it (None:
    nothing)."""

    resolve: Callable[[Any, dict, torch.Tensor], Any]
    batch_key: str | None = None


PROVIDERS: dict[str, Provider] = {
    # the frozen tower's features: the batch's own when the method leaves the tower alone, else the feature
    # cache's (the batch's "frozen" entry, when the data carries them), else a second, unprompted pass
    "frozen_image_features": Provider(lambda m, batch, f: m.frozen_image_features(batch, f), batch_key="frozen"),
    "zero_shot_text_features": Provider(lambda m, batch, f: m.zero_shot_text_features()),
    "epoch": Provider(lambda m, batch, f: m.current_epoch),
    "max_epochs": Provider(lambda m, batch, f: m.max_epochs),
}


def check_needs(needs: Iterable[str], where: str) -> frozenset[str]:
    """The names an objective needs, each one an `Inputs` field; an unknown one is an error naming the valid."""
    needs = frozenset(needs)
    unknown = sorted(needs - set(PROVIDERS))
    if unknown:
        raise UserError(f"{where} needs {', '.join(unknown)}, which a run cannot provide; an objective may need "
                        f"{', '.join(sorted(PROVIDERS))}")
    return needs


def batch_keys(needs: Iterable[str]) -> set[str]:
    """What a training batch must carry for these needs."""
    return {PROVIDERS[n].batch_key for n in needs if PROVIDERS[n].batch_key}


def resolve(needs: Iterable[str], module: Any, batch: dict, image_features: torch.Tensor) -> Inputs:
    """The `Inputs` of a training step, with every needed field computed and the others None."""
    return Inputs(**{name: PROVIDERS[name].resolve(module, batch, image_features) for name in needs})
