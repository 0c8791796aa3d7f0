"""Feature cache: round trip, damaged entries, exactness against on-the-fly encoding, augmented views, bypass."""

import json

import pytest
import torch

from prompt_tuning.cli import main
from prompt_tuning.config import compose
from prompt_tuning.contexts.base import Task
from prompt_tuning.contexts.coop import CoOp
from prompt_tuning.data.datamodule import ImageDataset, ViewDataset
from prompt_tuning.data.datasets import Folder
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.features import FeatureCache, FeatureDataset, encode_items, view_seed_of
from prompt_tuning.module import PromptTuner
from prompt_tuning.runner import build
from tests.conftest import TINY_ARCH


@pytest.fixture
def items(shapes_dir):
    return Folder(str(shapes_dir)).load()["test"][:40]


def test_round_trip_hit_and_atomic_files(tiny_clip, items, tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    tf = eval_transform(tiny_clip.preprocess)
    first = cache.features(tiny_clip, items, tf)
    again = cache.features(tiny_clip, items, tf)
    assert (cache.misses, cache.hits) == (1, 1)
    assert torch.equal(first, again) and first.shape == (40, tiny_clip.embed_dim)
    files = list(tmp_path.rglob("*"))
    assert [f.suffix for f in files if f.is_file()] == [".pt"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape"])
def test_damaged_entry_is_recomputed_not_served(tiny_clip, items, tmp_path, damage):
    cache = FeatureCache(tmp_path, progress=False)
    tf = eval_transform(tiny_clip.preprocess)
    good = cache.features(tiny_clip, items, tf)
    (entry,) = [f for f in tmp_path.rglob("*.pt")]
    if damage == "garbage":
        entry.write_bytes(b"half-written")
    else:
        torch.save(torch.zeros(3, 2), entry)
    assert torch.equal(cache.features(tiny_clip, items, tf), good)
    assert cache.misses == 2


def test_cached_features_equal_encoding_in_training_sized_batches(tiny_clip, items, tmp_path):
    tf = eval_transform(tiny_clip.preprocess)
    cached = FeatureCache(tmp_path, progress=False).features(tiny_clip, items, tf)
    images = torch.stack([ImageDataset(items, tf)[i]["image"] for i in range(len(items))])
    on_the_fly = torch.cat([tiny_clip.encode_images(b, normalize=False) for b in images.split(32)])
    assert (cached - on_the_fly).abs().max().item() == 0.0


def test_views_are_seeded_reproducible_and_distinct(tiny_clip, items, tmp_path):
    tf = train_transform(tiny_clip.preprocess)
    cache = FeatureCache(tmp_path, progress=False)
    v1 = cache.features(tiny_clip, items, tf, view=1, seed=3)
    v2 = cache.features(tiny_clip, items, tf, view=2, seed=3)
    assert not torch.equal(v1, v2)
    assert torch.equal(v1, encode_items(tiny_clip, items, tf, seed=3 * 1009 + 1, progress=False))


def test_training_on_cached_views_gives_the_logits_of_the_same_views_uncached(tiny_clip, items, tmp_path):
    tf = train_transform(tiny_clip.preprocess)
    cached = FeatureCache(tmp_path, progress=False).features(tiny_clip, items, tf, view=1, seed=5)
    views = ViewDataset(items, tf, [view_seed_of(5, 1)])  # the same augmented images, regenerated one by one
    images = torch.stack([views[i]["image"] for i in range(32)])
    task = Task(tuple(f"class {i}" for i in range(9)))
    module = PromptTuner(tiny_clip, CoOp(tiny_clip, task, n_ctx=4), task)
    batch_cached = FeatureDataset(cached.unsqueeze(0), [it.label for it in items])
    feats = torch.stack([batch_cached[i]["features"] for i in range(32)])
    uncached = module(module.image_features({"image": images})).logits
    assert torch.equal(module(feats).logits, uncached)


def test_a_view_is_the_same_image_whatever_the_batching_or_order(tiny_clip, items):
    tf = train_transform(tiny_clip.preprocess)
    views = ViewDataset(items, tf, [11, 12])
    first = views.view(1, 7)["image"]
    for i in range(20):
        views.view(0, i)
    assert torch.equal(views.view(1, 7)["image"], first)
    assert not torch.equal(views.view(0, 7)["image"], first)  # another view is another augmentation


def _run(shapes_dir, out, *extra):
    args = ["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=coop", "protocol.shots=4",
            "optim.max_epochs=2", "runtime.progress=false", f"output_dir={out}", *extra]
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("augment, views", [("true", 0), ("false", 0), ("true", 2)])
def test_feature_cache_never_changes_a_runs_numbers(shapes_dir, tmp_path, augment, views):
    """Cached views included: without the cache, training regenerates the same N views image by image."""
    extra = (f"data.augment={augment}", f"data.cache_views={views}")
    on = _run(shapes_dir, tmp_path / "on", *extra, "runtime.feature_cache=true")
    off = _run(shapes_dir, tmp_path / "off", *extra, "runtime.feature_cache=false")
    assert on["metrics"] == off["metrics"]
    assert on["config_hash"] == off["config_hash"]  # runtime settings are not part of the run's identity


def test_cached_views_train_and_change_the_hash(shapes_dir, tmp_path):
    exact = _run(shapes_dir, tmp_path / "exact")
    views = _run(shapes_dir, tmp_path / "views", "data.cache_views=2")
    assert views["config_hash"] != exact["config_hash"]
    assert 0 <= views["metrics"]["acc"] <= 100


def test_methods_that_change_the_image_tower_bypass_the_cache(shapes_dir, monkeypatch):
    monkeypatch.setattr(CoOp, "frozen_image_tower", False)
    setup = build(compose(["model=tiny", f"dataset={shapes_dir}", "protocol.shots=2", "data.augment=false"]))
    assert isinstance(setup.datamodule.train_set, ImageDataset)
    assert isinstance(setup.eval_dataset(setup.eval_sets["all"][1]), ImageDataset)
