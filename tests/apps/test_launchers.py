"""Sweeps beyond one process: `--launcher local --jobs N`, `--launcher slurm` against a real local SLURM
(`scripts/slurm-local.sh start`, which `.ci/run` starts), and `--status`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from prompt_tuning.apps import sweep as sweep_mod
from prompt_tuning.apps.cli import main
from prompt_tuning.apps.launchers import parse_time
from prompt_tuning.runs.folder import RunFolder
from tests.conftest import REPO


def _experiment(tmp_path, shapes_dir, name, grid, args=()):
    broken = tmp_path / "broken.yaml"  # a method whose setup fails: its runs fail, the others must not
    broken.write_text("name: broken\ncontext:\n  class_path: prompt_tuning.methods.contexts.coop.CoOp\n"
                      "  init_args: {n_ctx: -3}\n")
    exp = tmp_path / f"{name}.yaml"
    methods = [str(broken) if m == "broken" else m for m in grid.pop("method")]
    exp.write_text(json.dumps({
        "name": name, "output": str(tmp_path / name),
        "args": ["model=tiny", "dataset=shapes", f"dataset.init_args.root={shapes_dir}", "optim.lr=0.02",
                 "optim.max_epochs=4", "runtime.progress=false", *args],
        "grid": {"method": methods, **grid},
    }))
    return exp


def _two_experiments(tmp_path, shapes_dir, grid, args=()):
    """The same grid as two experiments with their own output folders: one to run here, one elsewhere."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return (_experiment(tmp_path / "a", shapes_dir, "here", dict(grid), args),
            _experiment(tmp_path / "b", shapes_dir, "there", dict(grid), args))


def _metrics(folder: Path) -> dict:
    return {str(p.parent.relative_to(folder)): json.loads(p.read_text())["metrics"]
            for p in folder.rglob("result.json")}


def test_parse_time():
    assert parse_time("4:00:00") == 240
    assert parse_time("90") == 90
    assert parse_time("1-00:30") == 1470
    assert parse_time("10:30") == 11  # MM:SS, rounded up to whole minutes
    with pytest.raises(Exception, match="--time 'soon'"):
        parse_time("soon")


def test_status_shows_done_running_failed_and_missing(tmp_path, shapes_dir, capsys):
    exp = _experiment(tmp_path, shapes_dir, "st", {"method": ["zeroshot", "broken"], "seed": [1, 2, 3]})
    assert main(["sweep", str(exp), "--only", "seed=2"]) == 1  # the broken run fails, zeroshot finishes
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        locked = tmp_path / "st" / "shapes" / "zeroshot" / "tiny" / "fewshot" / "shots_16" / "seed_3"
        locked.mkdir(parents=True)
        (locked / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "job": "77_3",
                                                  "since": time.time() - 120}))
        capsys.readouterr()
        assert main(["sweep", str(exp), "--status"]) == 1  # a failed run: non-zero, as the sweep itself
        out = capsys.readouterr().out
    finally:
        holder.kill()
    assert "6 runs: 1 done, 1 running, 1 failed, 3 missing" in out
    lines = {ln.split("]")[1].split("(")[0].split("->")[0].strip(): ln for ln in out.splitlines() if "] " in ln}
    assert lines["method=zeroshot seed=2"].lstrip().startswith("[done")
    assert f"pid {holder.pid} on {os.uname().nodename}, SLURM job 77_3, for 2 min" in lines["method=zeroshot seed=3"]
    failed = next(v for k, v in lines.items() if "seed=2" in k and "broken" in k)
    assert "[failed " in failed and "n_ctx=-3: a context needs at least one vector" in failed
    assert sum("[missing]" in ln for ln in lines.values()) == 3
    folder = tmp_path / "st" / "shapes" / "broken" / "tiny" / "fewshot" / "shots_16" / "seed_2"
    record = json.loads((folder / RunFolder.ERROR).read_text())
    assert record["error"] == "method.context.init_args.n_ctx=-3: a context needs at least one vector"


def test_local_jobs_run_in_parallel_processes_with_the_numbers_of_one_process(tmp_path, shapes_dir, capsys):
    grid = {"method": ["zeroshot", "coop_csc", "broken"], "protocol.shots": [1, 2]}
    one, two = _two_experiments(tmp_path, shapes_dir, grid)
    assert main(["sweep", str(one)]) == 1
    capsys.readouterr()
    assert main(["sweep", str(two), "--launcher", "local", "--jobs", "2"]) == 1  # the broken runs fail
    out = capsys.readouterr().out
    assert "done: 4 ran, 0 were done, 2 failed" in out
    assert out.count("FAILED: method.context.init_args.n_ctx=-3: a context needs at least one vector") == 2
    a, b = _metrics(tmp_path / "a" / "here"), _metrics(tmp_path / "b" / "there")
    assert len(a) == 4 and a == b
    assert len(list((tmp_path / "b" / "there" / ".logs").glob("*.log"))) == 6
    # the second sweep has nothing left but the failed runs, which it tries again
    assert main(["sweep", str(two), "--launcher", "local", "--jobs", "2"]) == 1
    assert "4 done, 2 to run" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- SLURM
