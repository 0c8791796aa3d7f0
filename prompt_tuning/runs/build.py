"""Build a run from its config: the data (dataset, protocol, images or cached features), the frozen model, the
method with its objective, rule, averaging, optimizer and schedule, and the frozen features a fitting method
learns from. Seeded, so the same config builds the same run; nothing here writes to the run folder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from prompt_tuning.backbone import FrozenCLIP, TextPassOptions
from prompt_tuning.config.compose import dataset_section
from prompt_tuning.config.instantiate import SLOTS, build_slot, instantiate
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datamodule import ImageDataset, PromptDataModule, ViewDataset
from prompt_tuning.data.datasets import Item, classnames_of
from prompt_tuning.data.features import FeatureCache, FeatureDataset, encode_items, view_seed_of
from prompt_tuning.data.fewshot_cache import cached_few_shot
from prompt_tuning.data.protocols import check_shots, short_classes, subsample_classes
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.methods.base import FrozenFeatures, Method, Task, check_template
from prompt_tuning.runs.inputs import batch_keys
from prompt_tuning.runs.module import PromptTuner


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
    short_classes: dict[str, int] | None = None  # classes trained on fewer than protocol.shots images: name -> count


def build(cfg: DictConfig) -> Setup:
    """Build the model, data and module of a run (seeded, so the same config builds the same run)."""
    dataset = build_slot(cfg, "dataset")  # data first: a missing folder is reported before any download
    splits = dataset.load()
    check_shots(splits["train"], cfg.protocol.shots, cfg.dataset.name)
    check_template(dataset.template, f"dataset {cfg.dataset.name}'s template")
    names = classnames_of(splits["train"] + splits["val"] + splits["test"], f"dataset {dataset.name}")
    others = {}
    for other in cfg.protocol.eval_datasets:  # transfer targets: their classes and template
        other_ds = instantiate(dataset_section(other, cfg.data.root), SLOTS["dataset"], f"dataset {other}")
        others[other] = (other_ds, other_ds.load()["test"])
    clip = build_clip(cfg)

    train, val = cached_few_shot(dataset, splits["train"], splits["val"], cfg.protocol.shots, cfg.seed)
    train, val = subsample_classes(train, val, subsample=cfg.protocol.subsample)
    short = short_classes(train, cfg.protocol.shots)
    train_task = Task(subset_names(names, cfg.protocol.subsample), dataset.template)
    eval_sets = {}
    for subset in cfg.protocol.eval_subsets:
        (test,) = subsample_classes(splits["test"], subsample=subset)
        eval_sets[subset] = (Task(subset_names(names, subset), dataset.template), test)
    for other, (other_ds, test) in others.items():
        eval_sets[f"{other}/"] = (Task(classnames_of(test, other), other_ds.template), test)
    for name, task in [("training", train_task), *((n.rstrip("/"), t) for n, (t, _) in eval_sets.items())]:
        if len(task.classnames) < 2:
            raise UserError(f"the {name} class set of dataset {cfg.dataset.name} has {len(task.classnames)} class "
                            f"({', '.join(task.classnames) or 'none'}): classifying needs at least 2")

    module = make_module(cfg, clip, train_task)
    caps = module.method.capabilities
    if caps.class_bound:
        other = [name.rstrip("/") for name, (task, _) in eval_sets.items() if task.classnames != train_task.classnames]
        if other:
            raise UserError(f"method {cfg.method.name} learns a classifier over its training classes and cannot be "
                            f"tested on other classes ({', '.join(other)}): use protocol=fewshot")
    eval_dataset, train_set, features_of = _datasets(cfg, clip, module.method, train, batch_keys(module.needs))
    fit_data = None
    if caps.fits and train:
        fit_data = _fit_data(cfg, caps, features_of, train, splits["val"] if caps.fit_val == "full" else val)
    datamodule = PromptDataModule(
        train_set, eval_dataset(val) if cfg.trainer.check_val_every_n_epoch else None, None,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.runtime.num_workers,
        seed=cfg.seed,
        drop_last=cfg.data.drop_last,
    )
    return Setup(clip, module, datamodule, train_task, eval_sets, eval_dataset, cfg.seed, fit_data, short)


def build_clip(cfg: DictConfig) -> FrozenCLIP:
    """The run's frozen model, after seeding everything with the run's seed (random weights depend on it)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    options = TextPassOptions(shared_prefix=bool(cfg.model.shared_prefix),
                              checkpointing=bool(cfg.runtime.text_checkpointing), chunk=int(cfg.runtime.text_chunk))
    return FrozenCLIP.build(cfg.model.name, cfg.model.pretrained, cfg.model.arch, cfg.model.cache_dir,
                            cfg.model.quick_gelu, options, bool(cfg.model.allow_torchscript))


