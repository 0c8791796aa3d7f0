"""Benchmark datasets: every dataset config on a generated miniature of its folder layout, their templates, the
few-shot cache in the dataset folder (the reference's draws and pickles, a cache from another split refused),
`datasets check` and `datasets prepare`."""

import json
import pickle
import random
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from prompt_tuning.apps.cli import main
from prompt_tuning.config.compose import compose
from prompt_tuning.config.instantiate import instantiate
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.benchmarks import listdir_nohidden
from prompt_tuning.data.check import check_dataset
from prompt_tuning.data.datasets import Dataset, Folder, classnames_of
from prompt_tuning.data.fewshot_cache import cached_few_shot
from tests.conftest import CONFIGS

CLASSES = ["dog", "cat_face", "sea lake"]
WNIDS = ["n01440764", "n01443537", "n01484850"]
SPLIT_SETS = {  # config name -> (folder, split file, image dir)
    "caltech101": ("caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories"),
    "oxford_pets": ("oxford_pets", "split_zhou_OxfordPets.json", "images"),
    "stanford_cars": ("stanford_cars", "split_zhou_StanfordCars.json", "."),
    "oxford_flowers": ("oxford_flowers", "split_zhou_OxfordFlowers.json", "jpg"),
    "food101": ("food-101", "split_zhou_Food101.json", "images"),
    "sun397": ("sun397", "split_zhou_SUN397.json", "SUN397"),
    "dtd": ("dtd", "split_zhou_DescribableTextures.json", "images"),
    "eurosat": ("eurosat", "split_zhou_EuroSAT.json", "2750"),
    "ucf101": ("ucf101", "split_zhou_UCF101.json", "UCF-101-midframes"),
}
WNID_SETS = {"imagenet_sketch": ("imagenet-sketch", "images"), "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
             "imagenet_r": ("imagenet-rendition", "imagenet-r")}
PER_SPLIT = {"train": 6, "val": 2, "test": 3}


def _img(path: Path, value: int = 128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path)


def _classnames_txt(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in zip(WNIDS, CLASSES)))


