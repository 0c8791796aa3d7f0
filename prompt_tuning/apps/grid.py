"""The runs of an experiment grid as the sweep and its launchers see them: each one composed (resuming where its
folder holds a checkpoint of the same configuration), its state, and one run with a failure record.

Every launcher runs a run through `run_one`, the code path of ``prompt-tuning train``, so results, locks, resume
by hash and tables do not depend on where a run ran. A run that fails leaves its one-line error in
``<run>/error.json`` (shown by ``sweep --status``); one that finishes removes it.
"""

from __future__ import annotations

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
    saved = RunFolder(run.output_dir).saved_hash()
    if saved is not None and saved == run_hash(c.cfg):
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


def run_one(cfg, sources: dict | None = None) -> dict:
    """`prompt_tuning.runs.runner.train` with a failure record: a run that raises leaves ``error.json`` (its
    one-line error) in its folder. Interruptions and another process holding the run (`Busy`) are no failures."""
    from prompt_tuning.runs.runner import Interrupted, train
    from prompt_tuning.runs.trainer import rank

    folder = RunFolder(cfg.output_dir)
    try:
        return train(cfg, sources)
    except (Interrupted, KeyboardInterrupt, Busy):
        raise
    except UserError as e:
        if rank() == 0:
            folder.record_error(str(e))
        raise
    except Exception as e:
        if rank() == 0:
            folder.record_error(f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        raise
