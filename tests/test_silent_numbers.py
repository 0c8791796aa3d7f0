"""Defects that gave wrong numbers without a warning (issue 10): each test failed before its fix.

Feature-cache keys, output folders under method recipes, run files written before setup, per-dataset HM,
zero-shot rows without shots, range checks of numeric keys, and checkpoints that could run code.
"""

import json
import logging
import re
import shutil

import pytest
import torch
from PIL import Image

from prompt_tuning.cli import main
from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.config import compose, group_options
from prompt_tuning.data.datasets import Folder
from prompt_tuning.data.transforms import eval_transform, train_transform
from prompt_tuning.features import FeatureCache, encode_items
from prompt_tuning.plot import curves_figure
from prompt_tuning.results import aggregate, format_table, harmonic_mean
from tests.conftest import TINY_ARCH, build_tiny


# ----------------------------------------------------------------------------------- 1. feature-cache key
@pytest.fixture
def items(shapes_dir):
    return Folder(str(shapes_dir)).load()["test"][:30]


def _fresh(clip, items, tf, **kw):
    return encode_items(clip, items, tf, progress=False, **kw)


def test_cache_never_serves_another_random_initialisation(items, tmp_path):
    cache = FeatureCache(tmp_path, progress=False)
    first, second = build_tiny(seed=1), build_tiny(seed=2)  # same name, same "random" weights tag
    tf = eval_transform(first.preprocess)
    cache.features(first, items, tf)
    assert torch.equal(cache.features(second, items, tf), _fresh(second, items, tf))
    assert cache.misses == 2


def test_cache_never_serves_another_architecture(items, tmp_path):
    arch = json.loads(TINY_ARCH.read_text())
    deeper = json.loads(TINY_ARCH.read_text())
    deeper["vision_cfg"]["layers"] = 4
    cache = FeatureCache(tmp_path, progress=False)
    torch.manual_seed(0)
    two = FrozenCLIP.build("tiny", None, arch=arch)
    torch.manual_seed(0)
    four = FrozenCLIP.build("tiny", None, arch=deeper)
    tf = eval_transform(two.preprocess)
    cache.features(two, items, tf)
    assert torch.equal(cache.features(four, items, tf), _fresh(four, items, tf))


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


def test_cache_keys_the_stored_dtype_and_the_seed_of_augmented_views(items, tmp_path):
    clip = build_tiny()
    tf = eval_transform(clip.preprocess)
    FeatureCache(tmp_path, dtype="float16", progress=False).features(clip, items, tf)
    full = FeatureCache(tmp_path, dtype="float32", progress=False).features(clip, items, tf)
    assert torch.equal(full, _fresh(clip, items, tf))  # not the float16-rounded entry
    aug = train_transform(clip.preprocess)
    cache = FeatureCache(tmp_path, progress=False)
    cache.features(clip, items, aug, view=1, seed=3)
    assert torch.equal(cache.features(clip, items, aug, view=1, seed=4),
                       _fresh(clip, items, aug, seed=4 * 1009 + 1))


def test_cache_logs_one_line_when_built_and_when_reused_with_the_same_digest(items, tmp_path, caplog):
    clip = build_tiny()
    tf = eval_transform(clip.preprocess)
    cache = FeatureCache(tmp_path, progress=False)
    with caplog.at_level(logging.INFO, logger="prompt_tuning"):
        cache.features(clip, items, tf)
        cache.features(clip, items, tf)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("prompt_tuning")]
    assert len(lines) == 2
    built = re.match(r"feature cache: built ([0-9a-f]{8}) \(30 images\)", lines[0])
    assert built and lines[1].startswith(f"feature cache: reused {built.group(1)} (30 images)")


def _demo_run(shapes_dir, out, *extra):
    args = ["train", "model=tiny", f"dataset={shapes_dir}", "method=coop_csc", "protocol.shots=2",
            "optim.lr=0.02", "optim.max_epochs=3", "runtime.progress=false", f"output_dir={out}", *extra]
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())["metrics"]


