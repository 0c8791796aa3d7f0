"""The feature cache: round trip, damaged entries, exactness against on-the-fly encoding, augmented views, the
same numbers with the cache on and off, its bypass for methods that change the image tower, and its key (weights,
architecture, image contents, stored dtype, view seed) with one log line per entry."""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from prompt_tuning.apps.cli import main
from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.config.compose import compose
from prompt_tuning.data.datamodule import ImageDataset, ViewDataset
from prompt_tuning.data.datasets import Folder
from prompt_tuning.data.features import FeatureCache, FeatureDataset, encode_items, view_seed_of
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.methods.base import Capabilities, Task
from prompt_tuning.methods.contexts.coop import CoOp
from prompt_tuning.runs.build import build
from prompt_tuning.runs.module import PromptTuner
from tests.conftest import TINY_ARCH, build_tiny


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
    monkeypatch.setattr(CoOp, "capabilities", Capabilities(image_tower=True))
    setup = build(compose(["model=tiny", f"dataset={shapes_dir}", "protocol.shots=2", "data.augment=false"]))
    assert isinstance(setup.datamodule.train_set, ImageDataset)
    assert isinstance(setup.eval_dataset(setup.eval_sets["all"][1]), ImageDataset)


# ------------------------------------------------------------------------------------------ the cache's key
@pytest.fixture
def thirty(shapes_dir):
    return Folder(str(shapes_dir)).load()["test"][:30]


def _fresh(clip, items, tf, **kw):
    return encode_items(clip, items, tf, progress=False, **kw)


def test_cache_never_serves_another_random_initialisation(thirty, tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    first, second = build_tiny(seed=1), build_tiny(seed=2)  # same name, same "random" weights tag
    tf = eval_transform(first.preprocess)
    cache.features(first, thirty, tf)
    assert torch.equal(cache.features(second, thirty, tf), _fresh(second, thirty, tf))
    assert cache.misses == 2


def test_cache_never_serves_another_architecture(thirty, tmp_path):
    arch = json.loads(TINY_ARCH.read_text())
    deeper = json.loads(TINY_ARCH.read_text())
    deeper["vision_cfg"]["layers"] = 4
    cache = FeatureCache(tmp_path, progress=False)
    torch.manual_seed(0)
    two = FrozenCLIP.build("tiny", None, arch=arch)
    torch.manual_seed(0)
    four = FrozenCLIP.build("tiny", None, arch=deeper)
    tf = eval_transform(two.preprocess)
    cache.features(two, thirty, tf)
    assert torch.equal(cache.features(four, thirty, tf), _fresh(four, thirty, tf))


def test_cache_sees_an_edited_image(shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    test = Folder(str(data)).load()["test"][:30]
    clip = build_tiny()
    tf = eval_transform(clip.preprocess)
    cache = FeatureCache(tmp_path / "cache", progress=False)
    before = cache.features(clip, test, tf)
    for it in test:
        Image.new("RGB", Image.open(it.path).size).save(it.path)  # blank every image
    after = cache.features(clip, test, tf)
    assert torch.equal(after, _fresh(clip, test, tf))
    assert not torch.equal(after, before)


def test_cache_keys_the_stored_dtype_and_the_seed_of_augmented_views(thirty, tmp_path):
    clip = build_tiny()
    tf = eval_transform(clip.preprocess)
    FeatureCache(tmp_path, dtype="float16", progress=False).features(clip, thirty, tf)
    full = FeatureCache(tmp_path, dtype="float32", progress=False).features(clip, thirty, tf)
    assert torch.equal(full, _fresh(clip, thirty, tf))  # not the float16-rounded entry
    aug = train_transform(clip.preprocess)
    cache = FeatureCache(tmp_path, progress=False)
    cache.features(clip, thirty, aug, view=1, seed=3)
    assert torch.equal(cache.features(clip, thirty, aug, view=1, seed=4),
                       _fresh(clip, thirty, aug, seed=4 * 1009 + 1))


def test_cache_logs_one_line_when_built_and_when_reused_with_the_same_digest(thirty, tmp_path, caplog):
    clip = build_tiny()
    tf = eval_transform(clip.preprocess)
    cache = FeatureCache(tmp_path, progress=False)
    with caplog.at_level(logging.INFO, logger="prompt_tuning"):
        cache.features(clip, thirty, tf)
        cache.features(clip, thirty, tf)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("prompt_tuning")]
    assert len(lines) == 2
    built = re.match(r"feature cache: built ([0-9a-f]{8}) \(30 images\)", lines[0])
    assert built and lines[1].startswith(f"feature cache: reused {built.group(1)} (30 images)")


def test_cache_sees_images_swapped_for_others_of_the_same_size_and_time(shapes_dir, tmp_path):
    """``touch -r`` gives a replaced image its old size and modification time; its change time (and, for another
    file moved in, its inode) still differ, and so does the entry."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    test = Folder(str(data)).load()["test"]
    by_size: dict = {}
    for it in test:
        by_size.setdefault(Path(it.path).stat().st_size, []).append(it)
    pairs = [group[:2] for group in by_size.values() if len(group) >= 2 and group[0].label != group[1].label]
    assert pairs, "the shapes data hold images of equal byte size"
    clip = build_tiny()
    tf = eval_transform(clip.preprocess)
    cache = FeatureCache(tmp_path / "cache", progress=False)
    before = cache.features(clip, test, tf)
    for a, b in pairs:  # swap the bytes, then give each file back its own size and modification time
        sa, sb = Path(a.path).stat(), Path(b.path).stat()
        da, db = Path(a.path).read_bytes(), Path(b.path).read_bytes()
        Path(a.path).write_bytes(db)
        Path(b.path).write_bytes(da)
        os.utime(a.path, ns=(sa.st_atime_ns, sa.st_mtime_ns))
        os.utime(b.path, ns=(sb.st_atime_ns, sb.st_mtime_ns))
        assert (Path(a.path).stat().st_size, Path(a.path).stat().st_mtime_ns) == (sa.st_size, sa.st_mtime_ns)
    after = cache.features(clip, test, tf)
    assert torch.equal(after, _fresh(clip, test, tf))
    assert not torch.equal(after, before)
