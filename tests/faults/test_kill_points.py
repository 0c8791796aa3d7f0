"""A run killed (SIGKILL) at a write of each kind of file it makes (a checkpoint, the result, the lock, a feature
cache entry), after the temporary file is whole and before its rename, leaves nothing half-written: run again
(resuming), it ends with the numbers of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.runs.checkpoints import load_checkpoint
from prompt_tuning.runs.folder import RunFolder
from tests.conftest import REPO
from tests.faults.conftest import run_args

KILLER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    target, nth = sys.argv[1], int(sys.argv[2])
    calls = []
    def killing(real):
        def call(src, dst, *a, **k):
            if Path(dst).name == target or (target.startswith("*") and str(dst).endswith(target[1:])):
                calls.append(dst)
                if len(calls) == nth:
                    os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is whole, its rename not done
            return real(src, dst, *a, **k)
        return call
    os.replace, os.link = killing(os.replace), killing(os.link)
    from prompt_tuning.apps.cli import main
    sys.exit(main(sys.argv[3:]))
''')


@pytest.fixture(scope="module")
def uninterrupted(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    cache = tmp_path_factory.mktemp("cache-whole")
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    return json.loads((out / "result.json").read_text())["metrics"]


def _killed(shapes_dir, out, cache, target: str, nth: int):
    proc = subprocess.run([sys.executable, "-c", KILLER, target, str(nth),
                           *run_args(shapes_dir, out, f"runtime.cache_dir={cache}")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("target, nth", [("last.ckpt", 2), ("result.json", 1), (".lock", 1), ("*.pt", 1)],
                         ids=["checkpoint", "result", "lock", "cache entry"])
def test_a_kill_at_a_write_loses_nothing_and_the_run_resumes_exactly(shapes_dir, tmp_path, uninterrupted, target,
                                                                      nth):
    out, cache = tmp_path / "run", tmp_path / "cache"
    _killed(shapes_dir, out, cache, target, nth)
    folder = RunFolder(out)
    assert not (out / "result.json").exists()  # never half a result, and no result of an unfinished run
    again = []
    if folder.last_checkpoint.exists():
        load_checkpoint(folder.last_checkpoint)  # whole: it loads, and its digest checks out
        again = ["resume=true"]  # resume=true without a checkpoint is refused: nothing to continue
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}", *again)) == 0
    assert json.loads((out / "result.json").read_text())["metrics"] == uninterrupted


@pytest.mark.slow
def test_a_finished_run_begun_again_and_killed_leaves_no_stale_result(shapes_dir, tmp_path, uninterrupted):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    _killed(shapes_dir, out, cache, "last.ckpt", 1)  # trained again (no resume), killed at its first checkpoint
    assert not (out / "result.json").exists()  # the old result would describe a checkpoint no longer there
    assert not RunFolder(out).last_checkpoint.exists()  # the old run's checkpoints went when it began again
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    assert json.loads((out / "result.json").read_text())["metrics"] == uninterrupted
