"""One run, forward through the flow: prepare (build everything, then claim the run folder) -> fit (gradient
training, resumable) -> evaluate (every test set) -> write (``result.json``).

Nothing is written to the run folder until the run's data, model and method are built: a run that fails its setup
leaves the folder as it was. A finished run of another configuration is only replaced with ``overwrite=true``.
The folder is locked while the run trains; with ``resume=true`` a killed run continues from its last checkpoint
and ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from prompt_tuning.config.compose import annotated_yaml, without_environment
from prompt_tuning.config.hashing import run_hash
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datamodule import check_split
from prompt_tuning.runs.build import Setup, build
from prompt_tuning.runs.checkpoints import load_checkpoint
from prompt_tuning.runs.folder import RunFolder
from prompt_tuning.runs.metrics import harmonic_mean
from prompt_tuning.runs.module import PromptTuner
from prompt_tuning.runs.tracking import check_loggers, close_loggers, hyperparameters
from prompt_tuning.runs.trainer import make_trainer, quiet_lightning, rank


def versions() -> dict[str, str]:
    """The versions a result was computed with."""
    import platform

    import open_clip

    from prompt_tuning import __version__

    return {"prompt_tuning": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "pytorch_lightning": pl.__version__, "python": platform.python_version()}


class Interrupted(KeyboardInterrupt):
    """Training was stopped during epoch ``epoch`` (1-based) of ``max_epochs`` by ``signal``: ``SIGINT`` (Ctrl-C),
    ``SIGTERM`` (as SLURM sends it to a task it cancels, preempts or times out) or ``exit`` (a signal handler's
    exit). The run folder holds the last finished epoch's checkpoint, so ``resume=true`` continues it."""

    def __init__(self, epoch: int, max_epochs: int, signal: str = "SIGINT"):
        super().__init__(f"interrupted at epoch {epoch}/{max_epochs}")
        self.epoch = epoch
        self.max_epochs = max_epochs
        self.signal = signal


def train(cfg: DictConfig, sources: dict[str, str] | None = None) -> dict:
    """Train (unless the method has nothing to learn), test, and write ``result.json`` + ``config.yaml``.

    ``sources`` (from `compose_annotated`) are written as comments beside the values recipes set.
    """
    folder, config_hash = RunFolder(cfg.output_dir), run_hash(cfg)
    check_split(cfg.data.batch_size, int(cfg.trainer.devices))  # before anything is written
    if rank() > 0:  # a further process of a multi-device run: rank 0 holds the lock, writes the files, reports
        logging.getLogger("prompt_tuning").setLevel(logging.WARNING)
        return Run(cfg, folder, config_hash, sources or {}, writes=False).execute()
    folder.refuse_foreign()  # before the lock creates the folder
    with folder.lock():
        folder.refuse_another_configuration(config_hash, cfg)
        return Run(cfg, folder, config_hash, sources or {}).execute()


@dataclass(frozen=True)
class Resume:
    """Where a resumed run continues: its checkpoint, and the epoch (0-based) it starts at."""

    checkpoint: Path
    epoch: int


