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
    again = json.loads(capsys.readouterr().out)
    assert math.isclose(again["acc"], result["metrics"]["acc"], abs_tol=1e-9)


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
