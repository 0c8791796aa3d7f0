"""One run, forward through the flow: config -> model -> dataset -> protocol -> fit -> test -> result.json."""

from __future__ import annotations

import logging
import os
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.config import NOT_HASHED, annotated_yaml, dataset_section, flatten, instantiate, run_hash
from prompt_tuning.contexts.base import Context, FrozenFeatures, Task
from prompt_tuning.data.datamodule import ImageDataset, PromptDataModule, ViewDataset, check_split
from prompt_tuning.data.datasets import Item, classnames_of
from prompt_tuning.data.fewshot_cache import cached_few_shot
from prompt_tuning.data.protocols import subsample_classes
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.errors import UserError
from prompt_tuning.features import FeatureCache, FeatureDataset, encode_items, view_seed_of
from prompt_tuning.files import write_atomic, write_json
from prompt_tuning.locks import RunLock
from prompt_tuning.module import PromptTuner
from prompt_tuning.results import CONFIG_FILE, RESULT_FILE, harmonic_mean, read_result, versions
from prompt_tuning.tracking import check_loggers, close_loggers, hyperparameters, make_loggers

CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"


@dataclass
class Setup:
    """Everything a run builds from its config."""

    clip: FrozenCLIP
    module: PromptTuner
    datamodule: PromptDataModule
    train_task: Task
    eval_sets: dict[str, tuple[Task, list]]  # subset name -> (task, test items)
    eval_dataset: Callable[[list[Item]], Dataset]  # items -> dataset of images or cached features
    seed: int = 0
    fit_data: FrozenFeatures | None = None  # frozen training/validation features for methods that fit on them


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


def build(cfg: DictConfig) -> Setup:
    """Build the model, data and module of a run (seeded, so the same config builds the same run)."""
    dataset = instantiate(cfg.dataset)  # the data first: a missing folder is reported before any download
    splits = dataset.load()
    names = classnames_of(splits["train"] + splits["val"] + splits["test"], f"dataset {dataset.name}")
    others = {}
    for other in cfg.protocol.eval_datasets:  # transfer targets: their classes and template
        other_ds = instantiate(dataset_section(other, cfg.data.root))
        others[other] = (other_ds, other_ds.load()["test"])
    clip = build_clip(cfg)

    train, val = cached_few_shot(dataset, splits["train"], splits["val"], cfg.protocol.shots, cfg.seed)
    train, val = subsample_classes(train, val, subsample=cfg.protocol.subsample)
    train_task = Task(subset_names(names, cfg.protocol.subsample), dataset.template)
    eval_sets = {}
    for subset in cfg.protocol.eval_subsets:
        (test,) = subsample_classes(splits["test"], subsample=subset)
        eval_sets[subset] = (Task(subset_names(names, subset), dataset.template), test)
    for other, (other_ds, test) in others.items():
        eval_sets[f"{other}/"] = (Task(classnames_of(test, other), other_ds.template), test)

    module = make_module(cfg, clip, train_task)
    if module.context.class_bound:
        other = [name.rstrip("/") for name, (task, _) in eval_sets.items() if task.classnames != train_task.classnames]
        if other:
            raise UserError(f"method {cfg.method.name} learns a classifier over its training classes and cannot be "
                            f"tested on other classes ({', '.join(other)}): use protocol=fewshot")
    eval_dataset, train_set, features_of = _datasets(cfg, clip, module.context, train,
                                                     module.objective.needs_frozen_image_features)
    fit_data = None
    if module.context.fits and train:
        fit_data = _fit_data(cfg, clip, module.context, features_of, train,
                             splits["val"] if module.context.fit_val == "full" else val)
    datamodule = PromptDataModule(
        train_set, eval_dataset(val) if cfg.trainer.check_val_every_n_epoch else None, None,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.runtime.num_workers,
        seed=cfg.seed,
        drop_last=cfg.data.drop_last,
    )
    return Setup(clip, module, datamodule, train_task, eval_sets, eval_dataset, cfg.seed, fit_data)