@dataclass
class Run:
    """The steps of one run on its folder (``writes``: false in a further process of a multi-device run)."""

    cfg: DictConfig
    folder: RunFolder
    config_hash: str
    sources: dict[str, str]
    writes: bool = True

    def execute(self) -> dict:
        start = time.time()
        setup, trainer, resume = self.prepare()
        try:
            self.fit(setup, trainer, resume)
            metrics = self.evaluate(setup, trainer)
            return self.write(setup, metrics, time.time() - start, resume)
        except BaseException as e:
            if self.writes:  # an attempt that wrote no checkpoint leaves the folder as it found it
                self.folder.roll_back()
            if isinstance(e, OSError):  # a full disk or a folder gone read-only, met by a tracker or a loader
                raise UserError(f"run {self.folder.path}: {e.strerror or e}"
                                + (f" ({e.filename})" if e.filename else "")) from e
            raise

    def prepare(self) -> tuple[Setup, pl.Trainer, Resume | None]:
        """Build the run (a head fits here: one that cannot fails before the folder is touched), decide where it
        resumes, then claim the folder for this configuration."""
        quiet_lightning()
        check_loggers(self.cfg)  # a logger that cannot be made is an error before anything is written
        make_trainer(self.cfg, None, 1)  # so is a trainer setting Lightning refuses (no GPU, fp16): before the build
        setup = build(self.cfg)
        fit_frozen(setup)
        if setup.module.learns and setup.datamodule.train_set is None:
            raise UserError(
                f"dataset {self.cfg.dataset.name} has no training images (a test-only dataset?): train on another "
                f"dataset and test here with `prompt-tuning eval RUN dataset={self.cfg.dataset.name}`"
            )
        path = self.folder.resume_point(self.config_hash, bool(self.cfg.resume) and setup.module.trainable)
        resume = None
        if path is not None:  # tensors only, or a one-line refusal (Lightning then loads it the same way)
            resume = Resume(path, int(load_checkpoint(path).get("epoch", -1)) + 1)
        trainer = make_trainer(self.cfg, self.folder, setup.module.max_epochs,  # a bad trainer setting fails here
                               resume.epoch if resume else None)
        if resume is not None and self.writes:
            print(f"resuming {self.folder.path} from epoch {resume.epoch + 1}/{setup.module.max_epochs} "
                  f"({resume.checkpoint.name}: {resume.epoch} epochs done)", file=sys.stderr)
        if self.writes:
            self.folder.claim(self.config_hash, annotated_yaml(self.cfg, self.sources), resuming=resume is not None)
        for logger in trainer.loggers:
            logger.log_hyperparams(hyperparameters(self.cfg, self.config_hash))
        return setup, trainer, resume

    def fit(self, setup: Setup, trainer: pl.Trainer, resume: Resume | None) -> None:
        """Gradient training (for methods with learned tensors), continued from ``resume``; then the method's
        `select`."""
        if setup.module.trainable:
            try:
                trainer.fit(setup.module, datamodule=setup.datamodule, weights_only=True,
                            ckpt_path=str(resume.checkpoint) if resume else None)
            except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into a graceful exit(1)
                if isinstance(e, SystemExit) and not trainer.interrupted:
                    raise
                ctrl_c = isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt)
                # exit: sys.exit in a signal handler (submitit's, when it requeues a preempted task)
                signal = "SIGTERM" if trainer.received_sigterm else "SIGINT" if ctrl_c else "exit"
                raise Interrupted(trainer.current_epoch + 1, setup.module.max_epochs, signal) from None
        select_frozen(setup)

    def evaluate(self, setup: Setup, trainer: pl.Trainer) -> dict[str, float]:
        metrics = evaluate(setup, trainer)
        close_loggers(trainer.loggers, hyperparameters(self.cfg, self.config_hash), metrics)
        return metrics

    def write(self, setup: Setup, metrics: dict[str, float], wall: float, resume: Resume | None) -> dict:
        cfg = self.cfg
        result = {
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "protocol": cfg.protocol.name,
            "shots": cfg.protocol.shots,
            "seed": cfg.seed,
            "model": f"{cfg.model.name}/{setup.clip.weights}",
            "config_hash": self.config_hash,
            "tags": OmegaConf.to_container(without_environment(cfg).tags),  # names of variables, not their values
            "trainable": setup.module.learns,  # false: zero-shot, the shots do not apply
            "epochs": setup.module.max_epochs if setup.module.trainable else 0,
            # classes with fewer training images than the shots asked: they trained on all they have (name -> count)
            **({"short_classes": setup.short_classes} if setup.short_classes and setup.module.learns else {}),
            "metrics": metrics,
            "wall_time_s": round(wall, 2),
            **({"resumed_at_epoch": resume.epoch} if resume is not None else {}),  # epochs done before
            **({"sweep_id": cfg.runtime.sweep_id} if cfg.runtime.sweep_id else {}),  # the sweep that trained it
            "versions": versions(),
        }
        if self.writes:
            self.folder.write_result(result)
        return result


def fit_frozen(setup: Setup) -> None:
    """`Method.fit` of a method that learns from frozen features (before any gradient training)."""
    if setup.fit_data is not None:
        with torch.no_grad():
            setup.module.method.fit(setup.clip, setup.fit_data)


def select_frozen(setup: Setup) -> None:
    """`Method.select` of a method that learns from frozen features (after gradient training)."""
    if setup.fit_data is not None:
        with torch.no_grad():
            setup.module.method.select(setup.clip, setup.fit_data)


def evaluate(setup: Setup, trainer: pl.Trainer) -> dict[str, float]:
    """Test accuracy on every evaluation subset; base and novel also give their harmonic mean."""
    metrics = {}
    for name, (task, items) in setup.eval_sets.items():
        pl.seed_everything(setup.seed, workers=True, verbose=False)  # stochastic methods sample alike
        setup.module.set_task(task)
        setup.datamodule.test_set = setup.eval_dataset(items)
        out = trainer.test(setup.module, datamodule=setup.datamodule, verbose=False)[0]
        prefix = "" if name == "all" else name if name.endswith("/") else f"{name}_"
        metrics[f"{prefix}acc"] = float(out["test/acc"])  # in percent, as logged
        metrics[f"{prefix}macro_acc"] = float(out["test/macro_acc"])
    if "base_acc" in metrics and "novel_acc" in metrics:
        metrics["hm"] = harmonic_mean(metrics["base_acc"], metrics["novel_acc"])
    setup.module.set_task(setup.train_task)
    return metrics


def load_method_state(module: PromptTuner, checkpoint: str | Path) -> None:
    """Load the learned tensors of a checkpoint into ``module``, strictly."""
    path = Path(checkpoint)
    state = load_checkpoint(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = " ".join(str(e).split())  # torch's message spans lines
        raise UserError(
            f"checkpoint {path} does not fit this method/class set "
            f"({type(module.method).__name__}, {len(module.task.classnames)} classes): {detail}"
        ) from e


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str | Path) -> dict[str, float]:
    """Rebuild the run of ``cfg``, load ``checkpoint``'s learned tensors and test them."""
    quiet_lightning()
    trainer = make_trainer(cfg, None, 1)  # a trainer setting Lightning refuses is said before the build
    setup = build(cfg)
    fit_frozen(setup)  # deterministic: a fitted head is fitted again, then its trained tensors are loaded
    if setup.module.trainable:
        load_method_state(setup.module, checkpoint)
    select_frozen(setup)
    return evaluate(setup, trainer)
