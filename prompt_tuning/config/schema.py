"""The schema checks of a composed config: a command-line value of the type its key holds, and every numeric key
within its range; each failure is one line naming the key, the value and what is accepted."""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from prompt_tuning.core.errors import UserError


def check_type(key: str, old: Any, new: Any) -> None:
    if old is None or new is None or isinstance(old, str) and old.startswith("${"):
        return
    ok = {
        bool: (bool,),
        int: (int,),
        float: (int, float),
        str: (str, int, float, bool),
    }
    for kind, accepted in ok.items():
        if type(old) is kind:
            if type(new) not in accepted or (kind is not bool and type(new) is bool):
                raise UserError(f"{key}={new!r}: expected {kind.__name__}, like the current value {old!r}")
            return
    if isinstance(old, DictConfig | ListConfig) and type(new) in (int, float, bool, str):
        raise UserError(f"{key}={new!r}: expected a {'mapping' if isinstance(old, DictConfig) else 'list'}")


_INT = (int,)
_NUM = (int, float)
_NAME = re.compile(r"^[^./\\][^/\\]*$")  # one path component: no separator, not hidden, not "." or ".."


_FLOAT32_MAX = 3.4028234663852886e38  # rates become float32 tensors in the optimizer's step


def _finite(v) -> bool:
    return math.isfinite(float(v)) and abs(float(v)) <= _FLOAT32_MAX


RANGES: dict[str, tuple[tuple, Any, str]] = {
    # the largest seed whose per-epoch seeds (seed * 1000 + epoch) fit numpy's 32 bits
    "seed": (_INT, lambda v: 0 <= v <= 4_000_000, "an integer >= 0 and <= 4000000"),
    "protocol.shots": (_INT, lambda v: v == -1 or v >= 1, "images per class >= 1, or -1 for all"),
    "optim.lr": (_NUM, lambda v: _finite(v) and v > 0, "a number > 0 (finite, below 3.4e38)"),
    "optim.optimizer.init_args.momentum": (_NUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (_NUM, lambda v: _finite(v) and v >= 0, "a number >= 0 (finite, below 3.4e38)"),
    "optim.max_epochs": (_INT, lambda v: v >= 1, "an integer >= 1 (or null: protocol.epochs[shots])"),
    "optim.optimizer.init_args.eps": (_NUM, lambda v: _finite(v) and v > 0, "a number > 0 (finite, below 3.4e38)"),
    "optim.scheduler.init_args.warmup_epochs": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "optim.scheduler.init_args.warmup_lr": (_NUM, lambda v: _finite(v) and v >= 0,
                                            "a number >= 0 (finite, below 3.4e38)"),
    "data.batch_size": (_INT, lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (_INT, lambda v: v >= 1, "an integer >= 1"),
    "data.cache_views": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "dataset.n_classes": (_INT, lambda v: v >= 1, "an integer >= 1 (or null)"),
    "trainer.check_val_every_n_epoch": (_INT, lambda v: v >= 1, "an integer >= 1 (or null: no validation)"),
    "trainer.log_every_n_steps": (_INT, lambda v: v >= 1, "an integer >= 1"),
    "trainer.devices": (_INT, lambda v: v >= 1, "an integer >= 1 (processes, one per GPU)"),
    "runtime.num_workers": (_INT, lambda v: v >= 0, "an integer >= 0"),
    "runtime.text_chunk": (_INT, lambda v: v >= 0, "an integer >= 0 (0: no chunks)"),
    "data.feature_dtype": ((str,), lambda v: v in ("float32", "float16"), "float32 or float16"),
    "protocol.subsample": ((str,), lambda v: v in ("all", "base", "novel", "new"), "all, base or novel"),
    "dataset.name": ((str,), lambda v: bool(_NAME.match(v)), "a name without / or a leading . (it names a folder)"),
    "method.name": ((str,), lambda v: bool(_NAME.match(v)), "a name without / or a leading . (it names a folder)"),
    "protocol.name": ((str,), lambda v: bool(_NAME.match(v)), "a name without / or a leading . (it names a folder)"),
    "output_dir": ((str,), lambda v: bool(v.strip()), "a folder (not empty)"),
}


def check_ranges(cfg: DictConfig) -> None:
    """Every numeric key within its range (`RANGES`), and the few structured numeric values; one-line errors
    naming the key, the value and what is accepted."""
    for key, (kinds, ok, accepted) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        try:
            good = type(value) in kinds and ok(value)
        except (OverflowError, ValueError):  # an integer too large for a float
            good = False
        if not good:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise UserError(f"{key}={shown}: expected {accepted}")
    subsets = OmegaConf.select(cfg, "protocol.eval_subsets", default=None) or []
    if any(s not in ("all", "base", "novel", "new") for s in subsets):
        raise UserError(f"protocol.eval_subsets={list(subsets)!r}: each one of all, base or novel")
    if OmegaConf.select(cfg, "protocol.subsample", default="all") == "all" and {"base", "novel", "new"} & set(subsets):
        raise UserError(f"protocol.eval_subsets={list(subsets)!r} with protocol.subsample=all: the run trains on "
                        "every class, so its base and novel accuracies would test classes it was trained on; "
                        "train on protocol.subsample=base (protocol=base2novel does)")
    scale = OmegaConf.select(cfg, "data.crop_scale", default=None)
    if scale is not None and not (len(scale) == 2 and all(type(v) in _NUM for v in scale)
                                  and 0 < scale[0] <= scale[1] <= 1):
        raise UserError(f"data.crop_scale={list(scale)!r}: expected [min, max] with 0 < min <= max <= 1")
    for shots, epochs in (OmegaConf.select(cfg, "protocol.epochs", default=None) or {}).items():
        if type(epochs) is not int or epochs < 1:
            raise UserError(f"protocol.epochs.{shots}={epochs!r}: expected an integer >= 1")
    check_averaging(cfg)


def run_epochs(cfg: DictConfig) -> tuple[str, int] | None:
    """The run's training epochs and the key they come from (``optim.max_epochs``, else the protocol's epochs
    for its shots), or None when neither says."""
    epochs = OmegaConf.select(cfg, "optim.max_epochs", default=None)
    if type(epochs) is int:
        return "optim.max_epochs", epochs
    shots = OmegaConf.select(cfg, "protocol.shots", default=None)
    by_shots = OmegaConf.select(cfg, "protocol.epochs", default=None) or {}
    if shots in by_shots and type(by_shots[shots]) is int:
        return f"protocol.epochs.{shots}", by_shots[shots]
    return None


def check_averaging(cfg: DictConfig) -> None:
    """An averaging over epochs (PromptSRC's Gaussian prompt aggregation) must be centred on an epoch the run
    trains: a mean beyond the last epoch (the paper's 15 of 20 epochs with ``optim.max_epochs=4``) would weight
    epochs that never run, and silently keep only what the last one learned."""
    args = OmegaConf.select(cfg, "method.averaging.init_args", default=None)
    if not isinstance(args, DictConfig):
        return
    mean, std = args.get("mean"), args.get("std")
    if std is not None and (type(std) not in _NUM or not std > 0):
        raise UserError(f"method.averaging.init_args.std={std!r}: expected a number > 0")
    epochs = run_epochs(cfg)
    if mean is None or epochs is None:
        return
    key, n = epochs
    if type(mean) not in _NUM or not 1 <= mean <= n:
        raise UserError(f"method.averaging.init_args.mean={mean!r}: expected an epoch from 1 to {n} ({key}={n}): "
                        "the average over epochs is centred on an epoch the run trains; scale the mean with the "
                        "epochs")