def _slurm_up() -> str | None:
    """Why no SLURM can be used here (None: it can)."""
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        return "SLURM_CONF is not set to a slurm.conf (start one: eval $(scripts/slurm-local.sh start))"
    if shutil.which("sbatch") is None:
        return "sbatch is not installed"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or "idle" not in out.stdout and "mix" not in out.stdout:
        return f"the SLURM node is not up: {out.stdout.strip()} {out.stderr.strip()}"
    return None


@pytest.fixture
def slurm():
    why = _slurm_up()
    if why:
        if os.environ.get("PT_REQUIRE_SLURM"):  # CI starts a cluster: its absence is a failure there
            pytest.fail(f"PT_REQUIRE_SLURM is set but {why}")
        pytest.skip(why)


SLURM_ARGS = ["--launcher", "slurm", "--gpus-per-run", "0", "--cpus-per-run", "1", "--time", "10"]


@pytest.mark.slow
def test_slurm_sweep_gives_the_local_results_and_a_failing_run_stops_nothing(tmp_path, shapes_dir, slurm, capsys):
    grid = {"method": ["coop_csc", "broken"], "protocol.shots": [1, 2]}
    local, on_slurm = _two_experiments(tmp_path, shapes_dir, grid)
    assert main(["sweep", str(local)]) == 1
    capsys.readouterr()
    assert main(["sweep", str(on_slurm), *SLURM_ARGS]) == 1
    out = capsys.readouterr().out
    assert "submitted 4 runs as SLURM job array" in out
    assert "done: 2 ran, 0 were done, 2 failed" in out
    assert _metrics(tmp_path / "a" / "here") == _metrics(tmp_path / "b" / "there") != {}
    assert main(["sweep", str(on_slurm), "--status"]) == 1
    status = capsys.readouterr().out
    assert "4 runs: 2 done, 2 failed" in status
    assert status.count("n_ctx=-3: a context needs at least one vector") == 2
    assert list((tmp_path / "b" / "there" / ".slurm").glob("*/*_log.out"))  # the tasks' logs are kept


@pytest.mark.slow
def test_a_cancelled_slurm_task_fails_and_the_next_submission_resumes_it(tmp_path, shapes_dir, slurm, capsys):
    args = ["optim.max_epochs=150", "data.batch_size=4"]
    grid = {"method": ["coop_csc"], "protocol.shots": [2]}
    local, on_slurm = _two_experiments(tmp_path, shapes_dir, grid, args)
    run = tmp_path / "b" / "there" / "shapes" / "coop_csc" / "tiny" / "fewshot" / "shots_2" / "seed_1"
    first: dict = {}
    sweeping = threading.Thread(target=lambda: first.update(code=main(["sweep", str(on_slurm), *SLURM_ARGS])))
    sweeping.start()
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline:
        time.sleep(0.1)
    assert (run / "checkpoints" / "last.ckpt").is_file(), "the task never wrote a checkpoint"
    lock = json.loads((run / ".lock").read_text())
    assert lock.get("job"), lock  # the lock names the SLURM task holding the run
    subprocess.run(["scancel", lock["job"]], check=True)
    sweeping.join(timeout=300)
    assert first["code"] == 1
    assert RunFolder(run).result() is None
    capsys.readouterr()
    main(["sweep", str(on_slurm), "--status"])
    status = capsys.readouterr().out
    assert "[failed " in status and "by SIGTERM (cancelled, preempted or out of time, on SLURM); the next " \
        "sweep continues it from its last checkpoint" in status  # the task's own record, not "[missing]"
    assert RunFolder(run).error()["job"] == lock["job"]
    (err,) = (tmp_path / "b" / "there" / ".slurm").glob(f"*/{lock['job']}_0_log.err")
    text = err.read_text()
    ours = [ln for ln in text.splitlines() if ln.startswith("error:")]  # SLURM's own lines follow it
    assert "Traceback" not in text and len(ours) == 1 and ours[0].startswith(f"error: run {run}: interrupted at")

    assert main(["sweep", str(on_slurm), *SLURM_ARGS]) == 0  # the next submission continues the run
    resumed = RunFolder(run).result()
    assert resumed["resumed_at_epoch"] >= 1
    assert not (run / RunFolder.ERROR).exists()
    assert main(["sweep", str(local)]) == 0
    assert resumed["metrics"] == next(iter(_metrics(tmp_path / "a" / "here").values()))