@pytest.mark.parametrize("change", [["seed=2"], ["model.arch.vision_cfg.layers=4"]])
def test_a_run_gives_the_same_metrics_with_the_cache_on_and_off(shapes_dir, tmp_path, change):
    _demo_run(shapes_dir, tmp_path / "first")  # fills the cache with seed 1's 2-layer model
    on = _demo_run(shapes_dir, tmp_path / "on", *change)
    off = _demo_run(shapes_dir, tmp_path / "off", *change, "runtime.feature_cache=false")
    assert on == off


# ------------------------------------------------------------------------- 2. output folder under recipes
@pytest.mark.parametrize("protocol", group_options("protocol"))
@pytest.mark.parametrize("method", group_options("method"))
def test_output_dir_follows_seed_and_shots_for_every_method_and_protocol(method, protocol):
    cfg = compose([f"method={method}", f"protocol={protocol}", "dataset=eurosat", "model=tiny",
                   "protocol.shots=4", "seed=3"])
    assert cfg.output_dir.endswith(f"/eurosat/{method}/{protocol}/shots_4/seed_3")
    assert (cfg.protocol.shots, cfg.seed) == (4, 3)


# ------------------------------------------------------------------- 3. run files written after setup only
def _args(shapes_dir, out, *extra):
    return ["train", "model=tiny", f"dataset={shapes_dir}", "method=coop", "protocol.shots=2",
            "optim.max_epochs=1", "runtime.progress=false", f"output_dir={out}", *extra]