def build_clip(cfg: DictConfig) -> FrozenCLIP:
    """The run's frozen model, after seeding everything with the run's seed (random weights depend on it)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    clip = FrozenCLIP.build(cfg.model.name, cfg.model.pretrained, cfg.model.arch, cfg.model.cache_dir,
                            cfg.model.quick_gelu)
    clip.shared_prefix_pass = bool(cfg.model.shared_prefix)
    clip.text_checkpointing = bool(cfg.runtime.text_checkpointing)
    clip.text_chunk = int(cfg.runtime.text_chunk)
    return clip


def make_module(cfg: DictConfig, clip: FrozenCLIP, task: Task) -> PromptTuner:
    """The method of ``cfg`` (context, objective, gradient rule, schedule) as a `PromptTuner` for ``task``."""
    context: Context = instantiate(cfg.method.context, clip=clip, task=task)
    objective = instantiate(cfg.method.objective, clip=clip, task=task)
    rule = instantiate(cfg.method.gradient_rule) if cfg.method.gradient_rule else None
    averaging = instantiate(cfg.method.averaging) if cfg.method.averaging else None
    return PromptTuner(clip, context, task, objective, rule, averaging=averaging, **_optim(cfg))


def _datasets(cfg: DictConfig, clip: FrozenCLIP, context: Context, train: list[Item], needs_frozen: bool = False):
    """How images reach the module: raw images, or frozen features from the cache when the method allows it.

    Returns the evaluation dataset factory, the training dataset and ``features_of(items, view)``, the frozen
    (unnormalised) features of images: from the cache when it is on, else encoded now with the cache's seeds,
    so both give the same numbers. ``needs_frozen``: the objective reads the frozen features of the training
    images beside the images themselves (PromptSRC).
    """
    pre = clip.preprocess
    eval_tf = eval_transform(pre)
    train_tf = train_transform(pre, tuple(cfg.data.crop_scale)) if cfg.data.augment else eval_tf
    cache = None
    if cfg.runtime.feature_cache:
        cache = FeatureCache(Path(cfg.runtime.cache_dir) / "features", cfg.data.feature_dtype,
                             cfg.data.eval_batch_size, bool(cfg.runtime.progress))

    def features_of(items: list[Item], view: int = 0) -> torch.Tensor:
        tf = train_tf if view else eval_tf
        if cache is not None:
            return cache.features(clip, items, tf, view=view, seed=cfg.seed)
        return encode_items(clip, items, tf, cfg.data.eval_batch_size, seed=view_seed_of(cfg.seed, view),
                            progress=bool(cfg.runtime.progress))

    if cache is None or not context.frozen_image_tower:
        return (lambda items: ImageDataset(items, eval_tf)), _image_train_set(
            cfg, train, train_tf, eval_tf, features_of if cache is not None else None, needs_frozen), features_of

    def eval_dataset(items: list[Item]) -> Dataset:
        return FeatureDataset(features_of(items), [it.label for it in items])

    if not train:
        return eval_dataset, None, features_of
    labels = [it.label for it in train]
    if not cfg.data.augment:  # the training images are fixed: their features are too
        return eval_dataset, eval_dataset(train), features_of
    if cfg.data.cache_views > 0:
        views = torch.stack([features_of(train, v + 1) for v in range(cfg.data.cache_views)])
        return eval_dataset, FeatureDataset(views, labels), features_of
    return eval_dataset, ImageDataset(train, train_tf), features_of  # exact: a fresh augmentation every step


def _image_train_set(cfg: DictConfig, train: list[Item], train_tf, eval_tf, features_of: Callable | None,
                     needs_frozen: bool) -> Dataset | None:
    """Training images for a method that runs the image tower itself (visual prompts, or the cache off).

    With ``data.cache_views=N`` these are the N fixed augmented views, regenerated image by image (`ViewDataset`),
    the very images whose features the cache holds: so the cache on and off train on the same images. With the
    cache on, an objective that needs the frozen features of the training images reads them from it.
    Otherwise: a fresh augmentation every step.
    """
    if not train:
        return None
    if cfg.data.augment and cfg.data.cache_views > 0:
        views, tf = list(range(1, cfg.data.cache_views + 1)), train_tf
    elif needs_frozen and not cfg.data.augment and features_of is not None:
        views, tf = [0], eval_tf
    else:
        return ImageDataset(train, train_tf)
    frozen = torch.stack([features_of(train, v) for v in views]) if needs_frozen and features_of else None
    return ViewDataset(train, tf, [view_seed_of(cfg.seed, v) for v in views], frozen)


def _fit_data(cfg: DictConfig, clip: FrozenCLIP, context: Context, features_of: Callable, train: list[Item],
              val: list[Item]) -> FrozenFeatures:
    """The frozen features a fitting method (`Context.fits`) learns from: ``context.fit_views`` augmented views
    of the training images (or their evaluation view) and the validation images it asked for."""
    views = context.fit_views if cfg.data.augment else 0
    train_views = [features_of(train, v + 1) for v in range(views)] if views else [features_of(train)]
    if not val:
        raise UserError(f"method {cfg.method.name} chooses its settings on validation images, and dataset "
                        f"{cfg.dataset.name} has none in its val split")
    return FrozenFeatures(
        train=torch.stack(train_views),
        train_labels=torch.as_tensor([it.label for it in train]),
        val=features_of(val),
        val_labels=torch.as_tensor([it.label for it in val]),
    )


def subset_names(names: list[str], subsample: str) -> list[str]:
    """Class names of the ``all``/``base``/``novel`` half, in the relabelled order."""
    (kept,) = subsample_classes([Item("", i, n) for i, n in enumerate(names)], subsample=subsample)
    return [item.classname for item in kept]


def _optim(cfg: DictConfig) -> dict:
    max_epochs = cfg.optim.max_epochs
    if max_epochs is None:
        epochs = cfg.protocol.epochs
        if cfg.protocol.shots not in epochs:
            raise UserError(
                f"protocol {cfg.protocol.name} has no epochs for shots={cfg.protocol.shots} "
                f"(protocol.epochs has {', '.join(map(str, epochs)) or 'none'}); set optim.max_epochs"
            )
        max_epochs = epochs[cfg.protocol.shots]
    o = cfg.optim
    return dict(lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, max_epochs=int(max_epochs),
                warmup_epochs=o.warmup_epochs, warmup_lr=o.warmup_lr, optimizer=o.optimizer, eps=o.eps,
                interval=o.interval)


class Interrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C during epoch ``epoch`` (1-based) of ``max_epochs``; the run folder holds
    the last finished epoch's checkpoint, so ``resume=true`` continues it."""

    def __init__(self, epoch: int, max_epochs: int):
        super().__init__(f"interrupted at epoch {epoch}/{max_epochs}")
        self.epoch = epoch
        self.max_epochs = max_epochs


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
    """
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if precision == "reference":
        return "16-true" if gpu else "32-true"
    if precision != "auto":
        return precision
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def make_trainer(cfg: DictConfig, run_dir: Path | None, max_epochs: int) -> pl.Trainer:
    callbacks = [EpochSeed(cfg.seed)]
    if run_dir is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(  # the latest epoch, always as last.ckpt
            dirpath=run_dir / CKPT_DIR, filename=LAST_CKPT.removesuffix(".ckpt"), save_top_k=1, monitor=None,
            every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False,
        ))
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=int(cfg.trainer.devices),
        strategy=_strategy(cfg),
        use_distributed_sampler=False,  # the data module splits the reference batches itself
        precision=resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator)),
        deterministic=True,
        logger=make_loggers(cfg, run_dir) if run_dir is not None else False,
        callbacks=callbacks,
        enable_checkpointing=run_dir is not None,
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


def fit(setup: Setup) -> None:
    """`Context.fit` of a method that learns from frozen features (before any gradient training)."""
    if setup.fit_data is not None:
        with torch.no_grad():
            setup.module.context.fit(setup.clip, setup.fit_data)


def select(setup: Setup) -> None:
    """`Context.select` of a method that learns from frozen features (after gradient training)."""
    if setup.fit_data is not None:
        with torch.no_grad():
            setup.module.context.select(setup.clip, setup.fit_data)


def evaluate(setup: Setup, trainer: pl.Trainer) -> dict[str, float]:
    """Test accuracy on every evaluation subset; base and novel also give their harmonic mean."""
    metrics = {}
    for name, (task, items) in setup.eval_sets.items():
        pl.seed_everything(setup.seed, workers=True, verbose=False)  # stochastic contexts sample alike
        setup.module.set_task(task)
        setup.datamodule.test_set = setup.eval_dataset(items)
        out = trainer.test(setup.module, datamodule=setup.datamodule, verbose=False)[0]
        prefix = "" if name == "all" else name if name.endswith("/") else f"{name}_"
        metrics[f"{prefix}acc"] = 100.0 * float(out["test/acc"])
        metrics[f"{prefix}macro_acc"] = 100.0 * float(out["test/macro_acc"])
    if "base_acc" in metrics and "novel_acc" in metrics:
        metrics["hm"] = harmonic_mean(metrics["base_acc"], metrics["novel_acc"])
    setup.module.set_task(setup.train_task)
    return metrics


def train(cfg: DictConfig, sources: dict[str, str] | None = None) -> dict:
    """Train (unless the method has nothing to learn), test, and write ``result.json`` + ``config.yaml``.

    Nothing is written to the run folder until the run's data, model and method are built: a run that fails
    its setup leaves a finished run in the same folder as it was. A finished run of another configuration is
    only replaced with ``overwrite=true``. The run folder is locked while it trains; with ``resume=true`` a
    killed run continues from ``checkpoints/last.ckpt`` and ends with the numbers of an uninterrupted run.
    ``sources`` (from `compose_annotated`) are written as comments beside the values recipes set.
    """
    run_dir = Path(cfg.output_dir)
    config_hash = run_hash(cfg)
    check_split(cfg.data.batch_size, int(cfg.trainer.devices))  # before anything is written
    if rank() > 0:  # a further process of a multi-device run: rank 0 holds the lock, writes the files, reports
        logging.getLogger("prompt_tuning").setLevel(logging.WARNING)
        return _train(cfg, run_dir, config_hash, sources or {}, writes=False)
    with RunLock(run_dir):
        finished = read_result(run_dir)
        if finished is not None and finished.get("config_hash") != config_hash and not cfg.overwrite:
            raise UserError(
                f"{run_dir} holds a finished run of another configuration (run hash {finished.get('config_hash')}, "
                f"this one {config_hash}; {_differences(run_dir, cfg)}): choose another output_dir, or pass "
                "overwrite=true to replace it"
            )
        return _train(cfg, run_dir, config_hash, sources or {})


def _differences(run_dir: Path, cfg: DictConfig, most: int = 8) -> str:
    """The keys whose values differ between a run folder's config.yaml and ``cfg``, for error messages."""
    try:
        old = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=True))
    except Exception:  # noqa: BLE001 - only an error message's detail
        return "its config.yaml cannot be read"
    new = flatten(OmegaConf.to_container(cfg, resolve=True))
    keys = sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and k.split(".")[0] not in NOT_HASHED)
    shown = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys[:most]]
    more = f", and {len(keys) - most} more" if len(keys) > most else ""
    return "differing keys: " + ", ".join(shown) + more if keys else "no key differs: the hash scheme changed"


