"""Experiment trackers through Lightning's own loggers: ``runtime.loggers: [csv, tensorboard, wandb]``.

``csv`` (the default) writes ``RUN/logs/metrics.csv``; ``tensorboard`` writes event files under
``RUN/tensorboard``; ``wandb`` logs to Weights & Biases, offline (``RUN/wandb``) unless ``WANDB_MODE=online`` is
set, in project ``runtime.wandb_project`` and grouped by ``runtime.experiment`` (a sweep sets it to the
experiment's name). Every logger receives the resolved config, flattened, and the run hash as
hyper-parameters. TensorBoard and W&B are optional: ``pip install -e '.[tracking]'``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prompt_tuning.config.compose import without_environment
from prompt_tuning.config.hashing import flatten
from prompt_tuning.core.errors import UserError
from prompt_tuning.runs.folder import RunFolder

NEEDS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> package it needs


def check_loggers(cfg: DictConfig) -> list[str]:
    """The logger names of ``runtime.loggers``, each known and installed, or a one-line error."""
    loggers = cfg.runtime.loggers or []
    names = [loggers] if isinstance(loggers, str) else [str(n) for n in loggers]  # runtime.loggers=csv: one
    for name in names:
        if name not in NEEDS:
            raise UserError(f"runtime.loggers: unknown logger {name!r}; choose among {', '.join(NEEDS)}")
        package = NEEDS[name]
        if package and importlib.util.find_spec(package) is None:
            raise UserError(f"runtime.loggers: {name} needs the package {package!r}, which is not installed: "
                            "pip install -e '.[tracking]'")
    return names


def make_loggers(cfg: DictConfig, run_dir: Path, resumed_at: int | None = None, announce: bool = True) -> list:
    """Lightning loggers for ``runtime.loggers``, writing under ``run_dir``; a run resumed at epoch ``resumed_at``
    (0-based) keeps the CSV rows of the epochs before it. ``announce``: say where an offline W&B run goes."""
    import pytorch_lightning as pl

    from prompt_tuning.runs.csv_log import ResumedCSVLogger

    loggers = []
    for name in check_loggers(cfg):
        if name == "csv":
            loggers.append(ResumedCSVLogger(run_dir, name=RunFolder.TRACKERS["csv"], version="",
                                            keep_before_epoch=resumed_at))
        elif name == "tensorboard":
            loggers.append(pl.loggers.TensorBoardLogger(run_dir, name=RunFolder.TRACKERS["tensorboard"], version="",
                                                        default_hp_metric=False))
        else:
            import wandb

            offline = os.environ.get("WANDB_MODE", "offline") != "online"
            in_sweep = cfg.runtime.experiment is not None  # a sweep's console is the sweep's: W&B keeps quiet
            logger = pl.loggers.WandbLogger(
                project=str(cfg.runtime.wandb_project), group=cfg.runtime.experiment or None,
                name=f"{cfg.dataset.name}/{cfg.method.name}/shots_{cfg.protocol.shots}/seed_{cfg.seed}",
                save_dir=str(run_dir), offline=offline, tags=[str(cfg.method.name), str(cfg.dataset.name)],
                settings=wandb.Settings(silent=in_sweep or os.environ.get("WANDB_SILENT") == "true"),
            )
            init = getattr(logger, "_wandb_init", {})  # Lightning always passes anonymous=None, which W&B >= 0.19
            if init.get("anonymous", 0) is None:      # answers with a warning on every run, silent or not
                init.pop("anonymous")
            loggers.append(logger)
            if offline and announce:
                print(f"W&B: offline run under {run_dir / 'wandb'} (upload it with `wandb sync "
                      f"{run_dir / 'wandb'}/offline-run-*`)", file=sys.stderr)
    return loggers


def close_loggers(loggers: list, hparams: dict | None = None, metrics: dict | None = None) -> None:
    """Flush and close what Lightning leaves open at the end of a run (a W&B run is finished, so its summary,
    config and history are written now rather than at interpreter exit). TensorBoard receives ``hparams`` with the
    run's final ``metrics`` (``hparams/acc``, in percent), so its HParams tab lists the run with its result."""
    for logger in loggers:
        if hparams is not None and metrics and type(logger).__name__ == "TensorBoardLogger":
            logger.log_hyperparams(hparams, metrics={f"hparams/{k}": float(v) for k, v in metrics.items()})
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()


def hyperparameters(cfg: DictConfig, run_hash: str) -> dict:
    """The resolved config as flat ``{"optim.lr": 0.002, ...}`` (lists and nulls as text) plus ``run_hash``."""
    flat = {"run_hash": run_hash, **flatten(OmegaConf.to_container(without_environment(cfg), resolve=False))}
    return {k: v if isinstance(v, bool | int | float | str) else "null" if v is None else str(v)
            for k, v in flat.items()}
