"""The runs of an experiment grid as the sweep and its launchers see them: each one composed (resuming where its
folder holds a checkpoint of the same configuration), its state, and one run with a failure record.

Every launcher runs a run through `run_one`, the code path of ``prompt-tuning train``, so results, locks, resume
by hash and tables do not depend on where a run ran. A run that fails or is interrupted leaves its one-line error
in ``<run>/error.json`` (shown by ``sweep --status``); one that finishes removes it.
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

from prompt_tuning.config.compose import Composed, compose_annotated
from prompt_tuning.config.experiment import Run
from prompt_tuning.config.hashing import run_hash
from prompt_tuning.core.errors import UserError
from prompt_tuning.core.locks import Busy
from prompt_tuning.runs.folder import RunFolder


def compose_run(run: Run, progress: bool = False, overwrite: bool = False) -> Composed:
    """The composed config of a sweep run. It resumes from the run folder's last checkpoint when that was
    written by the same configuration (a killed or cancelled run continues where it stopped)."""
    c = compose_annotated([*run.args, f"runtime.progress={str(progress).lower()}",
                           *(["overwrite=true"] if overwrite else [])])
    run.output_dir = Path(c.cfg.output_dir)
    run.cfg = c.cfg
    folder = RunFolder(run.output_dir)
    saved = folder.saved_hash()
    if saved is not None and saved == run_hash(c.cfg) and folder.last_checkpoint.is_file():
        c.cfg.resume = True
    return c


def state_of(cfg) -> tuple[str, str]:
    """The state of a composed run's folder (`RunFolder.state`) with its detail: who holds a running run, the
    error of a failed one."""
    return RunFolder(cfg.output_dir).state(run_hash(cfg), bool(cfg.overwrite))


def status(cfg) -> str:
    """``done``, ``running``, ``changed`` or ``todo`` (a failed run is to do again)."""
    state = state_of(cfg)[0]
    return "todo" if state == "failed" else state


SIGNALS = {"SIGINT": "by Ctrl-C (SIGINT)",
           "SIGTERM": "by SIGTERM (cancelled, preempted or out of time, on SLURM)",
           "exit": "(its process was told to exit, as submitit does when it requeues a preempted SLURM task)"}


def interruption(e: BaseException, folder: RunFolder) -> str:
    """The failure record's line of a run stopped by Ctrl-C or a signal."""
    from prompt_tuning.runs.runner import Interrupted

    again = ("the next sweep continues it from its last checkpoint" if folder.last_checkpoint.is_file() else
             "the next sweep runs it again")
    if isinstance(e, Interrupted):
        return f"{e} {SIGNALS.get(e.signal, e.signal)}; {again}"
    how = "by Ctrl-C (SIGINT)" if isinstance(e, KeyboardInterrupt) else f"(exit code {getattr(e, 'code', '?')})"
    return f"interrupted {how} outside training; {again}"


def run_one(cfg, sources: dict | None = None) -> dict:
    """`prompt_tuning.runs.runner.train` with a failure record: a run that raises, or that is interrupted (Ctrl-C,
    SIGTERM from SLURM), leaves ``error.json`` (its one-line error) in its folder for ``sweep --status``, and the
    exception goes on. Another process holding the run (`Busy`) is no failure."""
    from prompt_tuning.runs.runner import train
    from prompt_tuning.runs.trainer import rank

    folder = RunFolder(cfg.output_dir)
    try:
        return train(cfg, sources)
    except Busy:
        raise
    except (KeyboardInterrupt, SystemExit) as e:
        if rank() == 0:
            line = interruption(e, folder)
            e.add_note(f"run {folder.path}: {line}")  # the one line a SLURM task prints (`launchers.slurm_task`)
            with contextlib.suppress(UserError, OSError):  # a full or read-only disk: the interruption goes on
                folder.record_error(line, interrupted=True)
        raise
    except UserError as e:
        if rank() == 0:
            folder.record_error(str(e))
        raise
    except Exception as e:
        if rank() == 0:
            folder.record_error(f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        raise
