"""Datasets parse a folder into ``(path, label, classname)`` items per split; protocols do the rest.

Two generic layouts are read here:

* a CoOp benchmark split file (``split_*.json``: ``{"train": [[relative_path, label, classname], ...],
  "val": [...], "test": [...]}``, paths relative to an image directory), the format of the split files that
  the CoOp/CoCoOp code and most prompt-learning papers use;
* an image folder ``root/{train,val,test}/<class name>/<image>`` (class names from folder names, underscores
  read as spaces, labels in sorted folder order; ``val`` may be missing: then validation draws from the training
  images, which a warning says, as ``datasets check`` does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

from prompt_tuning.core.errors import UserError

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class Item(NamedTuple):
    """One labelled image."""

    path: str
    label: int
    classname: str


def classnames_of(items: list[Item], where: str = "") -> list[str]:
    """Class names in label order; labels must be 0..n-1 and each label must have a single name."""
    names: dict[int, str] = {}
    for item in items:
        seen = names.setdefault(item.label, item.classname)
        if seen != item.classname:
            raise UserError(
                f"{where}: label {item.label} is named both {seen!r} and {item.classname!r} "
                f"(e.g. {item.path}); each label needs one class name"
            )
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        raise UserError(f"{where}: labels must run from 0 to {len(names) - 1}; missing {missing[:10]}")
    return [names[i] for i in range(len(names))]


class Dataset:
    """Base class of datasets: a folder parsed into ``(path, label, classname)`` items per split (`load`), with
    the dataset's hand-crafted ``template`` and ``name``; protocols do the rest. A config's ``dataset.class_path``
    names a subclass. Optional attributes the few-shot cache reads: ``root``, ``fewshot_dir``, ``image_dir``,
    ``val_is_test``."""

    name: str
    template: str

    def load(self) -> dict[str, list[Item]]:
        """Items of ``train``, ``val`` and ``test``."""
        raise NotImplementedError


class SplitFile(Dataset):
    """A dataset described by a CoOp-format split file.

    Args:
        root: dataset folder.
        split_file: JSON file name inside ``root`` (or an absolute path).
        image_dir: folder inside ``root`` that the split's paths are relative to.
        template: hand-crafted prompt for zero-shot CLIP, ``{}`` standing for the class name.
        name: short name used in output paths and tables.
    """

    def __init__(
        self,
        root: str,
        split_file: str,
        image_dir: str = "images",
        template: str = "a photo of a {}.",
        name: str | None = None,
    ):
        self.root = Path(root).expanduser()
        self.split_file = self.root / str(split_file)
        self.image_dir = self.root / str(image_dir)
        self.fewshot_dir = self.root / "split_fewshot"
        self.template = template
        self.name = name or self.root.name

    def load(self, verify: bool = True) -> dict[str, list[Item]]:
        """Items of ``train``, ``val`` and ``test``; with ``verify``, checks that every listed image exists."""
        if not self.root.is_dir():
            raise UserError(f"dataset folder {self.root} does not exist; set data.root (or PT_DATA_ROOT) to the folder "
                            "that holds it, or dataset.init_args.root to the folder itself")
        if not self.split_file.is_file():
            raise UserError(f"split file {self.split_file} does not exist")
        try:
            raw = json.loads(self.split_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"split file {self.split_file} is not valid JSON: {e}") from e
        if not isinstance(raw, dict) or any(s not in raw for s in SPLITS):
            found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise UserError(f"split file {self.split_file} must hold the keys train, val, test; found {found}")
        splits = {}
        for split in SPLITS:
            try:
                items = [Item(str(self.image_dir / p), int(y), str(c)) for p, y, c in raw[split]]
            except (TypeError, ValueError) as e:
                raise UserError(
                    f"split file {self.split_file}: '{split}' must be a list of [path, label, classname] ({e})"
                ) from e
            splits[split] = items
        if verify:
            check_exist(splits, str(self.split_file))
        return splits


class ImageFolder(Dataset):
    """A dataset in ``root/{train,val,test}/<class name>/<image>`` folders.

    Args:
        root: dataset folder.
        template: hand-crafted prompt for zero-shot CLIP.
        name: short name used in output paths and tables.
    """

    def __init__(self, root: str, template: str = "a photo of a {}.", name: str | None = None):
        self.root = Path(root).expanduser()
        self.image_dir = self.root
        self.fewshot_dir = self.root / "split_fewshot"
        self.template = template
        self.name = name or self.root.name

    @property
    def val_from_train(self) -> bool:
        """No ``val/`` folder: the validation images are drawn from the training images."""
        return not (self.root / "val").is_dir()

    def load(self) -> dict[str, list[Item]]:
        for split in ("train", "test"):
            if not (self.root / split).is_dir():
                raise UserError(f"image folder dataset {self.root} has no '{split}/' folder of class folders")
        if self.val_from_train:
            log.warning("image folder dataset %s has no val/ folder: its validation images are training images "
                        "(the validation accuracy is not held out); add val/<class>/ folders for a held-out one",
                        self.root)
        classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"{self.root / 'train'} holds no class folders")
        label = {c: i for i, c in enumerate(classes)}
        splits = {}
        for split in SPLITS:
            folder = self.root / split if (self.root / split).is_dir() else self.root / "train"
            items = []
            for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                if class_dir.name not in label:
                    raise UserError(f"{class_dir} is a class that {self.root / 'train'} does not have")
                items += [
                    Item(str(f), label[class_dir.name], class_dir.name.replace("_", " "))
                    for f in sorted(class_dir.iterdir())
                    if f.suffix.lower() in IMAGE_SUFFIXES
                ]
            splits[split] = items
        return splits


class Folder(Dataset):
    """A local folder in either layout, detected: ``train/`` class folders, or a single ``split_*.json``.

    This is what ``dataset=<directory>`` on the command line builds.
    """

    def __init__(self, root: str, template: str = "a photo of a {}.", name: str | None = None):
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise UserError(f"dataset folder {root_path} does not exist")
        split_files = sorted(root_path.glob("split_*.json"))
        if (root_path / "train").is_dir():
            self._impl = ImageFolder(root, template, name)
        elif len(split_files) == 1:
            image_dir = "images" if (root_path / "images").is_dir() else "."
            self._impl = SplitFile(root, split_files[0].name, image_dir, template, name)
        else:
            raise UserError(
                f"cannot tell the layout of {root_path}: expected train/<class>/<image> folders or exactly one "
                f"split_*.json (found {len(split_files)} split files)"
            )
        self.template = template
        self.name = self._impl.name
        self.root, self.image_dir, self.fewshot_dir = self._impl.root, self._impl.image_dir, self._impl.fewshot_dir

    @property
    def val_from_train(self) -> bool:
        return bool(getattr(self._impl, "val_from_train", False))

    def load(self) -> dict[str, list[Item]]:
        return self._impl.load()


def check_exist(splits: dict[str, list[Item]], where: str) -> None:
    """Raise, naming the count and the first few, if images listed in `splits` do not exist."""
    missing = [item.path for items in splits.values() for item in items if not Path(item.path).is_file()]
    if missing:
        raise UserError(
            f"{where} lists {len(missing)} images that do not exist, e.g. {', '.join(missing[:3])}; "
            "check dataset root and image_dir"
        )
