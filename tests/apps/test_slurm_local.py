"""`scripts/slurm-local.sh stop` on a shared machine: it ends the daemons whose pid files are in its state folder
and the job steps working in that folder (with their tasks), and nothing else: another user's `slurmstepd`,
`slurmd` or `munged`, and a pid that a pid file names but that now runs another program, are left alone.

The processes are stand-ins (copies of ``sleep`` under the daemons' names), so no SLURM is needed; a real cluster
is started, used and stopped by `.ci/run`."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "slurm-local.sh"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("pgrep") is None,
                                reason="reads /proc and needs pgrep")


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop(state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    return subprocess.run(["bash", str(SCRIPT), "stop"], env={**env, "SLURM_LOCAL_DIR": str(state)},
                          capture_output=True, text=True, timeout=60)


def test_stop_ends_only_what_the_cluster_started(tmp_path):
    state, other, bin_ = tmp_path / "state", tmp_path / "elsewhere", tmp_path / "bin"
    for folder in (state / "log", other, bin_):
        folder.mkdir(parents=True)
    for name in ("slurmctld", "slurmd", "munged", "slurmstepd", "python3", "sleep"):
        shutil.copy(shutil.which("sleep"), bin_ / name)
    procs: list[subprocess.Popen] = []

    def start(name: str, argv0: str, cwd: Path, before: str = "") -> int:
        """A process whose name is ``name`` and whose command line starts with ``argv0``, working in ``cwd``."""
        procs.append(subprocess.Popen(["bash", "-c", f'{before}exec -a "{argv0}" {bin_ / name} 600'], cwd=cwd,
                                      start_new_session=True))
        return procs[-1].pid

    ours = {  # as the script starts them: command lines naming the state folder, a job step working in its log/
        "slurmctld": start("slurmctld", f"slurmctld -f {state}/slurm.conf", other),
        "slurmd": start("slurmd", f"slurmd -f {state}/slurm.conf -N ptnode", other),
        "munged": start("munged", f"munged --force --pid-file={state}/munged.pid", other),
        "step": start("slurmstepd", "slurmstepd: [3.batch]", state / "log", before=f"{bin_}/sleep 600 & "),
    }
    foreign = {  # another cluster's step and daemons; a program that got the pid of a stale pid file
        "step": start("slurmstepd", "slurmstepd: [3.batch]", other),
        "slurmd": start("slurmd", f"slurmd -f {other}/slurm.conf", other),
        "munged": start("munged", "munged", other),
        "reused": start("python3", "python3 train.py", other),
    }
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "slurmctld.pid").write_text(f"{foreign['reused']}\n")
    try:
        for name in ("slurmctld", "slurmd", "munged"):
            (state / f"{name}.pid").write_text(f"{ours[name]}\n")
        for _ in range(50):
            task = subprocess.run(["pgrep", "-P", str(ours["step"])], capture_output=True, text=True).stdout.split()
            if task:
                break
            time.sleep(0.1)
        assert len(task) == 1, "the job step's task did not start"
        ours["task"] = int(task[0])

        out = stop(state)
        assert out.returncode == 0 and out.stderr.strip().endswith("stopped"), out.stderr
        assert stop(stale).returncode == 0
        for proc in procs:
            proc.poll()  # reap our own children
        assert {name: gone(pid) for name, pid in ours.items()} == dict.fromkeys(ours, True)
        assert {name: gone(pid) for name, pid in foreign.items()} == dict.fromkeys(foreign, False)
        assert not state.exists() and not stale.exists()
        again = stop(state)
        assert again.returncode == 0 and "nothing to stop" in again.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if "task" in ours and not gone(ours["task"]):
            os.kill(ours["task"], 9)
