"""Trackers through Lightning's loggers: TensorBoard event files and an offline W&B run hold the training loss,
the test accuracy and the config with its run hash; a missing tracker package is a one-line error."""

import importlib.util
import json

import pytest

from prompt_tuning.apps.cli import main


def _train(shapes_dir, out, *extra):
    return main(["train", "model=tiny", f"dataset={shapes_dir}", "method=coop", "protocol.shots=2",
                 "optim.max_epochs=2", "trainer.log_every_n_steps=1", "runtime.progress=false",
                 f"output_dir={out}", *extra])


def test_tensorboard_event_files_hold_loss_accuracy_and_config(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert _train(shapes_dir, out, "runtime.loggers=[csv,tensorboard]") == 0
    result = json.loads((out / "result.json").read_text())
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "test/acc" in scalars
    assert events.Scalars("test/acc")[-1].value == pytest.approx(result["metrics"]["acc"], abs=1e-4)  # percent
    hparams = (out / "tensorboard" / "hparams.yaml").read_text()
    assert f"run_hash: {result['config_hash']}" in hparams and "optim.lr: 0.002" in hparams
    assert (out / "logs" / "metrics.csv").is_file()  # csv as well, as asked


def test_wandb_offline_writes_its_run_folder(shapes_dir, tmp_path, monkeypatch):
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))  # nothing in ~/.cache or ~/.config
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert _train(shapes_dir, out, "runtime.loggers=[wandb]", "runtime.experiment=demo") == 0
    (run,) = list((out / "wandb").glob("offline-run-*"))
    (records,) = run.glob("run-*.wandb")  # the offline record log that `wandb sync` would upload
    data = records.read_bytes()
    result = json.loads((out / "result.json").read_text())
    assert b"train/loss" in data and b"test/acc" in data and result["config_hash"].encode() in data
    log = (run / "logs" / "debug.log").read_text()
    assert "'runtime.experiment': 'demo'" in log and "finishing run prompt-tuning/" in log  # grouped, closed


def test_an_unknown_or_missing_tracker_is_one_line(shapes_dir, tmp_path, capsys, monkeypatch):
    assert _train(shapes_dir, tmp_path / "a", "runtime.loggers=[mlflow]") == 2
    assert "unknown logger 'mlflow'; choose among csv, tensorboard, wandb" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert _train(shapes_dir, tmp_path / "b", "runtime.loggers=[wandb]") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[tracking]'" in err and "'wandb'" in err
    assert not (tmp_path / "b").exists()  # checked before anything was written


def test_a_sweep_groups_its_runs_under_the_experiment_name():
    from prompt_tuning.config.compose import compose
    from prompt_tuning.config.experiment import expand, load_experiment
    from tests.conftest import REPO

    runs = expand(load_experiment(REPO / "experiments" / "demo.yaml"))
    assert {compose(r.args).runtime.experiment for r in runs} == {"demo"}


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_metrics_csv_keeps_the_epochs_before_a_resume_and_says_it_resumed(shapes_dir, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.runs.test_resume_and_locks import KILL_SCRIPT, _args

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = ["trainer.log_every_n_steps=1"]
    assert main(["train", *_args(shapes_dir, whole, *extra)]) == 0
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *_args(shapes_dir, killed, *extra)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    before = _rows(killed / "logs" / "metrics.csv")
    assert {r["epoch"] for r in before if "train/loss" in r} == {"0", "1"}  # killed as epoch 3 began
    capsys.readouterr()
    assert main(["train", *_args(shapes_dir, killed, *extra), "resume=true"]) == 0
    assert f"resuming {killed} from epoch 3/4 (last.ckpt: 2 epochs done)" in capsys.readouterr().err
    a, b = _rows(whole / "logs" / "metrics.csv"), _rows(killed / "logs" / "metrics.csv")
    assert [r for r in b if "train/loss" in r] == [r for r in a if "train/loss" in r]  # epochs 0-3, same values
    assert {r["epoch"] for r in b if "train/loss" in r} == {"0", "1", "2", "3"}
    test_rows = [r for r in b if "test/acc" in r]
    result = json.loads((killed / "result.json").read_text())
    assert float(test_rows[-1]["test/acc"]) == pytest.approx(result["metrics"]["acc"], abs=1e-4)  # percent both


def test_tensorboard_holds_the_hparams_with_the_final_metrics(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "run"
    assert _train(shapes_dir, out, "runtime.loggers=[tensorboard]") == 0
    result = json.loads((out / "result.json").read_text())
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert events.Scalars("hparams/acc")[-1].value == pytest.approx(result["metrics"]["acc"], abs=1e-4)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["run_hash"].string_value == result["config_hash"]
    assert info.hparams["optim.lr"].number_value == pytest.approx(0.002)


def test_wandb_keeps_quiet_in_a_sweep_and_says_where_its_files_are(shapes_dir, tmp_path, monkeypatch, capfd):
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({
        "name": "quiet", "output": str(tmp_path / "out"),
        "args": ["model=tiny", f"dataset={shapes_dir}", "optim.max_epochs=1", "data.batch_size=8",
                 "runtime.loggers=[wandb]"],
        "grid": {"method": ["coop"], "protocol.shots": [1], "seed": [1, 2]},
    }))
    assert main(["sweep", str(exp)]) == 0
    out, err = capfd.readouterr()
    lines = (out + err).splitlines()
    assert not [ln for ln in lines if ln.startswith("wandb:")]
    said = [ln for ln in lines if ln.startswith("W&B: offline run under ")]
    assert len(said) == 2 and all("wandb sync" in ln for ln in said)
    assert len(list((tmp_path / "out").rglob("offline-run-*"))) == 2