def test_a_failed_setup_leaves_a_finished_run_untouched(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(shapes_dir, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(_args(shapes_dir, out, "dataset=eurosat", f"data.root={tmp_path / 'nowhere'}")) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert "error:" in capsys.readouterr().err


def test_a_finished_run_of_another_configuration_is_kept_unless_overwrite(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(shapes_dir, out)) == 0
    first = json.loads((out / "result.json").read_text())["config_hash"]
    capsys.readouterr()
    assert main(_args(shapes_dir, out, "optim.lr=0.01")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and first in err and "optim.lr: 0.002 -> 0.01" in err and "overwrite=true" in err
    assert json.loads((out / "result.json").read_text())["config_hash"] == first
    assert main(_args(shapes_dir, out, "optim.lr=0.01", "overwrite=true")) == 0
    second = json.loads((out / "result.json").read_text())["config_hash"]
    assert second != first and f"# run hash: {second}" in (out / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------- 4. per-dataset HM
# Published base / novel / HM rows (../shared/published.md, PromptKD Table 1): the HM is that of the means.
PUBLISHED_ROWS = {
    ("CoOp", "imagenet"): (76.47, 67.88, 71.92),
    ("CoOp", "dtd"): (79.44, 41.18, 54.24),
    ("CoCoOp", "eurosat"): (87.49, 60.04, 71.21),
    ("CLIP", "fgvc_aircraft"): (27.19, 36.29, 31.09),
    ("MaPLe", "ucf101"): (83.00, 78.66, 80.77),
}


@pytest.mark.parametrize("row", PUBLISHED_ROWS.items(), ids=lambda r: f"{r[0][0]}-{r[0][1]}")
def test_dataset_hm_is_the_hm_of_the_seed_averaged_base_and_novel(row):
    (_, dataset), (base, novel, hm) = row
    seeds = [(base + 6, novel - 9), (base - 6, novel + 9), (base, novel)]  # mean of per-seed HMs differs
    results = [{"method": "m", "dataset": dataset, "seed": s, "shots": 16, "protocol": "base2novel",
                "metrics": {"base_acc": b, "novel_acc": n, "hm": harmonic_mean(b, n)}, "tags": {}}
               for s, (b, n) in enumerate(seeds, 1)]
    mean_of_hms = sum(harmonic_mean(b, n) for b, n in seeds) / 3
    assert abs(round(mean_of_hms, 2) - hm) > 0.05  # the old way would show another number
    assert round(aggregate(results)[("m", 16)][dataset]["hm"][0], 2) == hm


# --------------------------------------------------------------------------------- 5. zero-shot has no shots
def test_zero_shot_is_one_row_without_shots_and_a_dashed_line():
    results = [{"method": m, "dataset": "a", "seed": s, "shots": k, "protocol": "fewshot", "tags": {},
                "trainable": m != "zeroshot", "metrics": {"acc": 40.0 + k + (m == "zeroshot") * 10}}
               for m in ("coop", "zeroshot") for k in (1, 2, 4) for s in (1, 2)]
    table = aggregate(results, {(m, k): ["a"] for m in ("coop", "zeroshot") for k in (1, 2, 4)})
    assert sorted(table, key=str) == sorted([("coop", 1), ("coop", 2), ("coop", 4), ("zeroshot", None)], key=str)
    assert table[("zeroshot", None)]["a"]["acc"] == (51.0, 0.0, 2)  # 2 seeds, not 6 runs
    assert "| zeroshot | - | a | 51.00 ± 0.00 (2) |" in format_table(table)
    lines = curves_figure(table).axes[0].get_lines()
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [51.0, 51.0]


# ------------------------------------------------------------------------------------ 6. range checks
@pytest.mark.parametrize("arg, accepted", [
    ("optim.max_epochs=-1", "an integer >= 1"),
    ("seed=-3", "an integer >= 0"),
    ("optim.lr=-0.1", "a number > 0"),
    ("data.batch_size=0", "an integer >= 1"),
    ("data.eval_batch_size=0", "an integer >= 1"),
    ("optim.momentum=1.5", "a number in [0, 1)"),
    ("data.crop_scale=[0.5,0.1]", "0 < min <= max <= 1"),
    ("protocol.epochs.16=0", "an integer >= 1"),
])
def test_out_of_range_values_are_one_line_errors(arg, accepted, capsys, tmp_path):
    code = main(["train", "model=tiny", "dataset=eurosat", arg, f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {arg.split('=')[0]}=") and accepted in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------- 7. checkpoints load tensors only
class Payload:
    """Stands for any pickled object: with weights_only=False, unpickling it could run code."""


def test_a_checkpoint_carrying_a_pickled_object_is_refused(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(shapes_dir, out, "optim.max_epochs=2")) == 0
    good = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**good, "payload": Payload()}, evil)
    capsys.readouterr()
    assert main(["eval", str(out), "--checkpoint", str(evil)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds more than tensors" in err
    shutil.copy(evil, out / "checkpoints" / "last.ckpt")  # resume reads the same way
    (out / "result.json").unlink()
    assert main(_args(shapes_dir, out, "optim.max_epochs=2", "resume=true")) == 2
    assert "holds more than tensors" in capsys.readouterr().err


# --------------------------------------------------------------------------------- siblings found on the way
def test_a_few_shot_cache_from_another_split_is_refused(shapes_dir, tmp_path):
    from types import SimpleNamespace

    from prompt_tuning.data.fewshot_cache import cached_few_shot
    from prompt_tuning.errors import UserError

    splits = Folder(str(shapes_dir)).load()
    dataset = SimpleNamespace(fewshot_dir=tmp_path, root=str(shapes_dir))
    train, _ = cached_few_shot(dataset, splits["train"], splits["val"], 2, seed=1)  # drawn, cached as JSON
    assert cached_few_shot(dataset, splits["train"], splits["val"], 2, seed=1)[0] == train
    other_train = [it for it in splits["train"] if it.path != train[0].path]  # the split file changed
    with pytest.raises(UserError, match=r"does not match the dataset's train split: 1 of its 18 images"):
        cached_few_shot(dataset, other_train, splits["val"], 2, seed=1)