SIGTERM_AT_EPOCH_2 = textwrap.dedent("""
    import os, signal, sys
    import pytorch_lightning as pl
    from prompt_tuning.runs import runner
    from prompt_tuning.apps.launchers import slurm_task

    class Term(pl.Callback):  # as scancel, a preemption or the time limit: SIGTERM while training
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    make = runner.make_trainer
    runner.make_trainer = lambda *a, **k: (lambda t: (t.callbacks.append(Term()), t)[1])(make(*a, **k))
    slurm_task(sys.argv[1], 0)
""")


def test_an_interrupted_task_leaves_its_failure_record_and_one_line(tmp_path, shapes_dir, capsys):
    exp = _experiment(tmp_path, shapes_dir, "term", {"method": ["coop_csc"]},
                      ["optim.max_epochs=3", "protocol.shots=1", "data.batch_size=4"])
    task = subprocess.run([sys.executable, "-c", SIGTERM_AT_EPOCH_2, str(exp)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    run = tmp_path / "term" / "shapes" / "coop_csc" / "tiny" / "fewshot" / "shots_1" / "seed_1"
    line = ("interrupted at epoch 2/3 by SIGTERM (cancelled, preempted or out of time, on SLURM); the next sweep "
            "continues it from its last checkpoint")
    assert task.returncode == 143 == 128 + signal.SIGTERM, task.stderr
    assert "Traceback" not in task.stderr and task.stderr.strip().splitlines()[-1] == f"error: run {run}: {line}"
    record = RunFolder(run).error()
    assert record["error"] == line and record["interrupted"] is True
    assert main(["sweep", str(exp), "--status"]) == 1
    status = capsys.readouterr().out
    assert "1 runs: 1 failed" in status and f"[failed ] method=coop_csc  ({line})" in status
    assert main(["sweep", str(exp)]) == 0  # the next sweep continues it, and the record goes
    assert RunFolder(run).result()["resumed_at_epoch"] == 1 and RunFolder(run).error() is None


def test_a_sweep_resumes_a_run_only_from_a_checkpoint_of_its_configuration(tmp_path, shapes_dir):
    from prompt_tuning.apps.grid import compose_run
    from prompt_tuning.config.experiment import expand, load_experiment
    from prompt_tuning.config.hashing import run_hash

    (run,) = expand(load_experiment(_experiment(tmp_path, shapes_dir, "res", {"method": ["coop"]})))
    folder = RunFolder(compose_run(run).cfg.output_dir)
    folder.path.mkdir(parents=True)
    (folder.path / "config.yaml").write_text(f"# run hash: {run_hash(compose_run(run).cfg)}\n")
    assert compose_run(run).cfg.resume is False  # killed before its first checkpoint: it starts again
    folder.last_checkpoint.parent.mkdir()
    folder.last_checkpoint.write_bytes(b"")
    assert compose_run(run).cfg.resume is True


def test_sweep_run_states_feed_the_status_of_the_api(tmp_path, shapes_dir):
    exp = _experiment(tmp_path, shapes_dir, "api", {"method": ["zeroshot"], "seed": [1]})
    counts = sweep_mod.report(exp, log=lambda m: None)
    assert counts == {"done": 0, "running": 0, "failed": 0, "missing": 1, "changed": 0}


def test_overwrite_reaches_the_runs_of_a_launcher(tmp_path, shapes_dir, capsys):
    exp = _experiment(tmp_path, shapes_dir, "ow", {"method": ["zeroshot"], "seed": [1, 2]})
    assert main(["sweep", str(exp)]) == 0
    capsys.readouterr()
    # another configuration of the same runs (the experiment's own args changed: command-line overrides would tag
    # other folders): kept without --overwrite, replaced with it, in the worker processes
    exp = _experiment(tmp_path, shapes_dir, "ow", {"method": ["zeroshot"], "seed": [1, 2]}, ["optim.lr=0.5"])
    assert main(["sweep", str(exp), "--launcher", "local", "--jobs", "2"]) == 0
    assert "2 finished under another configuration (kept" in capsys.readouterr().out
    assert main(["sweep", str(exp), "--launcher", "local", "--jobs", "2", "--overwrite"]) == 0
    assert "done: 2 ran, 0 were done, 0 failed" in capsys.readouterr().out
    lrs = [json.loads((p.parent / "config.yaml").read_text().split("\n", 1)[1].split("lr: ")[1].split()[0])
           for p in (tmp_path / "ow").rglob("result.json")]
    assert lrs == [0.5, 0.5]


@pytest.mark.slow
def test_a_run_on_two_devices_runs_as_two_slurm_tasks(tmp_path, shapes_dir, slurm, monkeypatch, capsys):
    # Lightning reads the ranks from SLURM; on a real cluster MASTER_ADDR is the first node's name, which here
    # does not resolve (the node is called ptnode and lives at 127.0.0.1)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    ddp = ["trainer.accelerator=cpu", "data.batch_size=8", "protocol.shots=4"]
    grid = {"method": ["coop"], "trainer.devices": [2]}
    here, there = _two_experiments(tmp_path, shapes_dir, grid, ddp)
    assert main(["sweep", str(there), *SLURM_ARGS]) == 0
    assert "done: 1 ran" in capsys.readouterr().out
    logs = sorted(p.name for p in (tmp_path / "b" / "there" / ".slurm").glob("*/*_log.out"))
    assert len(logs) == 2  # one task per device
    one = tmp_path / "one"
    assert main(["train", "model=tiny", "dataset=shapes", f"dataset.init_args.root={shapes_dir}", "optim.lr=0.02",
                 "optim.max_epochs=4", "runtime.progress=false", "method=coop", *ddp, f"output_dir={one}"]) == 0
    import torch

    (run,) = (tmp_path / "b" / "there").rglob("result.json")
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["method.ctx"]
    b = torch.load(run.parent / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["method.ctx"]
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()  # two devices give the one-device numbers, here through SLURM
    assert json.loads(run.read_text())["metrics"] == RunFolder(one).result()["metrics"]


def test_the_slurm_launcher_refuses_before_writing_anything_where_there_is_no_slurm(tmp_path, shapes_dir,
                                                                                    monkeypatch, capsys):
    if Path("/etc/slurm/slurm.conf").is_file():
        pytest.skip("this machine has a system-wide SLURM")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    exp = _experiment(tmp_path, shapes_dir, "none", {"method": ["zeroshot"]})
    assert main(["sweep", str(exp), "--launcher", "slurm"]) == 2
    assert "--launcher slurm: no SLURM here" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_lock_from_another_host_is_stale_once_its_slurm_job_has_left_the_queue(tmp_path, slurm):
    from prompt_tuning.core.locks import FileLock

    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 60"], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout.strip()
    try:
        (tmp_path / ".lock").write_text(json.dumps({"host": "another-node", "pid": 1, "job": job}))
        assert FileLock(tmp_path).holder()["job"] == job  # its job is queued: the lock holds
    finally:
        subprocess.run(["scancel", job], check=True)
    deadline = time.time() + 30
    while FileLock(tmp_path).holder() is not None and time.time() < deadline:
        time.sleep(0.2)
    assert FileLock(tmp_path).holder() is None  # the job has gone: the lock is stale
    (tmp_path / ".lock").write_text(json.dumps({"host": "another-node", "pid": 1}))
    assert FileLock(tmp_path).holder() is not None  # no job to ask about: respected


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its exit status waits to be read


def test_the_workers_of_a_killed_sweep_die_with_it(tmp_path, shapes_dir):
    exp = _experiment(tmp_path, shapes_dir, "orphans", {"method": ["coop"], "seed": [1, 2]},
                      ["optim.max_epochs=100000"])  # far longer than the test
    sweep = subprocess.Popen([sys.executable, "-m", "prompt_tuning.apps.cli", "sweep", str(exp), "--launcher",
                              "local", "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, pids = time.time() + 120, []
        while len(pids) < 2 and time.time() < deadline and sweep.poll() is None:
            time.sleep(0.5)
            locks = list((tmp_path / "orphans").rglob(".lock"))
            pids = [json.loads(p.read_text())["pid"] for p in locks if p.stat().st_size]
        assert len(pids) == 2, "both workers started training"
        assert all(_alive(pid) for pid in pids)
    finally:
        sweep.kill()
        sweep.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids), "a worker kept training after its sweep was killed"


def test_two_parallel_sweeps_on_one_folder_count_each_run_once(tmp_path, shapes_dir):
    exp = _experiment(tmp_path, shapes_dir, "both", {"method": ["zeroshot"], "seed": [1, 2, 3, 4]})
    cmd = [sys.executable, "-m", "prompt_tuning.apps.cli", "sweep", str(exp), "--launcher", "local", "--jobs", "2"]
    sweeps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [s.communicate(timeout=600)[0] for s in sweeps]
    summaries = [next(ln for ln in out.splitlines() if ln.startswith("done: ")) for out in outs]
    ran = [int(s.split()[1]) for s in summaries]
    assert sum(ran) == 4, summaries  # each run trained by one sweep, and counted by that one only
    assert len(list((tmp_path / "both").rglob("result.json"))) == 4
