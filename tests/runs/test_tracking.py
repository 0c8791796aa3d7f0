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
    assert 100 * events.Scalars("test/acc")[-1].value == pytest.approx(result["metrics"]["acc"], abs=1e-4)
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
