"""The Lightning trainer of a run: precision, devices and strategy, the per-epoch reseeding that makes a resumed
run end with the numbers of an uninterrupted one, the checkpoint of the last epoch (written atomically in the run
folder), and the process's rank in a multi-device run."""

from __future__ import annotations

import logging
import os
import warnings

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from prompt_tuning.core.errors import UserError
from prompt_tuning.runs.checkpoints import AtomicCheckpointIO
from prompt_tuning.runs.folder import RunFolder
from prompt_tuning.runs.tracking import make_loggers


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter out of the user's terminal."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*No pretrained weights loaded.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's own deprecation, not the user's concern
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")  # expected when resuming
    warnings.filterwarnings("ignore", ".*The `srun` command is available.*")  # a sweep task runs its run itself


class EpochSeed(pl.Callback):
    """Reseed every random generator at the start of each epoch from ``(seed, epoch)``: augmentations and
    Monte-Carlo samples of epoch e are then the same whether or not the run was resumed before it."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed * 1000 + trainer.current_epoch, workers=True, verbose=False)


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision of ``trainer.precision``.

    ``auto``: bf16 autocast where a CUDA GPU will be used (fp32 context vectors), full fp32 elsewhere.
    ``reference``: the authors' arithmetic (CoOp's ``PREC: fp16``, KgCoOp's teacher too): on a GPU the frozen
    CLIP *and* the context vectors in fp16 (Lightning's ``16-true``); on a CPU fp32, since CPU fp16 kernels
    neither match a GPU's rounding nor run at a useful speed. Any other value is passed to Lightning as is.
    Logits, losses and metrics are fp32 in every case (`prompt_tuning.core.precision`).
    """
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "reference":
        return "16-true" if gpu else "32-true"
    if precision != "auto":
        return precision
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def make_trainer(cfg: DictConfig, folder: RunFolder | None, max_epochs: int, resumed_at: int | None = None,
                 ) -> pl.Trainer:
    """The trainer of a run writing into ``folder`` (None: nothing is written, as for `evaluate_checkpoint`),
    resumed at epoch ``resumed_at`` (its logs keep the epochs before); a trainer setting Lightning refuses is one
    line naming the keys."""
    try:
        return _trainer(cfg, folder, max_epochs, resumed_at)
    except (ValueError, TypeError, ImportError, MisconfigurationException) as e:
        t = cfg.trainer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"trainer.precision={t.precision!r}, trainer.accelerator={t.accelerator!r}, trainer.strategy="
                        f"{t.strategy!r}, trainer.devices={t.devices!r}: Lightning refuses them: {first}") from e


def _trainer(cfg: DictConfig, folder: RunFolder | None, max_epochs: int, resumed_at: int | None) -> pl.Trainer:
    callbacks: list = [EpochSeed(cfg.seed)]
    if folder is not None:
        last = folder.last_checkpoint
        callbacks.append(pl.callbacks.ModelCheckpoint(  # the latest epoch, always as last.ckpt
            dirpath=last.parent, filename=last.stem, save_top_k=1, monitor=None, every_n_epochs=1,
            save_on_train_epoch_end=True, enable_version_counter=False,
        ))
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=int(cfg.trainer.devices),
        strategy=_strategy(cfg),
        use_distributed_sampler=False,  # the data module splits the reference batches itself
        precision=resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator)),
        plugins=[AtomicCheckpointIO()],
        deterministic=True,
        logger=make_loggers(cfg, folder.path, resumed_at, announce=rank() == 0) if folder is not None else False,
        callbacks=callbacks,
        enable_checkpointing=folder is not None,
        enable_progress_bar=bool(cfg.runtime.progress),
        enable_model_summary=False,
        check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
        limit_val_batches=1.0 if cfg.trainer.check_val_every_n_epoch else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
    )


def _strategy(cfg: DictConfig):
    """Lightning's strategy of ``trainer.strategy`` (``ddp``: Lightning's DDP; the data module splits the
    reference batches itself, `ReferenceBatches`)."""
    name = str(cfg.trainer.strategy)
    if int(cfg.trainer.devices) == 1 and name in ("auto", "ddp"):
        return "auto"
    if name in ("ddp", "auto"):
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy()
    return name


def rank() -> int:
    """This process's rank in a multi-device run, from the variables Lightning's further processes and SLURM
    tasks carry (as Lightning reads them); 0 otherwise. Only rank 0 locks the run folder, writes files, prints."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0