def make_module(cfg: DictConfig, clip: FrozenCLIP, task: Task) -> PromptTuner:
    """The method of ``cfg`` (method, objective, gradient rule, averaging, optimizer, schedule) as a `PromptTuner`
    for ``task``; each part is a subclass of the base its config key expects."""
    method = build_slot(cfg, "method.context", clip=clip, task=task)
    objective = build_slot(cfg, "method.objective", clip=clip, task=task)
    rule = build_slot(cfg, "method.gradient_rule")
    averaging = build_slot(cfg, "method.averaging")
    schedule = build_slot(cfg, "optim.scheduler")
    return PromptTuner(clip, method, task, objective, rule, optimizer=optimizer_factory(cfg), schedule=schedule,
                       max_epochs=max_epochs(cfg), averaging=averaging)


def optimizer_factory(cfg: DictConfig) -> Callable:
    """``optimizer(params)`` of ``optim.optimizer`` (a `torch.optim.Optimizer` subclass) with ``optim.lr`` and
    ``optim.weight_decay``, checked by building it once on a placeholder tensor (a bad value fails here, before
    the run writes anything)."""
    spec = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
    build = functools.partial(instantiate, spec, SLOTS["optim.optimizer"], "optim.optimizer.class_path",
                              lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    try:
        build(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise UserError(f"optim.optimizer ({spec['class_path']}): {e}") from e
    return lambda params: build(params=params)


def max_epochs(cfg: DictConfig) -> int:
    """``optim.max_epochs``, or the protocol's epochs for the run's shots."""
    if cfg.optim.max_epochs is not None:
        return int(cfg.optim.max_epochs)
    epochs = cfg.protocol.epochs
    if cfg.protocol.shots not in epochs:
        raise UserError(
            f"protocol {cfg.protocol.name} has no epochs for shots={cfg.protocol.shots} "
            f"(protocol.epochs has {', '.join(map(str, epochs)) or 'none'}); set optim.max_epochs"
        )
    return int(epochs[cfg.protocol.shots])


def _datasets(cfg: DictConfig, clip: FrozenCLIP, method: Method, train: list[Item], carry: set[str]):
    """How images reach the module: raw images, or frozen features from the cache when the method allows it.

    Returns the evaluation dataset factory, the training dataset and ``features_of(items, view)``, the frozen
    (unnormalised) features of images: from the cache when it is on, else encoded now with the cache's seeds,
    so both give the same numbers. ``carry``: what training batches must hold for the objective
    (`prompt_tuning.runs.inputs.batch_keys`; ``frozen``: the frozen features of the training images beside the
    images themselves, PromptSRC's).
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

    if cache is None or method.capabilities.image_tower:
        train_set = _image_train_set(cfg, train, train_tf, eval_tf, features_of if cache is not None else None,
                                     "frozen" in carry)
        return (lambda items: ImageDataset(items, eval_tf)), train_set, features_of

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
    """Training images for a method that runs the image tower itself (an image hook, or the cache off).

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


def _fit_data(cfg: DictConfig, caps, features_of: Callable, train: list[Item], val: list[Item]) -> FrozenFeatures:
    """The frozen features a fitting method (``capabilities.fits``) learns from: ``capabilities.fit_views``
    augmented views of the training images (or their evaluation view) and the validation images it asked for."""
    views = caps.fit_views if cfg.data.augment else 0
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
