"""Evaluation protocols as pure functions on item lists: few-shot sampling and the base/novel class split.

Both follow the CoOp/CoCoOp reference code (Dassl's ``generate_fewshot_dataset`` and CoCoOp's
``subsample_classes``) so that a given seed picks the same images and classes as the published numbers used.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datasets import Item, classnames_of

SUBSAMPLES = ("all", "base", "novel")
log = logging.getLogger(__name__)


@dataclass
class Subset:
    """Items of one evaluation or training set and the class names its labels index."""

    items: list[Item]
    classnames: list[str]


def group_by_label(items: Sequence[Item]) -> dict[int, list[Item]]:
    """Items per label, labels in order of first appearance (as Dassl's ``split_dataset_by_label``)."""
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def few_shot(items: Sequence[Item], shots: int, rng: random.Random, warn: bool = True) -> list[Item]:
    """``shots`` items per label, drawn with ``rng.sample`` label by label in order of first appearance.

    With ``rng = random.Random(seed)`` this draws exactly what the reference sampler draws after
    ``random.seed(seed)``. ``shots < 1`` returns all items. A class with fewer than ``shots`` items keeps all
    of them, without drawing (Dassl's ``generate_fewshot_dataset`` with ``repeat=False``); with ``warn`` one
    warning names those classes.
    """
    if shots < 1:
        return list(items)
    groups = group_by_label(items)
    short = {g[0].classname: len(g) for g in groups.values() if len(g) < shots}
    if short and warn:
        listed = ", ".join(f"{name!r} ({n})" for name, n in list(short.items())[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        log.warning("%d shots asked, but %d classes have fewer training images; they keep all they have, as in "
                    "the reference sampler: %s%s", shots, len(short), listed, more)
    out: list[Item] = []
    for group in groups.values():
        out += rng.sample(group, shots) if len(group) >= shots else list(group)
    return out


def class_counts(items: Sequence[Item]) -> dict[str, int]:
    """Images per class of ``items``: name -> count."""
    return {g[0].classname: len(g) for g in group_by_label(items).values()}


def short_classes(items: Sequence[Item], shots: int) -> dict[str, int]:
    """The classes of ``items`` with fewer than ``shots`` images: name -> count (none when ``shots < 1``)."""
    if shots < 1:
        return {}
    return {name: n for name, n in class_counts(items).items() if n < shots}


def check_shots(items: Sequence[Item], shots: int, dataset: str) -> None:
    """Refuse ``shots`` that no class of the training split can give: ``protocol.shots=100`` on 16 images per
    class would train on all of them while the run says 100. (Some classes short of ``shots`` keep all they
    have, as in the reference sampler, with a warning.)"""
    if shots < 1 or not items:
        return
    counts = class_counts(items)
    most = max(counts.values())
    if most < shots:
        fewest = min(counts, key=counts.get)
        raise UserError(f"protocol.shots={shots}: no class of dataset {dataset} has {shots} training images (the "
                        f"most: {most}, the fewest: {counts[fewest]}, class {fewest!r}); choose protocol.shots <= "
                        f"{most}, or -1 for all")


def few_shot_splits(train: Sequence[Item], val: Sequence[Item], shots: int, seed: int) -> tuple[list, list]:
    """The reference few-shot draw: K per class from train, then ``min(K, 4)`` per class from val.

    Both draws come from one generator seeded with ``seed``, in that order, as in CoOp's dataset classes.
    """
    rng = random.Random(seed)
    return few_shot(train, shots, rng), few_shot(val, min(shots, 4), rng, warn=False)


def subsample_classes(*splits: Sequence[Item], subsample: str = "all") -> list[list[Item]]:
    """Keep the base or novel half of the classes and relabel them from 0 (CoCoOp's base-to-novel split).

    Labels of the first split are sorted; the first ``ceil(n / 2)`` are base, the rest novel (the reference code
    calls them ``new``; that name is accepted too).
    """
    subsample = "novel" if subsample == "new" else subsample
    if subsample not in SUBSAMPLES:
        raise UserError(f"protocol.subsample={subsample!r}: choose one of {', '.join(SUBSAMPLES)}")
    if subsample == "all":
        return [list(s) for s in splits]
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    return [[Item(it.path, relabel[it.label], it.classname) for it in s if it.label in relabel] for s in splits]


def make_subset(items: list[Item]) -> Subset:
    """A `Subset` whose class names are read off its items (labels 0..n-1)."""
    return Subset(items, classnames_of(items))
