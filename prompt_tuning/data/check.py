"""`prompt-tuning datasets check`: validate a dataset folder and name everything that is wrong."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from prompt_tuning.config.instantiate import instantiate
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datasets import Dataset, classnames_of


@dataclass
class Report:
    """Counts per split and the problems found."""

    name: str
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (images, classes)
    n_classes: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth knowing, not wrong (ImageNet has two "crane"s)

    def format(self) -> str:
        lines = [f"dataset {self.name}"]
        for split, (images, classes) in self.counts.items():
            lines.append(f"  {split:5s} {images:8d} images  {classes:5d} classes")
        if self.n_classes is not None:
            lines.append(f"  classes: {self.n_classes}")
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  PROBLEM: {p}" for p in self.problems] or ["  no problems found"]
        return "\n".join(lines)


def count_classes(spec) -> int | None:
    """The class count of the dataset of ``spec``, read from its split file or folders (images are not opened);
    None when it cannot be read."""
    try:
        dataset = instantiate(spec, Dataset, "dataset.class_path")
        load = dataset.load
        splits = load(verify=False) if "verify" in inspect.signature(load).parameters else load()
        return len(classnames_of([it for items in splits.values() for it in items], "dataset"))
    except UserError:
        return None


def check_dataset(spec, expected_classes: int | None = None, decode: bool = True, progress: bool = True) -> Report:
    """Load the dataset of ``spec`` (a ``{class_path, init_args}`` config) without stopping at the first
    problem, and report counts, missing and unreadable images, label/name clashes and the class count."""
    report = Report(name=str(spec.get("init_args", {}).get("root", spec["class_path"])))
    try:
        dataset = instantiate(spec, Dataset, "dataset.class_path")
        load = dataset.load
        splits = load(verify=False) if "verify" in inspect.signature(load).parameters else load()
    except UserError as e:
        report.problems.append(str(e))
        return report
    all_items = [it for items in splits.values() for it in items]
    if getattr(dataset, "val_from_train", False):
        report.warnings.append("no val/ folder: the validation images are training images (not held out)")
    for split, items in splits.items():
        report.counts[split] = (len(items), len({it.label for it in items}))
    try:
        names = classnames_of(all_items, report.name)
        report.n_classes = len(names)
        if len(names) < 2:
            report.problems.append(f"{len(names)} class: classifying needs at least 2")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            report.warnings.append(f"{len(twice)} class names belong to more than one label (e.g. {twice[0]!r}): "
                                   "their prompts, and so their class features, would be the same")
    except UserError as e:
        report.problems.append(str(e))
    if expected_classes is not None and report.n_classes not in (None, expected_classes):
        report.problems.append(f"{report.n_classes} classes found, {expected_classes} expected")
    if not splits.get("test"):
        report.problems.append("the test split is empty")
    paths = sorted({it.path for it in all_items})
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        report.problems.append(f"{len(missing)} images do not exist, e.g. {', '.join(missing[:3])}")
    if decode:
        broken = []
        present = [p for p in paths if Path(p).is_file()]
        for path in tqdm(present, desc="decoding images", disable=not progress, unit="img"):
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as e:  # noqa: BLE001 - any decoder failure means the image is unusable
                broken.append(f"{path} ({type(e).__name__})")
        if broken:
            report.problems.append(f"{len(broken)} images cannot be decoded, e.g. {', '.join(broken[:3])}")
    return report