def make_layout(name: str, data_root: Path) -> dict[str, int]:
    """Write a miniature of ``name``'s folder layout; returns the expected image count per split."""
    if name in SPLIT_SETS:
        folder, split_file, image_dir = SPLIT_SETS[name]
        base = data_root / folder
        split = {s: [] for s in PER_SPLIT}
        for label, cname in enumerate(CLASSES):
            for s, n in PER_SPLIT.items():
                for i in range(n):
                    rel = f"{cname.replace(' ', '_')}/{s}_{i}.jpg"
                    _img(base / image_dir / rel)
                    split[s].append([rel, label, cname])
        (base / split_file).write_text(json.dumps(split))
        return {s: n * len(CLASSES) for s, n in PER_SPLIT.items()}
    if name == "imagenet":
        base = data_root / "imagenet"
        _classnames_txt(base)
        for s, n in (("train", 6), ("val", 3)):
            for wnid in WNIDS:
                for i in range(n):
                    _img(base / "images" / s / wnid / f"{wnid}_{i}.JPEG")
        return {"train": 18, "val": 9, "test": 9}
    if name == "fgvc_aircraft":
        base = data_root / "fgvc_aircraft"
        (base / "images").mkdir(parents=True)
        variants = ["707-320", "A300B4", "Cessna 172"]
        (base / "variants.txt").write_text("\n".join(variants) + "\n")
        k = 0
        for s, n in PER_SPLIT.items():
            lines = []
            for v in variants:
                for _ in range(n):
                    _img(base / "images" / f"{k:07d}.jpg")
                    lines.append(f"{k:07d} {v}")
                    k += 1
            (base / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
        return {s: n * 3 for s, n in PER_SPLIT.items()}
    if name == "imagenetv2":
        base = data_root / "imagenetv2"
        _classnames_txt(base)
        for label in range(3):
            for i in range(2):
                _img(base / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}.jpeg")
        return {"train": 0, "val": 0, "test": 6}
    folder, image_dir = WNID_SETS[name]
    base = data_root / folder
    _classnames_txt(base)
    for wnid in WNIDS[:2]:  # a 2-class subset, as -A/-R hold 200 of ImageNet's classes
        for i in range(2):
            _img(base / image_dir / wnid / f"{i}.jpg")
    (base / image_dir / "README.txt").write_text("not a class")
    return {"train": 0, "val": 0, "test": 4}


def _dataset(section):
    return instantiate(section, Dataset, "dataset.class_path")


DATASET_CONFIGS = sorted(p.stem for p in (CONFIGS / "dataset").glob("*.yaml") if p.stem != "shapes")


def test_every_benchmark_has_a_config():
    assert set(DATASET_CONFIGS) == {
        "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
        "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_every_dataset_config_loads_its_miniature_layout(tmp_path, name):
    expected = make_layout(name, tmp_path)
    cfg = compose([f"dataset={name}", "model=tiny", f"data.root={tmp_path}"])
    dataset = _dataset(cfg.dataset)
    splits = dataset.load()
    assert {s: len(v) for s, v in splits.items()} == expected
    names = classnames_of([it for v in splits.values() for it in v], name)
    assert all(Path(it.path).is_file() for v in splits.values() for it in v)
    assert "{}" in dataset.template
    if name in WNID_SETS:
        assert names == CLASSES[:2]  # the subset, labelled in sorted wnid order with ImageNet's names
    elif name == "fgvc_aircraft":
        assert names == ["707-320", "A300B4", "Cessna 172"]
    else:
        assert names == CLASSES


def test_benchmark_templates_are_coops():
    tpl = {n: compose([f"dataset={n}", "model=tiny"]).dataset.init_args.template for n in DATASET_CONFIGS}
    assert tpl["oxford_pets"] == "a photo of a {}, a type of pet."
    assert tpl["eurosat"] == "a centered satellite photo of {}."
    assert tpl["dtd"] == "{} texture."
    assert tpl["ucf101"] == "a photo of a person doing {}."
    assert tpl["food101"] == "a photo of {}, a type of food."
    assert tpl["fgvc_aircraft"] == "a photo of a {}, a type of aircraft."


def _reference_fewshot(train, val, shots, seed):
    """CoOp: random.seed(seed); Dassl generate_fewshot_dataset on train, then on val with min(K, 4)."""
    random.seed(seed)
    out = []
    for data, k in ((train, shots), (val, min(shots, 4))):
        tracker = {}
        for item in data:
            tracker.setdefault(item.label, []).append(item)
        chosen = []
        for items in tracker.values():
            chosen.extend(random.sample(items, k) if len(items) >= k else items)
        out.append(chosen)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_draw_matches_the_reference_and_is_cached_in_the_dataset_folder(tmp_path, seed):
    make_layout("oxford_pets", tmp_path)
    dataset = _dataset(compose(["dataset=oxford_pets", "model=tiny", f"data.root={tmp_path}"]).dataset)
    splits = dataset.load()
    ref_train, ref_val = _reference_fewshot(splits["train"], splits["val"], 4, seed)
    train, val = cached_few_shot(dataset, splits["train"], splits["val"], 4, seed)
    assert train == ref_train and val == ref_val
    cache = tmp_path / "oxford_pets" / "split_fewshot" / f"shot_4-seed_{seed}.json"
    assert cache.is_file()
    assert json.loads(cache.read_text())["train"][0][0].startswith("images/")
    again = cached_few_shot(dataset, splits["train"], splits["val"], 4, seed)  # served from the cache
    assert again == (train, val)


def test_imagenet_draws_train_shots_only_and_uses_val_as_test(tmp_path):
    make_layout("imagenet", tmp_path)
    dataset = _dataset(compose(["dataset=imagenet", "model=tiny", f"data.root={tmp_path}"]).dataset)
    splits = dataset.load()
    train, val = cached_few_shot(dataset, splits["train"], splits["val"], 2, 1)
    random.seed(1)
    tracker = {}
    for it in splits["train"]:
        tracker.setdefault(it.label, []).append(it)
    assert train == [x for items in tracker.values() for x in random.sample(items, 2)]
    assert val == splits["test"]
    # images are listed in os.listdir order, as the reference does
    wnid_dir = tmp_path / "imagenet" / "images" / "train" / WNIDS[0]
    assert [Path(it.path).name for it in splits["train"][:6]] == listdir_nohidden(wnid_dir)


def test_reference_pickle_cache_is_read_with_paths_rebased(tmp_path, monkeypatch):
    make_layout("oxford_pets", tmp_path)
    dataset = _dataset(compose(["dataset=oxford_pets", "model=tiny", f"data.root={tmp_path}"]).dataset)
    splits = dataset.load()

    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._classname, self._domain = impath, label, classname, 0

    Datum.__module__ = module.__name__
    Datum.__qualname__ = "Datum"
    module.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name) if name != module.__name__ else module)
    by_class: dict = {}
    for it in splits["train"]:
        by_class.setdefault(it.label, []).append(it)
    chosen = [it for items in by_class.values() for it in items[::3][:2]]  # a 2-shot draw, as the reference's
    val_by_class: dict = {}
    for it in splits["val"]:
        val_by_class.setdefault(it.label, []).append(it)
    chosen_val = [it for items in val_by_class.values() for it in items[:2]]  # min(2, 4) val images per class

    def moved(it):  # as pickled on another machine
        path = Path(it.path)
        return Datum(f"/old/machine/oxford_pets/images/{path.parent.name}/{path.name}", it.label, it.classname)

    folder = tmp_path / "oxford_pets" / "split_fewshot"
    folder.mkdir()
    with open(folder / "shot_2-seed_1.pkl", "wb") as f:
        pickle.dump({"train": [moved(it) for it in chosen], "val": [moved(it) for it in chosen_val]}, f)
    monkeypatch.delitem(sys.modules, "dassl.data.datasets.base_dataset")

    train, val = cached_few_shot(dataset, splits["train"], splits["val"], 2, 1)
    assert train == chosen  # exactly the reference's subset, paths pointed at this machine
    assert val == chosen_val


