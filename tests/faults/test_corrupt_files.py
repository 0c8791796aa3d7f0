"""Every kind of file the toolkit reads, damaged: each ends in exact recovery (the file is rebuilt or taken over
and the numbers are those of a clean run) or in a one-line refusal naming the file; never a traceback, never a
number computed from damaged bytes."""

import json
import pickle
import shutil

import pytest
import torch

from prompt_tuning.apps.cli import main
from prompt_tuning.runs.folder import RunFolder
from tests.faults.conftest import run_args
from tests.helpers import one_line


def _metrics(out):
    return json.loads((out / "result.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def clean(shapes_dir, tmp_path_factory):
    """A finished run (its folder and the metrics of a clean run) and its feature cache."""
    out, cache = tmp_path_factory.mktemp("clean") / "run", tmp_path_factory.mktemp("cache")
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    return out, cache, _metrics(out)


def _copy(clean, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(clean[0], out)
    return out


def _flip(path, at: float = 0.8):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


CHECKPOINTS = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flipped bytes": _flip,
    "random bytes": lambda p: p.write_bytes(bytes(range(256)) * 40),
    "a pickle that runs code": lambda p: p.write_bytes(pickle.dumps(shutil.rmtree, protocol=2)),
    "text": lambda p: p.write_text("not a checkpoint"),
}
REFUSAL = {"empty": "is empty", "truncated": "cannot be read", "flipped bytes": "is damaged",
           "random bytes": "is damaged or not a checkpoint", "a pickle that runs code": "could run code",
           "text": "is damaged or not a checkpoint"}


@pytest.mark.parametrize("damage", CHECKPOINTS)
def test_a_damaged_checkpoint_is_refused_on_eval_and_on_resume(clean, shapes_dir, tmp_path, capsys, damage):
    out = _copy(clean, tmp_path)
    CHECKPOINTS[damage](RunFolder(out).last_checkpoint)
    assert main(["eval", str(out)]) == 2
    assert REFUSAL[damage] in one_line(capsys)
    (out / "result.json").unlink()
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={clean[1]}", "resume=true")) == 2
    assert REFUSAL[damage] in one_line(capsys)


def test_a_damaged_cache_entry_is_built_again_and_changes_no_number(clean, shapes_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(clean[1], cache)
    entries = sorted(cache.rglob("*.pt"))
    assert entries
    for entry in entries:
        _flip(entry, 0.9)
    out = tmp_path / "run"
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    assert f"entry {entries[0].stem[:8]} is damaged: built again" in capsys.readouterr().err
    assert _metrics(out) == clean[2]


@pytest.mark.parametrize("content", [b"", b"\x89\xff\xfe garbage \x00", b"[1, 2]", b'{"pid": "x"}'],
                         ids=["empty", "binary", "not a mapping", "bad pid"])
def test_a_damaged_lock_is_taken_over(clean, shapes_dir, tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_bytes(content)
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={clean[1]}")) == 0
    assert "is damaged (empty or unreadable): taken as stale" in capsys.readouterr().err
    assert _metrics(out) == clean[2] and not (out / ".lock").exists()


def test_a_damaged_result_counts_as_absent_everywhere(clean, shapes_dir, tmp_path, capsys):
    out = _copy(clean, tmp_path / "runs")
    (out / "result.json").write_text("{ not json")
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={clean[1]}")) == 0  # the run is done again
    assert "result.json is damaged (not a JSON record" in capsys.readouterr().err
    assert _metrics(out) == clean[2]
    (out / "result.json").write_text("[]")
    assert main(["table", str(tmp_path / "runs")]) == 2  # nothing readable: one line, the damaged file said
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no result.json under" in err


def test_a_damaged_config_or_error_record_is_one_line_or_ignored(clean, shapes_dir, tmp_path, capsys):
    out = _copy(clean, tmp_path)
    (out / "config.yaml").write_text("model: [unclosed\n")
    assert main(["eval", str(out)]) == 2
    assert "config.yaml:2:1: YAML syntax error" in one_line(capsys) or "config.yaml" in one_line(capsys)
    (out / "error.json").write_bytes(b"\xff\xfe")
    assert RunFolder(out).error() is None  # a damaged error record is no record


def test_a_hand_edited_few_shot_file_is_refused(shapes_dir, tmp_path, capsys):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    assert main(run_args(data, tmp_path / "first", "optim.max_epochs=1")) == 0  # draws and writes shot_4-seed_1
    (cached,) = (data / "split_fewshot").glob("shot_4-seed_1.json")
    raw = json.loads(cached.read_text())
    every = [[f"images/{path}", label, name]  # the whole train split: 16 per class
             for path, label, name in json.loads((data / "split_shapes.json").read_text())["train"]]
    assert raw["train"][0] in every
    for edit, why in [(lambda r: r["train"].append(r["train"][0]), "more than once"),
                      (lambda r: r.__setitem__("train", every), "the protocol asks for 4"),
                      (lambda r: r["train"].pop(), "the protocol asks for 4"),
                      (lambda r: r.__setitem__("train", "oops"), "is damaged")]:
        broken = json.loads(json.dumps(raw))
        edit(broken)
        cached.write_text(json.dumps(broken))
        assert main(run_args(data, tmp_path / "again", "optim.max_epochs=1")) == 2
        assert why in one_line(capsys)


@pytest.mark.parametrize("payload", [["not", "a", "dict"], {"train": [object()]}], ids=["a list", "other objects"])
def test_a_reference_pickle_of_another_shape_is_one_line(shapes_dir, tmp_path, capsys, payload):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    (data / "split_fewshot").mkdir(exist_ok=True)
    try:
        blob = pickle.dumps(payload)
    except (pickle.PicklingError, TypeError):
        blob = pickle.dumps({"train": [1, 2]})
    (data / "split_fewshot" / "shot_4-seed_1.pkl").write_bytes(blob)
    assert main(run_args(data, tmp_path / "run", "optim.max_epochs=1")) == 2
    assert "few-shot cache" in one_line(capsys)


def test_a_zero_byte_image_is_one_line_and_leaves_no_config_behind(shapes_dir, tmp_path, capsys):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    split = json.loads(next(data.glob("split_*.json")).read_text())
    (data / "images" / split["train"][0][0]).write_bytes(b"")
    out = tmp_path / "run"
    assert main(run_args(data, out, "runtime.feature_cache=false", "protocol.shots=-1")) == 2
    assert "cannot read image" in one_line(capsys)
    assert not (out / "config.yaml").exists()


def test_a_damaged_architecture_file_and_split_file_are_one_line(shapes_dir, tmp_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text("{ broken")
    assert main(["train", f"model={arch}", f"dataset={shapes_dir}", f"output_dir={tmp_path / 'a'}"]) == 2
    assert "is not valid JSON" in one_line(capsys)
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    next(data.glob("split_*.json")).write_bytes(b"\x00\x01 not json")
    assert main(run_args(data, tmp_path / "b")) == 2
    assert "is not valid JSON" in one_line(capsys)


def test_a_damaged_head_file_is_one_line(tmp_path, capsys):
    head = tmp_path / "head.safetensors"
    head.write_bytes(torch.randn(100).numpy().tobytes())
    from prompt_tuning.apps.export import load_head
    from prompt_tuning.core.errors import UserError

    with pytest.raises(UserError, match="is not a head file"):
        load_head(head)