def saved_hash(run_dir: Path) -> str | None:
    """The run hash recorded in a run folder's config.yaml, if any."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    first = path.read_text().partition("\n")[0]
    return first.removeprefix("# run hash: ") if first.startswith("# run hash: ") else None


def _train(cfg: DictConfig, run_dir: Path, config_hash: str, sources: dict[str, str], writes: bool = True) -> dict:
    quiet_lightning()
    start = time.time()
    previous_hash = saved_hash(run_dir)
    check_loggers(cfg)  # a logger that cannot be made is an error before anything is written
    setup = build(cfg)
    fit(setup)  # part of the setup: a head that cannot fit fails before the run folder is touched
    max_epochs = setup.module.schedule["max_epochs"]
    if setup.module.learns and setup.datamodule.train_set is None:
        raise UserError(
            f"dataset {cfg.dataset.name} has no training images (a test-only dataset?): train on another "
            f"dataset and test here with `prompt-tuning eval RUN dataset={cfg.dataset.name}`"
        )
    last = run_dir / CKPT_DIR / LAST_CKPT
    resuming = bool(cfg.resume) and setup.module.trainable and last.is_file()
    if resuming and previous_hash != config_hash:
        raise UserError(f"cannot resume from {last}: it was written by another configuration "
                        f"(run hash {previous_hash}, this one {config_hash}); drop resume=true to start over")
    resumed_from = None
    if resuming:  # tensors only, or a one-line refusal (Lightning then loads it the same way)
        resumed_from = int(load_checkpoint(last).get("epoch", -1)) + 1
    # setup succeeded: from here on the folder belongs to this configuration
    finished = read_result(run_dir)
    if writes and finished is not None and finished.get("config_hash") != config_hash:  # overwrite=true
        (run_dir / RESULT_FILE).unlink()
    if writes and not resuming:
        for stale in (run_dir / CKPT_DIR).glob("*.ckpt"):  # a fresh run never continues old weights
            stale.unlink()
    if writes:
        write_atomic(run_dir / CONFIG_FILE, f"# run hash: {config_hash}\n" + annotated_yaml(cfg, sources))
    trainer = make_trainer(cfg, run_dir, max_epochs)
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparameters(cfg, config_hash))
    if setup.module.trainable:
        try:
            trainer.fit(setup.module, datamodule=setup.datamodule, ckpt_path=str(last) if resuming else None,
                        weights_only=True)
        except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into a graceful exit(1)
            if isinstance(e, SystemExit) and not trainer.interrupted:
                raise
            raise Interrupted(trainer.current_epoch + 1, max_epochs) from None
    select(setup)
    metrics = evaluate(setup, trainer)
    close_loggers(trainer.loggers)
    result = {
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "protocol": cfg.protocol.name,
        "shots": cfg.protocol.shots,
        "seed": cfg.seed,
        "model": f"{cfg.model.name}/{setup.clip.weights}",
        "config_hash": config_hash,
        "tags": OmegaConf.to_container(cfg.tags),
        "trainable": setup.module.learns,  # false: zero-shot, the shots do not apply
        "epochs": max_epochs if setup.module.trainable else 0,
        "metrics": metrics,
        "wall_time_s": round(time.time() - start, 2),
        **({"resumed_at_epoch": resumed_from} if resumed_from is not None else {}),  # epochs done before
        "versions": versions(),
    }
    if writes:
        write_json(run_dir / RESULT_FILE, result)
    return result


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``: tensors and plain containers only, so a file
    someone shared cannot run code here. Anything else is refused with a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} holds more than tensors (refused, it could run code): {first}") from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"checkpoint {path} cannot be read: {' '.join(str(e).split())[:300]}") from e


def load_context_state(module: PromptTuner, checkpoint: str | Path) -> None:
    """Load the learned parameters of a checkpoint into ``module``, strictly."""
    path = Path(checkpoint)
    state = load_checkpoint(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = " ".join(str(e).split())  # torch's message spans lines
        raise UserError(
            f"checkpoint {path} does not fit this method/class set "
            f"({type(module.context).__name__}, {len(module.task.classnames)} classes): {detail}"
        ) from e


def evaluate_checkpoint(cfg: DictConfig, checkpoint: str | Path) -> dict[str, float]:
    """Rebuild the run of ``cfg``, load ``checkpoint``'s learned parameters and test them."""
    quiet_lightning()
    setup = build(cfg)
    fit(setup)  # deterministic: a fitted head is fitted again, then its trained tensors are loaded
    if setup.module.trainable:
        load_context_state(setup.module, checkpoint)
    select(setup)
    trainer = make_trainer(cfg, None, 1)
    return evaluate(setup, trainer)
