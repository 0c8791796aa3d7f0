"""The benchmark datasets whose folders are not described by a split file: ImageNet and its variants, and
FGVCAircraft. (The other nine benchmarks ship CoOp split files and are `SplitFile` configs: see
``configs/dataset/``.) Each reads the folder layout of CoOp's DATASETS.md as it is.

Images inside a class folder are listed in ``os.listdir`` order, as the reference code does (its few-shot draw
depends on that order), so on the same file system the same seed picks the same images.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datasets import Dataset, Item


def listdir_nohidden(path: Path, sort: bool = False) -> list[str]:
    """Entries of ``path`` not starting with a dot (Dassl's helper); unsorted unless ``sort``."""
    try:
        names = [n for n in os.listdir(path) if not n.startswith(".")]
    except FileNotFoundError as e:
        raise UserError(f"folder {path} does not exist") from e
    return sorted(names) if sort else names


def read_classnames(path: Path) -> OrderedDict[str, str]:
    """ImageNet's ``classnames.txt``: lines ``<wnid> <class name>``, in label order."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing: copy classnames.txt from the imagenet folder (CoOp's DATASETS.md gives the link)"
        )
    names: OrderedDict[str, str] = OrderedDict()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name:
            raise UserError(f"{path}:{n}: expected '<wnid> <class name>', got {line!r}")
        names[wnid] = name
    return names


class _Benchmark(Dataset):
    """Common attributes: ``root`` is the dataset's own folder (e.g. ``$DATA/imagenet``)."""

    dataset_dir = ""
    image_dir_name = ""
    val_is_test = False  # ImageNet: the official val set is the test set, and also used as val
    test_only = False  # the domain-shift variants only test

    def __init__(self, root: str, template: str = "a photo of a {}.", name: str | None = None):
        self.root = Path(root).expanduser()
        self.template = template
        self.name = name or type(self).__name__.lower()
        self.image_dir = self.root / self.image_dir_name
        self.fewshot_dir = self.root / "split_fewshot"

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise UserError(
                f"dataset folder {self.root} does not exist; set data.root (or PT_DATA_ROOT) to the folder that "
                f"holds {self.dataset_dir}/"
            )
        if not self.image_dir.is_dir():
            raise UserError(f"{self.image_dir} is missing: {type(self).__name__} expects {self.layout}")

    layout = ""


class ImageNet(_Benchmark):
    """``imagenet/images/{train,val}/<wnid>/*`` + ``imagenet/classnames.txt``; val is the test set."""

    dataset_dir = "imagenet"
    image_dir_name = "images"
    val_is_test = True
    layout = "imagenet/images/{train,val}/<wnid>/<image> and imagenet/classnames.txt"

    def load(self) -> dict[str, list[Item]]:
        self._require_root()
        names = read_classnames(self.root / "classnames.txt")
        train = self._read(names, "train")
        test = self._read(names, "val")
        return {"train": train, "val": test, "test": test}

    def _read(self, names: OrderedDict[str, str], split: str) -> list[Item]:
        folder = self.image_dir / split
        items = []
        for label, wnid in enumerate(listdir_nohidden(folder, sort=True)):
            if wnid not in names:
                raise UserError(f"{folder / wnid}: class folder not listed in {self.root / 'classnames.txt'}")
            items += [Item(str(folder / wnid / f), label, names[wnid]) for f in listdir_nohidden(folder / wnid)]
        return items


class _WnidFolders(_Benchmark):
    """Test-only variants with ``<image_dir>/<wnid>/*`` folders, labelled in sorted folder order."""

    test_only = True

    def load(self) -> dict[str, list[Item]]:
        self._require_root()
        names = read_classnames(self.root / "classnames.txt")
        folders = [f for f in listdir_nohidden(self.image_dir, sort=True) if f != "README.txt"]
        items = []
        for label, wnid in enumerate(folders):
            if wnid not in names:
                raise UserError(f"{self.image_dir / wnid}: not a class of {self.root / 'classnames.txt'}")
            items += [
                Item(str(self.image_dir / wnid / f), label, names[wnid])
                for f in listdir_nohidden(self.image_dir / wnid)
            ]
        return {"train": [], "val": [], "test": items}


class ImageNetSketch(_WnidFolders):
    """``imagenet-sketch/images/<wnid>/*`` (1000 classes) + ``classnames.txt``."""

    dataset_dir = "imagenet-sketch"
    image_dir_name = "images"
    layout = "imagenet-sketch/images/<wnid>/<image> and imagenet-sketch/classnames.txt"


class ImageNetA(_WnidFolders):
    """``imagenet-adversarial/imagenet-a/<wnid>/*`` (200 of ImageNet's classes) + ``classnames.txt``."""

    dataset_dir = "imagenet-adversarial"
    image_dir_name = "imagenet-a"
    layout = "imagenet-adversarial/imagenet-a/<wnid>/<image> and imagenet-adversarial/classnames.txt"


class ImageNetR(_WnidFolders):
    """``imagenet-rendition/imagenet-r/<wnid>/*`` (200 of ImageNet's classes) + ``classnames.txt``."""

    dataset_dir = "imagenet-rendition"
    image_dir_name = "imagenet-r"
    layout = "imagenet-rendition/imagenet-r/<wnid>/<image> and imagenet-rendition/classnames.txt"


class ImageNetV2(_Benchmark):
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<label 0..999>/*`` + ``classnames.txt``."""

    dataset_dir = "imagenetv2"
    image_dir_name = "imagenetv2-matched-frequency-format-val"
    test_only = True
    layout = "imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/<image> and imagenetv2/classnames.txt"

    def load(self) -> dict[str, list[Item]]:
        self._require_root()
        names = list(read_classnames(self.root / "classnames.txt").values())
        items = []
        for label, name in enumerate(names):
            folder = self.image_dir / str(label)
            items += [Item(str(folder / f), label, name) for f in listdir_nohidden(folder)]
        return {"train": [], "val": [], "test": items}


class FGVCAircraft(_Benchmark):
    """``fgvc_aircraft/images/*.jpg`` + ``variants.txt`` (class names in label order) and
    ``images_variant_{train,val,test}.txt`` (lines ``<image id> <variant name>``)."""

    dataset_dir = "fgvc_aircraft"
    image_dir_name = "images"
    layout = "fgvc_aircraft/images/<id>.jpg, variants.txt and images_variant_{train,val,test}.txt"

    def load(self) -> dict[str, list[Item]]:
        self._require_root()
        variants = self.root / "variants.txt"
        if not variants.is_file():
            raise UserError(f"{variants} is missing: FGVCAircraft expects {self.layout}")
        names = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
        label = {name: i for i, name in enumerate(names)}
        splits = {}
        for split in ("train", "val", "test"):
            path = self.root / f"images_variant_{split}.txt"
            if not path.is_file():
                raise UserError(f"{path} is missing: FGVCAircraft expects {self.layout}")
            items = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                parts = line.strip().split(" ")
                if len(parts) < 2:
                    continue
                name = " ".join(parts[1:])
                if name not in label:
                    raise UserError(f"{path}:{n}: variant {name!r} is not in {variants}")
                items.append(Item(str(self.image_dir / f"{parts[0]}.jpg"), label[name], name))
            splits[split] = items
        return splits
