"""Crash safety and concurrency of a run: a run killed by a signal resumes to the numbers of an uninterrupted
run; a checkpoint of another configuration is not resumed; run folders are locked and stale locks are taken over."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.core.locks import Busy, FileLock
from tests.conftest import REPO, TINY_ARCH


def _args(shapes_dir, out, *extra):
    return [f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method=coop", "protocol.shots=4",
            "optim.max_epochs=4", "data.batch_size=8", "runtime.progress=false", f"output_dir={out}", *extra]


KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import pytorch_lightning as pl
    from prompt_tuning.runs import runner
    from prompt_tuning.config.compose import compose

    class KillAfterEpoch(pl.Callback):  # SIGKILL as epoch 3 starts (epoch 2's checkpoint is written)
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    make = runner.make_trainer
    def make_and_kill(*a, **k):
        trainer = make(*a, **k)
        trainer.callbacks.append(KillAfterEpoch())
        return trainer
    runner.make_trainer = make_and_kill
    runner.train(compose(sys.argv[1:]))
''')

# the 2-block tiny CLIP: deep-prompt methods get a prompt depth that fits it (and PromptSRC's prompt average over
# epochs a mean within the 4 epochs: the paper's 15 is refused)
DEPTH_2 = {
    "maple": ["method.context.init_args.depth=2"],
    "promptsrc": ["method.context.init_args.depth_text=2", "method.context.init_args.depth_vision=2",
                  "method.averaging.init_args.mean=3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["coop", "bayesian", "maple", "promptsrc", "tip_adapter_f"])
def test_killed_run_resumes_to_the_numbers_of_an_uninterrupted_run(shapes_dir, tmp_path, method):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = [f"method={method}", *DEPTH_2.get(method, [])]
    assert main(["train", *_args(shapes_dir, whole, *extra)]) == 0

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *_args(shapes_dir, killed, *extra)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoints" / "last.ckpt").is_file()
    assert not (killed / "result.json").exists()  # nothing half-written, no result for an unfinished run

    assert main(["train", *_args(shapes_dir, killed, *extra), "resume=true"]) == 0  # the stale lock is taken over
    a = json.loads((whole / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert a["config_hash"] == b["config_hash"]


def test_resume_refuses_a_checkpoint_of_another_configuration(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(shapes_dir, out)]) == 0
    (out / "result.json").unlink()  # as if killed after its last checkpoint
    assert main(["train", *_args(shapes_dir, out, "optim.lr=0.01"), "resume=true"]) == 2
    assert "written by another configuration" in capsys.readouterr().err


def test_a_live_lock_is_respected_and_a_stale_one_taken_over(tmp_path):
    run = tmp_path / "run"
    with FileLock(run), pytest.raises(Busy, match=f"is being trained by pid {os.getpid()}"):
        FileLock(run).acquire()
    assert not (run / ".lock").exists() and not run.exists()  # released; the empty folder it made is gone

    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"host": FileLock(run).owner["host"], "pid": dead.pid}))
    with FileLock(run):  # stale: its owner is gone
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


def test_training_a_locked_run_is_a_clear_error(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with FileLock(out):
        assert main(["train", *_args(shapes_dir, out)]) == 2
    assert "is being trained by pid" in capsys.readouterr().err
