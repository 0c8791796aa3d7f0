"""The run folder: a run's metrics do not depend on the feature cache, its output folder follows its seed and
shots under every method recipe, a failed setup or a run of another configuration leaves a finished run as it was
(unless overwrite), and a checkpoint that holds more than tensors is refused by eval and by resume."""

import json
import shutil

import pytest
import torch

from prompt_tuning.apps.cli import main
from prompt_tuning.config.compose import compose, group_options
from tests.conftest import method_configs


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


@pytest.mark.parametrize("protocol", group_options("protocol"))
@pytest.mark.parametrize("method", method_configs())
def test_output_dir_follows_seed_and_shots_for_every_method_and_protocol(method, protocol):
    cfg = compose([f"method={method}", f"protocol={protocol}", "dataset=eurosat", "model=tiny",
                   "protocol.shots=4", "seed=3"])
    assert cfg.output_dir.endswith(f"/eurosat/{method}/tiny/{protocol}/shots_4/seed_3")
    assert (cfg.protocol.shots, cfg.seed) == (4, 3)


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