def test_reference_pickle_with_other_objects_is_refused(tmp_path):
    make_layout("oxford_pets", tmp_path)
    dataset = _dataset(compose(["dataset=oxford_pets", "model=tiny", f"data.root={tmp_path}"]).dataset)
    folder = tmp_path / "oxford_pets" / "split_fewshot"
    folder.mkdir()
    (folder / "shot_2-seed_1.pkl").write_bytes(pickle.dumps({"train": [Path("x")]}))
    with pytest.raises(UserError, match="cannot be read"):
        cached_few_shot(dataset, [], [], 2, 1)


def test_check_reports_a_broken_folder_precisely(tmp_path, capsys):
    make_layout("eurosat", tmp_path)
    base = tmp_path / "eurosat" / "2750"
    (base / "dog" / "train_0.jpg").unlink()
    (base / "dog" / "test_1.jpg").write_bytes(b"not an image")
    assert main(["datasets", "check", "eurosat", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "train       18 images      3 classes" in out
    assert "1 images do not exist, e.g. " in out and "train_0.jpg" in out
    assert "1 images cannot be decoded, e.g. " in out and "test_1.jpg" in out
    assert "3 classes found, 10 expected" in out


def test_check_of_a_missing_root_names_it(tmp_path, capsys):
    assert main(["datasets", "check", "imagenet", "--root", str(tmp_path)]) == 1
    assert f"dataset folder {tmp_path}/imagenet does not exist; set data.root" in capsys.readouterr().out
    (tmp_path / "imagenet").mkdir()
    assert main(["datasets", "check", "imagenet", "--root", str(tmp_path)]) == 1
    assert "imagenet/images is missing: ImageNet expects imagenet/images/{train,val}" in capsys.readouterr().out


def test_check_of_a_healthy_folder(tmp_path, capsys):
    make_layout("imagenet_a", tmp_path)
    report = check_dataset(compose(["dataset=imagenet_a", "model=tiny", f"data.root={tmp_path}"]).dataset, 2)
    assert report.problems == [] and report.n_classes == 2


def test_prepare_prints_manual_steps_for_imagenet(tmp_path, capsys):
    assert main(["datasets", "prepare", "imagenet", "--root", str(tmp_path)]) == 0
    assert f"{tmp_path}/imagenet/classnames.txt" in capsys.readouterr().out


def test_prepare_with_torchvision_writes_a_loadable_deterministic_split(tmp_path, monkeypatch, capsys):
    import torchvision.datasets as tvd

    class FakeEuroSAT:  # stands in for the download: same attributes as torchvision's ImageFolder datasets
        def __init__(self, root, download=False):
            assert download
            self.classes = ["AnnualCrop", "SeaLake"]
            self.samples = []
            for y, c in enumerate(self.classes):
                for i in range(10):
                    p = Path(root) / "eurosat" / "2750" / c / f"{c}_{i}.jpg"
                    _img(p)
                    self.samples.append((str(p), y))

    monkeypatch.setattr(tvd, "EuroSAT", FakeEuroSAT)
    assert main(["datasets", "prepare", "eurosat", "--root", str(tmp_path)]) == 0
    split_path = tmp_path / "eurosat" / "split_torchvision_EuroSAT.json"
    split = json.loads(split_path.read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 10, "val": 4, "test": 6}  # 50/20/30 per class
    assert {row[2] for row in split["train"]} == {"Annual Crop Land", "Sea or Lake"}  # the reference's names
    first = split_path.read_text()
    main(["datasets", "prepare", "eurosat", "--root", str(tmp_path)])
    assert split_path.read_text() == first  # deterministic
    cfg = compose(["dataset=eurosat", "model=tiny", f"data.root={tmp_path}",
                   f"dataset.init_args.split_file={split_path.name}", "dataset.init_args.image_dir=."])
    assert len(_dataset(cfg.dataset).load()["test"]) == 6
    assert "not CoOp's split_zhou files" in capsys.readouterr().out


def test_a_few_shot_cache_from_another_split_is_refused(shapes_dir, tmp_path):
    splits = Folder(str(shapes_dir)).load()
    dataset = SimpleNamespace(fewshot_dir=tmp_path, root=str(shapes_dir))
    train, _ = cached_few_shot(dataset, splits["train"], splits["val"], 2, seed=1)  # drawn, cached as JSON
    assert cached_few_shot(dataset, splits["train"], splits["val"], 2, seed=1)[0] == train
    other_train = [it for it in splits["train"] if it.path != train[0].path]  # the split file changed
    with pytest.raises(UserError, match=r"does not match the dataset's train split: 1 of its 18 images"):
        cached_few_shot(dataset, other_train, splits["val"], 2, seed=1)
