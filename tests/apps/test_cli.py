"""The command line end to end: train writes result.json, eval reproduces it, errors are one line, the demo
learns."""

import json
import math

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.apps.demo import N_CLASSES, run_demo
from tests.conftest import TINY_ARCH


def _train_args(shapes_dir, out, *extra):
    return ["train", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=coop", "protocol=fewshot",
            "protocol.shots=4", "optim.max_epochs=2", "runtime.progress=false", f"output_dir={out}", *extra]


def test_train_writes_result_config_and_checkpoint_then_eval_reproduces(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(shapes_dir, out)) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "coop" and result["shots"] == 4 and result["seed"] == 1
    assert result["protocol"] == "fewshot" and result["epochs"] == 2
    acc = result["metrics"]["acc"]
    # the shapes test set holds 20 images of each of 9 classes: the accuracy counts whole images out of 180,
    # and with balanced classes the macro accuracy (mean per-class accuracy) is the accuracy itself
    assert math.isclose(acc * 180 / 100, round(acc * 180 / 100), abs_tol=1e-4), acc
    assert math.isclose(result["metrics"]["macro_acc"], acc, abs_tol=1e-4), result["metrics"]
    assert len(result["config_hash"]) == 12 and result["versions"]["torch"]
    assert (out / "config.yaml").read_text().startswith(f"# run hash: {result['config_hash']}")
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))

    capsys.readouterr()
    assert main(["eval", str(out), "runtime.progress=false"]) == 0
    printed = capsys.readouterr()
    again = json.loads(printed.out)  # stdout: the metrics alone
    assert math.isclose(again["acc"], result["metrics"]["acc"], abs_tol=1e-9)
    # ... and a record of what was measured, in the run folder
    record = json.loads((out / "eval" / "last.json").read_text())
    assert f"wrote {out / 'eval' / 'last.json'}" in printed.err
    assert record["metrics"] == again and record["checkpoint"] == str(out / "checkpoints" / "last.ckpt")
    assert record["trained_config_hash"] == result["config_hash"] and record["versions"]["torch"]
    assert record["overrides"] == ["runtime.progress=false"] and not list((out / "eval").glob(".*.tmp"))


def test_eval_keeps_a_result_per_checkpoint_and_overrides_and_its_progress_ends(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(shapes_dir, out, "optim.max_epochs=1")) == 0
    assert main(["eval", str(out), "seed=2", f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.progress=true"]) == 0
    err = capsys.readouterr().err
    bar = [state for state in err.replace("\r", "\n").splitlines() if state.startswith("image features")]
    assert bar and "100%" in bar[-1], bar  # the bar's last state is its end, left on screen
    assert json.loads((out / "eval" / "last-seed_2.json").read_text())["overrides"][0] == "seed=2"
    elsewhere = tmp_path / "kept" / "eval.json"
    assert main(["eval", str(out), "runtime.progress=false", "--out", str(elsewhere)]) == 0
    assert json.loads(elsewhere.read_text())["metrics"] == json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["last-seed_2.json"]
    assert main(["train", *_train_args(shapes_dir, out, "optim.max_epochs=1")[1:], "overwrite=true"]) == 0


def test_a_class_short_of_the_shots_is_recorded_in_the_result(tmp_path):
    from prompt_tuning.data.synthetic import make_shapes

    root = make_shapes(tmp_path / "short", n_train=3, n_val=1, n_test=2)
    split = json.loads((root / "split_shapes.json").read_text())
    split["train"] = [row for row in split["train"] if row[0] != "red_circle/0000.png"]  # red circle: 2 images
    (root / "split_shapes.json").write_text(json.dumps(split))
    out = tmp_path / "run"
    assert main(_train_args(root, out, "protocol.shots=3", "optim.max_epochs=1")) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["shots"] == 3 and result["short_classes"] == {"red circle": 2}
    assert main(_train_args(root, tmp_path / "full", "protocol.shots=2", "optim.max_epochs=1")) == 0
    assert "short_classes" not in json.loads((tmp_path / "full" / "result.json").read_text())


def test_same_config_and_seed_give_identical_metrics(shapes_dir, tmp_path):
    for name in ("a", "b"):
        assert main(_train_args(shapes_dir, tmp_path / name)) == 0
    a, b = (json.loads((tmp_path / n / "result.json").read_text())["metrics"] for n in "ab")
    assert a == b


def test_base2novel_reports_base_novel_and_harmonic_mean(shapes_dir, tmp_path):
    out = tmp_path / "b2n"
    args = _train_args(shapes_dir, out, "protocol=base2novel")
    assert main(args) == 0
    m = json.loads((out / "result.json").read_text())["metrics"]
    assert {"base_acc", "novel_acc", "hm"} <= set(m)
    assert math.isclose(m["hm"], 2 * m["base_acc"] * m["novel_acc"] / (m["base_acc"] + m["novel_acc"]))


def test_zeroshot_trains_nothing(shapes_dir, tmp_path):
    out = tmp_path / "zs"
    assert main(_train_args(shapes_dir, out, "method=zeroshot")) == 0
    assert json.loads((out / "result.json").read_text())["epochs"] == 0
    assert not (out / "checkpoints").exists()


def test_user_error_is_one_line_without_traceback(shapes_dir, tmp_path, capsys):
    assert main(_train_args(shapes_dir, tmp_path, "protocol.shots=abc")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: protocol.shots='abc': expected int") and "Traceback" not in err
    assert main(["train", "model=tiny", f"dataset={tmp_path / 'missing'}"]) == 2
    assert "dataset='" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(shapes_dir, tmp_path):
    from prompt_tuning.core.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", *_train_args(shapes_dir, tmp_path, "protocol.shots=abc")])


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


def test_print_config(shapes_dir, capsys):
    assert main(["train", "model=tiny", f"dataset={shapes_dir}", "--print-config"]) == 0
    assert "class_path: prompt_tuning.methods.contexts.coop.CoOp" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_coop_clearly_beats_chance_and_zero_shot(tmp_path):
    results = run_demo(tmp_path, log=lambda *a, **k: None)
    chance = 100 / N_CLASSES
    coop = results["coop (csc)"]["metrics"]["acc"]
    zeroshot = results["zeroshot"]["metrics"]["acc"]
    assert coop >= 3 * chance, (coop, chance)
    assert coop >= zeroshot + 15, (coop, zeroshot)
