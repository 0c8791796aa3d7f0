"""Datasets: the CoOp split-file, image-folder and detected-folder layouts and their errors, unreadable images,
the image transforms, and the seeded training loader."""

import json

import pytest
import torch
from PIL import Image

from prompt_tuning.backbone import Preprocess
from prompt_tuning.core.errors import UserError
from prompt_tuning.data.datamodule import ImageDataset, PromptDataModule
from prompt_tuning.data.datasets import Folder, ImageFolder, Item, SplitFile, classnames_of
from prompt_tuning.data.transforms import eval_transform, train_transform

PRE = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _image(path, colour=(255, 0, 0), size=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _split_dataset(root, n_per_class=2, classes=("cat", "golden_retriever")):
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        for part in split:
            for i in range(n_per_class):
                rel = f"{name}/{part}_{i}.jpg"
                _image(root / "images" / rel)
                split[part].append([rel, label, name])
    (root / "split_toy.json").write_text(json.dumps(split))
    return root


def test_split_file_reads_items_and_class_names(tmp_path):
    root = _split_dataset(tmp_path)
    splits = SplitFile(str(root), "split_toy.json").load()
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 4, "test": 4}
    assert splits["train"][0] == Item(str(root / "images/cat/train_0.jpg"), 0, "cat")
    assert classnames_of(splits["test"]) == ["cat", "golden_retriever"]


def test_split_file_naming_missing_images_reports_count_and_examples(tmp_path):
    root = _split_dataset(tmp_path)
    (root / "images/cat/test_1.jpg").unlink()
    (root / "images/cat/val_0.jpg").unlink()
    with pytest.raises(UserError, match=r"lists 2 images that do not exist, e\.g\. .*cat/val_0\.jpg"):
        SplitFile(str(root), "split_toy.json").load()


def test_split_file_errors_name_the_file(tmp_path):
    (tmp_path / "split_bad.json").write_text("{not json")
    with pytest.raises(UserError, match="split_bad.json is not valid JSON"):
        SplitFile(str(tmp_path), "split_bad.json").load()
    (tmp_path / "split_bad.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(UserError, match="must hold the keys train, val, test; found"):
        SplitFile(str(tmp_path), "split_bad.json").load()
    with pytest.raises(UserError, match="does not exist"):
        SplitFile(str(tmp_path / "nowhere"), "split.json").load()


def test_class_name_label_disagreement_is_reported():
    items = [Item("a.jpg", 0, "cat"), Item("b.jpg", 0, "dog")]
    with pytest.raises(UserError, match="label 0 is named both 'cat' and 'dog'"):
        classnames_of(items, "toy")


def test_image_folder_layout(tmp_path):
    for split in ("train", "test"):
        for name in ("b_class", "a_class"):
            _image(tmp_path / split / name / "0.png")
    splits = ImageFolder(str(tmp_path)).load()
    assert [it.label for it in splits["train"]] == [0, 1]
    assert classnames_of(splits["test"]) == ["a class", "b class"]
    assert splits["val"] == splits["train"]  # no val/ folder


def test_an_image_folder_without_val_says_its_validation_images_are_training_images(tmp_path, caplog, capsys):
    from prompt_tuning.apps.cli import main

    for split in ("train", "test"):
        for name in ("b_class", "a_class"):
            _image(tmp_path / split / name / "0.png")
    with caplog.at_level("WARNING", logger="prompt_tuning"):
        assert Folder(str(tmp_path)).val_from_train
        Folder(str(tmp_path)).load()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == (f"image folder dataset {tmp_path} has no val/ folder: its validation images are training "
                       "images (the validation accuracy is not held out); add val/<class>/ folders for a held-out one")
    assert main(["datasets", "check", str(tmp_path), "--no-decode"]) == 0  # worth knowing, not a problem
    out = capsys.readouterr().out
    assert "WARNING: no val/ folder: the validation images are training images (not held out)" in out
    for name in ("b_class", "a_class"):
        _image(tmp_path / "val" / name / "0.png")
    caplog.clear()
    with caplog.at_level("WARNING", logger="prompt_tuning"):
        assert not Folder(str(tmp_path)).val_from_train
        Folder(str(tmp_path)).load()
    assert not caplog.records


def test_folder_detects_either_layout_and_explains_otherwise(tmp_path):
    root = _split_dataset(tmp_path / "split")
    assert len(Folder(str(root)).load()["train"]) == 4
    _image(tmp_path / "folder" / "train" / "x" / "0.png")
    _image(tmp_path / "folder" / "test" / "x" / "0.png")
    assert len(Folder(str(tmp_path / "folder")).load()["test"]) == 1
    (tmp_path / "neither").mkdir()
    with pytest.raises(UserError, match="cannot tell the layout"):
        Folder(str(tmp_path / "neither"))


def test_unreadable_image_names_its_path(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        ImageDataset([Item(str(bad), 0, "x")], eval_transform(PRE))[0]


def test_transforms_give_model_sized_normalised_tensors(tmp_path):
    _image(tmp_path / "a.png", colour=(255, 255, 255), size=50)
    image = Image.open(tmp_path / "a.png")
    for tf in (eval_transform(PRE), train_transform(PRE)):
        x = tf(image)
        assert x.shape == (3, 32, 32)
        assert torch.allclose(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25


def test_train_loader_is_seeded_and_drops_the_last_partial_batch(tmp_path):
    root = _split_dataset(tmp_path, n_per_class=5)
    items = SplitFile(str(root), "split_toy.json").load()["train"]  # 10 items

    def order(seed):
        data = ImageDataset(items, eval_transform(PRE))
        dm = PromptDataModule(data, data, data, batch_size=4, seed=seed)
        return [b["label"].tolist() for b in dm.train_dataloader()]

    assert order(1) == order(1)
    assert len(order(1)) == 2  # 10 // 4, last partial batch dropped (Dassl: drop_last when len >= batch)
    assert order(1) != order(2) or order(1) != order(3)
