"""`prompt-tuning datasets prepare`: download a benchmark with torchvision and write a split file for it.

torchvision fetches the images; this module writes ``split_torchvision_<Name>.json`` (the CoOp split-file format)
next to them, using the dataset's official train/val/test partition where torchvision has one, and otherwise the
reference recipe: train/val from the official training set with 20% per class as val, or, with no partition at
all, 50% train / 20% val / 30% test per class, shuffled with a fixed seed. These splits are *not* CoOp's
``split_zhou_*.json`` files, so numbers are not comparable with published ones: for that, download the split
file named in CoOp's DATASETS.md. ImageNet and UCF101 cannot be downloaded by torchvision; their manual steps are
printed instead.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import write_json

# class-name clean-ups of the reference dataset code
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
CALTECH_IGNORED = {"BACKGROUND_Google", "Faces_easy"}


@dataclass
class Source:
    """How to get one benchmark from torchvision."""

    tv_class: str  # torchvision.datasets class name
    dataset_dir: str  # folder under --root, as in CoOp's DATASETS.md
    title: str
    splits: dict[str, dict] = field(default_factory=dict)  # our split -> torchvision kwargs; {} = no partition
    rename: Callable[[str], str] = lambda name: name.replace("_", " ")
    ignore: set = field(default_factory=set)


SOURCES = {
    "caltech101": Source("Caltech101", "caltech-101", "Caltech101", rename=lambda n: CALTECH_NAMES.get(n, n),
                         ignore=CALTECH_IGNORED),
    "oxford_pets": Source("OxfordIIITPet", "oxford_pets", "OxfordPets",
                          {"trainval": {"split": "trainval"}, "test": {"split": "test"}}),
    "stanford_cars": Source("StanfordCars", "stanford_cars", "StanfordCars",
                            {"trainval": {"split": "train"}, "test": {"split": "test"}}),
    "oxford_flowers": Source("Flowers102", "oxford_flowers", "OxfordFlowers",
                             {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "food101": Source("Food101", "food-101", "Food101", {"trainval": {"split": "train"}, "test": {"split": "test"}}),
    "fgvc_aircraft": Source("FGVCAircraft", "fgvc_aircraft", "FGVCAircraft",
                            {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                            rename=lambda n: n),
    "sun397": Source("SUN397", "sun397", "SUN397"),
    "dtd": Source("DTD", "dtd", "DescribableTextures",
                  {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "eurosat": Source("EuroSAT", "eurosat", "EuroSAT", rename=lambda n: EUROSAT_NAMES.get(n, n)),
}

MANUAL = {
    "imagenet": (
        "ImageNet cannot be downloaded automatically (it needs an image-net.org account):\n"
        "  1. mkdir -p {root}/imagenet/images\n"
        "  2. extract ILSVRC2012 train and val so that {root}/imagenet/images/train/n01440764/... and\n"
        "     {root}/imagenet/images/val/n01440764/... exist (val sorted into class folders)\n"
        "  3. put CoOp's classnames.txt (link in CoOp's DATASETS.md) at {root}/imagenet/classnames.txt\n"
        "  4. prompt-tuning datasets check imagenet --root {root}"
    ),
    "ucf101": (
        "UCF101 middle frames are not in torchvision:\n"
        "  1. mkdir -p {root}/ucf101\n"
        "  2. download UCF-101-midframes.zip and split_zhou_UCF101.json (links in CoOp's DATASETS.md)\n"
        "  3. unzip UCF-101-midframes.zip -d {root}/ucf101 and move split_zhou_UCF101.json to {root}/ucf101/\n"
        "  4. prompt-tuning datasets check ucf101 --root {root}"
    ),
}


def _samples(ds) -> tuple[list[tuple[str, int]], list[str]]:
    """(image path, label) pairs and class names of a torchvision dataset object."""
    if hasattr(ds, "categories") and hasattr(ds, "index"):  # Caltech101
        base = Path(ds.root) / "101_ObjectCategories"
        pairs = [(str(base / ds.categories[y] / f"image_{i:04d}.jpg"), y) for i, y in zip(ds.index, ds.y)]
        return pairs, list(ds.categories)
    for paths, labels in (("_image_files", "_labels"), ("_images", "_labels")):
        if hasattr(ds, paths):
            return [(str(p), int(y)) for p, y in zip(getattr(ds, paths), getattr(ds, labels))], list(ds.classes)
    if hasattr(ds, "_samples"):
        return [(str(p), int(y)) for p, y in ds._samples], list(ds.classes)
    if hasattr(ds, "samples"):
        return [(str(p), int(y)) for p, y in ds.samples], list(ds.classes)
    raise UserError(f"cannot read the image list of torchvision's {type(ds).__name__}; please report this")


def _per_class_split(items: list, fractions: tuple[float, ...], seed: int) -> list[list]:
    """Split items per class by ``fractions`` (the last part takes the rest), shuffled with ``seed``."""
    rng = random.Random(seed)
    by_label: dict[int, list] = {}
    for it in items:
        by_label.setdefault(it[1], []).append(it)
    parts: list[list] = [[] for _ in fractions]
    for group in by_label.values():
        rng.shuffle(group)
        start = 0
        for i, frac in enumerate(fractions):
            end = len(group) if i == len(fractions) - 1 else start + max(1, round(len(group) * frac))
            parts[i] += group[start:end]
            start = end
    return parts


def prepare(name: str, root: str | Path, seed: int | None = None, download: bool = True, log=print) -> Path | None:
    """Download ``name`` under ``root`` and write its split file; returns the split file (None: manual steps).

    ``seed`` draws the per-class train/val/test split (None: 1); for the generated ``shapes`` it draws the images
    themselves (None: 0, the images of the demo and of ``experiments/demo.yaml``)."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--root {root} is a file: give the folder that holds (or will hold) the datasets")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".prompt-tuning-"):
            pass
    except OSError as e:
        raise UserError(f"--root {root}: cannot write there ({e.strerror})") from e
    if name == "shapes":  # the generated demo dataset
        from prompt_tuning.data.synthetic import make_shapes

        seed = 0 if seed is None else seed
        make_shapes(root / "shapes", seed=seed)
        log(f"wrote the shapes dataset to {root / 'shapes'} (seed {seed})")
        return root / "shapes" / "split_shapes.json"
    if name in MANUAL:
        log(MANUAL[name].format(root=root))
        return None
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; torchvision can prepare {', '.join(SOURCES)}; "
                        f"manual steps exist for {', '.join(MANUAL)}")
    import torchvision.datasets as tvd

    src = SOURCES[name]
    folder = root / src.dataset_dir
    tv_root = folder / "torchvision"
    tv_cls = getattr(tvd, src.tv_class)
    log(f"downloading {src.title} with torchvision.datasets.{src.tv_class} into {tv_root} ...")
    parts: dict[str, list] = {}
    try:
        for part, kwargs in (src.splits or {"all": {}}).items():
            ds = tv_cls(str(tv_root), download=download, **kwargs)
            pairs, classes = _samples(ds)
            parts[part] = [(p, y, classes[y]) for p, y in pairs]
    except (RuntimeError, OSError) as e:
        raise UserError(f"torchvision could not fetch {src.title}: {e}") from e
    seed = 1 if seed is None else seed
    if "all" in parts:
        train, val, test = _per_class_split(parts["all"], (0.5, 0.2, 0.3), seed)
    elif "trainval" in parts:
        val, train = _per_class_split(parts["trainval"], (0.2, 0.8), seed)
        test = parts["test"]
    else:
        train, val, test = parts["train"], parts["val"], parts["test"]
    kept = sorted({c for *_, c in train + val + test} - src.ignore)
    label = {c: i for i, c in enumerate(kept)}

    def rows(items):
        return [[str(Path(p).relative_to(folder)), label[c], src.rename(c)] for p, _, c in items if c in label]

    split = {"train": rows(train), "val": rows(val), "test": rows(test)}
    path = write_json(folder / f"split_torchvision_{src.title}.json", split)
    log(f"wrote {path}: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test, "
        f"{len(kept)} classes")
    log("these splits are not CoOp's split_zhou files; to use them:\n"
        f"  prompt-tuning train dataset={name} data.root={root} "
        f"dataset.init_args.split_file={path.name} dataset.init_args.image_dir=.")
    return path
