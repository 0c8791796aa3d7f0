"""Where a sweep's runs execute: N processes at a time on this machine, or a SLURM job array (via submitit).

Every launcher runs each run through `task`, which composes run number ``index`` of the experiment exactly as
the sweep does and calls `prompt_tuning.apps.grid.run_one` (the code path of ``prompt-tuning train``). So results,
locks, resume by hash and tables are the same whichever launcher ran a run.

Run one task by hand: ``python -m prompt_tuning.apps.launchers EXPERIMENT INDEX [key=value ...]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from prompt_tuning.apps.grid import compose_run, run_one, status
from prompt_tuning.apps.logs import log_to_stderr
from prompt_tuning.config.experiment import expand, load_experiment, with_overrides
from prompt_tuning.core.errors import UserError
from prompt_tuning.core.locks import Busy, squeue
from prompt_tuning.runs.folder import RunFolder


def task(experiment: str, index: int, overrides: list[str] = (), cwd: str | None = None,
         progress: bool = False) -> dict | None:
    """Run number ``index`` (in the experiment's full grid order) of ``experiment`` with the sweep's
    ``overrides``; the entry point of a local process or a SLURM task. None when it needs no running (done, or
    another process has it)."""
    from prompt_tuning.runs.trainer import quiet_lightning, rank

    if cwd:
        os.chdir(cwd)  # relative paths of the experiment (output, data.root) mean what they meant at submission
    quiet_lightning()
    exp = load_experiment(experiment)
    exp = with_overrides(exp, overrides)
    runs = {run.index: run for run in expand(exp)}
    if index not in runs:
        raise UserError(f"experiment {experiment} has no run {index} (it has {len(runs)})")
    composed = compose_run(runs[index], progress=progress)
    if rank() > 0:  # a further process of a multi-device run: its rank 0 holds the lock
        return run_one(composed.cfg, composed.sources)
    if status(composed.cfg) in ("done", "running"):
        return None
    try:
        return run_one(composed.cfg, composed.sources)
    except Busy:  # another process took the run meanwhile
        return None


def _said_interruption(e: BaseException) -> int:
    """Print an interruption's one line (the run's failure record, which `grid.run_one` notes on it) and return
    the exit code of its signal: 143 for SIGTERM, 130 for Ctrl-C and the rest."""
    print(f"error: {(getattr(e, '__notes__', None) or [str(e) or 'interrupted'])[-1]}", file=sys.stderr)
    return 143 if getattr(e, "signal", "") == "SIGTERM" else 130


def slurm_task(experiment: str, index: int, overrides: list[str] = (), cwd: str | None = None,
               progress: bool = False) -> dict | None:
    """`task` as a SLURM task runs it: a user error or an interruption (SIGTERM from ``scancel``, preemption or
    the time limit; submitit's own timeout) ends the task with one line on stderr (its ``.err`` log) and an exit
    code, not a traceback; the run's failure record (``error.json``) says the same for ``sweep --status``."""
    try:
        return task(experiment, index, overrides, cwd, progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, SystemExit) as e:
        raise SystemExit(_said_interruption(e)) from None
    except Exception as e:
        if type(e).__name__ != "UncompletedJobError":  # submitit's: out of time, and not checkpointable
            raise
        print(f"error: SLURM task {os.environ.get('SLURM_JOB_ID', '?')}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


# ----------------------------------------------------------------------------------------------- local
@dataclass
class Local:
    """``--launcher local --jobs N``: N runs at a time on this machine. N worker processes each run one run after
    another (a run's start-up costs no new interpreter), with the CPU cores shared out (``torch.set_num_threads``)
    and one GPU each where there are GPUs (CUDA_VISIBLE_DEVICES). A run on several devices (``trainer.devices``)
    gets a process of its own instead, since DDP starts its further processes by re-running that command. Each
    run's output goes to ``<output>/.logs/<index>.log``."""

    jobs: int = 1
    poll: float = 0.2

    def run(self, experiment: str, overrides: list[str], todo: list, output: Path, log, name: str = ""
            ) -> dict[int, str | None]:
        """Run ``todo`` (runs with ``index``, ``cfg`` and ``describe()``); returns index -> None (ran) or the
        error."""
        import torch

        logs = output / ".logs"
        logs.mkdir(parents=True, exist_ok=True)
        gpus = [str(g) for g in range(torch.cuda.device_count())]
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        if any(int(run.cfg.trainer.devices) > 1 for run in todo):
            return self._processes(experiment, overrides, todo, logs, log, gpus, threads)
        return self._pool(experiment, overrides, todo, logs, log, gpus, threads)

    def _pool(self, experiment, overrides, todo, logs, log, gpus, threads) -> dict[int, str | None]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        import torch

        # forked workers start at once with everything imported; after CUDA is initialised only spawn is safe
        ctx = multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else "fork")
        devices = ctx.Queue()
        for i in range(self.jobs):
            devices.put(gpus[i % len(gpus)] if gpus else None)
        outcome, started = {}, time.time()
        pool = ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_worker_init,
                                   initargs=(devices, threads, os.getcwd()))
        try:
            futures = {pool.submit(_pool_task, experiment, run.index, list(overrides), str(logs / f"{run.index}.log")):
                       run for run in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run = futures[future]
                    try:
                        outcome[run.index] = future.result()
                    except Exception as e:  # noqa: BLE001 - a worker that died (killed, out of memory)
                        outcome[run.index] = f"its process died ({type(e).__name__}); log {logs / f'{run.index}.log'}"
                    log(_finished_line(run, outcome[run.index], len(outcome), len(todo), started))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return outcome

    def _processes(self, experiment, overrides, todo, logs, log, gpus, threads) -> dict[int, str | None]:
        pending, running, outcome = list(todo), {}, {}
        free, started = list(gpus), time.time()
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    run = pending.pop(0)
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
                    devices = int(run.cfg.trainer.devices)
                    taken = [free.pop(0) for _ in range(min(devices, len(free)))]
                    if taken:
                        env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
                    path = logs / f"{run.index}.log"
                    with open(path, "w") as f:
                        proc = subprocess.Popen(
                            [sys.executable, "-m", "prompt_tuning.apps.launchers", str(experiment), str(run.index),
                             *overrides], stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
                    running[proc] = (run, taken, path)
                for proc in [p for p in running if p.poll() is not None]:
                    run, taken, path = running.pop(proc)
                    free.extend(taken)
                    outcome[run.index] = None if proc.returncode == 0 else _last_error(run, path)
                    log(_finished_line(run, outcome[run.index], len(outcome), len(todo), started))
                time.sleep(self.poll)
        except BaseException:
            for proc in running:
                proc.terminate()  # the runs continue from their last finished epoch next time
            for proc in running:
                proc.wait()
            raise
        return outcome


def die_with_parent() -> None:
    """Ask Linux to end this process when its parent dies (a sweep killed with SIGKILL leaves no orphan worker
    training on); nothing elsewhere."""
    try:
        import ctypes
        import signal

        # PR_SET_PDEATHSIG with SIGKILL: Lightning takes SIGTERM as a note and trains on; every write of a run is
        # a rename of a whole file, so a kill loses at most the epoch under way
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        pass


def _worker_init(devices, threads: int, cwd: str) -> None:
    """A local worker: its GPU (if any), its share of the CPU cores, the sweep's working folder; it dies with
    the sweep."""
    die_with_parent()
    gpu = devices.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.chdir(cwd)
    import torch

    torch.set_num_threads(threads)
    log_to_stderr()


def _pool_task(experiment: str, index: int, overrides: list[str], log_path: str) -> str | None:
    """`task` in a local worker, its output into ``log_path``; None when it ran (or had nothing to do), else
    its one-line error."""
    with open(log_path, "w") as f:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            task(experiment, index, overrides)
            return None
        except UserError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - recorded in the run folder by run_one, reported by the sweep
            traceback.print_exc()
            return f"{type(e).__name__}: {' '.join(str(e).split())[:300]} (log {log_path})"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _last_error(run, log_path: Path) -> str:
    record = RunFolder(run.output_dir).error()
    if record:
        return record["error"]
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    return f"{lines[-1].strip() if lines else 'no output'} (log {log_path})"


def _finished_line(run, error: str | None, n: int, total: int, started: float) -> str:
    elapsed = time.time() - started
    eta = f"  (ETA {elapsed / n * (total - n) / 60:.1f} min)" if n < total else ""
    if error is not None:
        return f"[{n}/{total}] {run.describe()}: FAILED: {error}{eta}"
    result = RunFolder(run.output_dir).result() or {}
    metrics = ", ".join(f"{k}={v:.2f}" for k, v in result.get("metrics", {}).items() if "macro" not in k)
    return f"[{n}/{total}] {run.describe()}: {metrics or 'skipped (done or running elsewhere)'}{eta}"


# ----------------------------------------------------------------------------------------------- SLURM
def parse_time(text: str) -> int:
    """Minutes of a SLURM time limit: ``MM``, ``HH:MM:SS``, ``MM:SS`` or ``D-HH[:MM[:SS]]``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UserError(f"--time {text!r}: give minutes or [D-]HH:MM:SS, e.g. 4:00:00")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is None and b is None:
        return a  # plain minutes
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is None:
        hours, minutes, seconds = 0, a, b  # MM:SS
    else:
        hours, minutes, seconds = a, b, c
    return max(1, (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0))


@dataclass
class Slurm:
    """``--launcher slurm``: the runs to do as one submitit job array, each task one run (`task`).

    A fresh submitit folder ``<output>/.slurm/<time>`` per submission holds the tasks' logs. Without SLURM
    accounting, submitit cannot tell a task that died (``scancel``, time limit, out of memory) from one still
    running, so the sweep watches ``squeue`` and the run folders instead: a task gone from the queue without a
    result is recorded as failed (``error.json``), and the next submission runs it again, continuing from its
    last checkpoint.
    """

    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    time: str = "4:00:00"
    max_parallel: int = 20
    wait: bool = True
    poll: float = 2.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:  # before the sweep writes anything
        try:
            import submitit  # noqa: F401
        except ImportError as e:
            raise UserError("--launcher slurm needs submitit: pip install submitit") from e
        if shutil.which("sbatch") is None or (not os.environ.get("SLURM_CONF")
                                              and not Path("/etc/slurm/slurm.conf").is_file()):
            raise UserError("--launcher slurm: no SLURM here (no sbatch, or neither SLURM_CONF nor "
                            "/etc/slurm/slurm.conf); run the sweep from a login node of the cluster")

    def executor(self, folder: Path, name: str, devices: int = 1):
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        # a run on several devices (trainer.devices) is one task per device, which Lightning finds in SLURM's
        # environment; one device: one task
        params = dict(timeout_min=parse_time(self.time), cpus_per_task=self.cpus_per_run, tasks_per_node=devices,
                      nodes=1, name=name, slurm_array_parallelism=self.max_parallel)
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        executor.update_parameters(**params, **self.extra)
        return executor

    def run(self, experiment: str, overrides: list[str], todo: list, output: Path, log, name: str
            ) -> dict[int, str | None] | None:
        """Submit ``todo``; wait for the tasks (unless ``wait`` is false: then None)."""
        folder = output / ".slurm" / time.strftime("%Y%m%d-%H%M%S")
        while folder.exists():  # a fresh folder per submission: job ids restart when a cluster is reset
            folder = folder.with_name(folder.name + "x")
        devices = {int(run.cfg.trainer.devices) for run in todo}
        if len(devices) > 1:
            raise UserError(f"--launcher slurm: the runs ask for different trainer.devices ({sorted(devices)}); "
                            "submit them in separate sweeps (--only)")
        executor = self.executor(folder, f"pt-{name}", devices.pop())
        cwd, progress = os.getcwd(), False
        try:
            jobs = executor.map_array(slurm_task, [str(experiment)] * len(todo), [r.index for r in todo],
                                      [list(overrides)] * len(todo), [cwd] * len(todo), [progress] * len(todo))
        except Exception as e:  # submitit's FailedJobError etc.: sbatch refused the array
            raise UserError(f"sbatch refused the job array: {' '.join(str(e).split())[:500]}") from e
        ids = {r.index: j.job_id for r, j in zip(todo, jobs)}
        array = jobs[0].job_id.split("_")[0] if jobs else "?"
        log(f"submitted {len(todo)} runs as SLURM job array {array} (at most {self.max_parallel} at a time); "
            f"logs in {folder}")
        if not self.wait:
            log(f"not waiting: follow with `prompt-tuning sweep {experiment} --status`")
            return None
        try:
            return self.watch(todo, ids, folder, log)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"stopped waiting; the tasks of job array {array} keep running: follow with "
                                    f"`prompt-tuning sweep {experiment} --status`, cancel with `scancel {array}`"
                                    ) from None

    def watch(self, todo: list, ids: dict[int, str], folder: Path, log) -> dict[int, str | None]:
        """Wait until every task has left the queue; returns index -> None (done) or the error."""
        outcome: dict[int, str | None] = {}
        started = time.time()
        array = next(iter(ids.values())).split("_")[0]
        while len(outcome) < len(todo):
            queued = squeue(array)
            for run in todo:
                if run.index in outcome or ids[run.index] in queued:
                    continue
                state = status(run.cfg)
                if state in ("done", "running"):  # finished, or left to another process that has it
                    outcome[run.index] = None
                else:  # left the queue without a result
                    record = RunFolder(run.output_dir).error()
                    if record is None or record.get("job") != ids[run.index]:
                        why = (f"SLURM task {ids[run.index]} ended without a result (cancelled, out of time or "
                               f"memory, or killed); its log: {folder}/{ids[run.index]}_0_log.err")
                        RunFolder(run.output_dir).record_error(why)
                        record = {"error": why}
                    outcome[run.index] = record["error"]
                log(_finished_line(run, outcome[run.index], len(outcome), len(todo), started))
            if len(outcome) < len(todo):
                time.sleep(self.poll)
        return outcome


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    log_to_stderr()
    try:
        result = task(argv[0], int(argv[1]), argv[2:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or the SIGTERM of a sweep that stops: one line, no traceback
        return _said_interruption(e)
    from prompt_tuning.runs.trainer import rank

    if result is not None and rank() == 0:
        print(json.dumps(result["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
