"""The run folder: one object owns its file names, the run hash in its config, its lock, its checkpoints, its
``result.json`` and ``error.json``, and the rules of resuming and replacing a run.

    <run>/config.yaml          the resolved config, "# run hash: H" on its first line
    <run>/result.json          metrics and what produced them (atomic)
    <run>/error.json           the one-line error of a failed last attempt (removed once the run finishes)
    <run>/checkpoints/last.ckpt   the learned tensors after the last finished epoch (atomic, in the folder)
    <run>/logs/, tensorboard/, wandb/   trackers
    <run>/eval/<checkpoint>[-<tag>].json   what `prompt-tuning eval` measured (atomic; <tag>: its overrides)
    <run>/.lock                the live process that holds the run

Every file is written as a temporary file in the same folder, then renamed (`prompt_tuning.core.files`), so a
crash or a full disk never leaves half a file for the next reader, and the previous checkpoint stays until the new
one is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig, OmegaConf

from prompt_tuning.config.compose import compose_saved
from prompt_tuning.config.hashing import NOT_HASHED, flatten
from prompt_tuning.config.identity import override_tag, pairs
from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import remove_stale_temporaries, write_atomic, write_json
from prompt_tuning.core.locks import FileLock, slurm_job

State = Literal["done", "running", "changed", "failed", "todo"]


class RunFolder:
    """The files of one run (see the module doc).

    Args:
        path: the run's ``output_dir``.
    """

    CONFIG = "config.yaml"
    RESULT = "result.json"
    ERROR = "error.json"
    CHECKPOINTS = "checkpoints"
    LAST = "last.ckpt"
    TRACKERS = {"csv": "logs", "tensorboard": "tensorboard"}  # trackers' folders (W&B writes wandb/ itself)
    EVALS = "eval"  # the results of `prompt-tuning eval` on the run's checkpoints
    OWN = {CONFIG, RESULT, ERROR, CHECKPOINTS, EVALS, *TRACKERS.values(), "wandb", ".lock"}  # what a run folder holds
    HASH_LINE = "# run hash: "

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def config(self, changes: list[str] | tuple[str, ...] = ()) -> DictConfig:
        """The run's saved config with ``key=value`` changes (`prompt_tuning.config.compose.compose_saved`)."""
        path = self.path / self.CONFIG
        if not path.is_file():
            raise UserError(f"{self.path} is not a run folder: it has no {self.CONFIG}")
        return compose_saved(path, changes)

    @property
    def last_checkpoint(self) -> Path:
        return self.path / self.CHECKPOINTS / self.LAST

    def eval_file(self, checkpoint: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Path:
        """Where `prompt-tuning eval` keeps what it measured: ``eval/<checkpoint stem>[-<tag>].json``, the tag
        naming the overrides that may change the numbers (``dataset=imagenetv2 seed=2`` ->
        ``last-dataset_imagenetv2-seed_2``), as a run path's tag does (`prompt_tuning.config.identity`)."""
        tag = override_tag(pairs(overrides), in_path=(), joiner="_")
        return self.path / self.EVALS / f"{Path(checkpoint).stem}{'-' + tag if tag else ''}.json"

    # ------------------------------------------------------------------------------------------- reading
    def saved_hash(self) -> str | None:
        """The run hash recorded in ``config.yaml``, if any."""
        path = self.path / self.CONFIG
        if not path.is_file():
            return None
        first = path.read_text().partition("\n")[0]
        return first.removeprefix(self.HASH_LINE) if first.startswith(self.HASH_LINE) else None

    def result(self) -> dict | None:
        """``result.json``, or None if the run has not finished; a damaged one (not a JSON mapping with a run
        hash and metrics) counts as no result, and is said so once."""
        return read_record(self.path / self.RESULT, ("config_hash", "metrics"))

    def error(self) -> dict | None:
        """``error.json``: the failure record of the last attempt, if it failed."""
        return read_record(self.path / self.ERROR, ("error",))

    def holder(self) -> dict | None:
        """The live process that holds the run (host, pid, SLURM job, since), or None."""
        return FileLock(self.path).holder()

    def state(self, config_hash: str, overwrite: bool = False) -> tuple[State, str]:
        """``done`` (a result of this configuration), ``running`` (held by a live process, who), ``changed`` (a
        result of another configuration, replaced only with ``overwrite``), ``failed`` (the last attempt's error)
        or ``todo``."""
        result = self.result()
        if result is not None and result.get("config_hash") == config_hash:
            return "done", ""
        holder = self.holder()
        if holder is not None:
            since = holder.get("since")
            return "running", (f"pid {holder.get('pid')} on {holder.get('host')}"
                               + (f", SLURM job {holder['job']}" if holder.get("job") else "")
                               + (f", for {(time.time() - since) / 60:.0f} min" if since else ""))
        if result is not None and not overwrite:
            return "changed", ""
        error = self.error()
        if error is not None:
            return "failed", error.get("error", "")
        return "todo", ""

    def differences(self, cfg: DictConfig, most: int = 8) -> str:
        """The keys whose values differ between ``config.yaml`` and ``cfg``, for error messages."""
        try:
            old = flatten(OmegaConf.to_container(OmegaConf.load(self.path / self.CONFIG), resolve=True))
        except Exception:  # noqa: BLE001 - only an error message's detail
            return "its config.yaml cannot be read"
        new = flatten(OmegaConf.to_container(cfg, resolve=True))
        keys = sorted(k for k in old.keys() | new.keys()
                      if old.get(k) != new.get(k) and k.split(".")[0] not in NOT_HASHED)
        shown = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys[:most]]
        more = f", and {len(keys) - most} more" if len(keys) > most else ""
        return "differing keys: " + ", ".join(shown) + more if keys else "no key differs: the hash scheme changed"

    # -------------------------------------------------------------------------------------- the run's rules
    def lock(self) -> FileLock:
        """``with folder.lock(): ...`` holds the run; `prompt_tuning.core.locks.Busy` if another process does."""
        return FileLock(self.path)

    def refuse_another_configuration(self, config_hash: str, cfg: DictConfig) -> None:
        """A finished run of another configuration is only replaced with ``overwrite=true``."""
        finished = self.result()
        if finished is not None and finished.get("config_hash") != config_hash and not cfg.overwrite:
            raise UserError(
                f"{self.path} holds a finished run of another configuration (run hash {finished.get('config_hash')}"
                f", this one {config_hash}; {self.differences(cfg)}): choose another output_dir, or pass "
                "overwrite=true to replace it"
            )

    def resume_point(self, config_hash: str, resume: bool) -> Path | None:
        """The checkpoint a run continues from: ``last.ckpt`` when ``resume`` is asked. A missing one is refused
        (starting from scratch would not be what was asked), and so is one written by another configuration."""
        last = self.last_checkpoint
        if not resume:
            return None
        if not last.is_file():
            raise UserError(f"resume=true: there is no checkpoint {last} to resume from; drop resume=true to start "
                            "the run, or check output_dir")
        saved = self.saved_hash()
        if saved != config_hash:
            raise UserError(f"cannot resume from {last}: it was written by another configuration "
                            f"(run hash {saved}, this one {config_hash}); drop resume=true to start over")
        return last

    def refuse_foreign(self) -> None:
        """Refuse an ``output_dir`` that is not a run's: empty, a folder holding other files, or a run whose
        ``checkpoints`` is a link (the run deletes old checkpoints there)."""
        if not str(self.path) or str(self.path) == ".":
            raise UserError("output_dir is empty: name the run's folder (the default is outputs/<dataset>/...)")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output_dir={str(self.path)!r} is a file, not a folder")
        if (self.path / self.CHECKPOINTS).is_symlink():
            raise UserError(f"{self.path / self.CHECKPOINTS} is a link: a run keeps its checkpoints in a folder of "
                            "its own (it deletes stale ones), so it refuses to write through a link")
        if self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir() if p.name not in self.OWN and not (
                p.name.startswith(".") and p.name.endswith(".tmp")))
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise UserError(f"output_dir={str(self.path)!r} holds files that are not a run's ({shown}): choose "
                                "a new or empty folder, or a run's folder")

    def claim(self, config_hash: str, config_yaml: str, resuming: bool) -> None:
        """The run's setup succeeded: from here on the folder belongs to this configuration. A finished result
        goes (it is replaced: a run begun again is not finished), a fresh run drops old checkpoints, leftovers of
        killed writes go, and ``config.yaml`` is written with the hash."""
        (self.path / self.RESULT).unlink(missing_ok=True)
        if not resuming:
            for stale in (self.path / self.CHECKPOINTS).glob("*.ckpt"):  # a fresh run never continues old weights
                stale.unlink()
        for folder in (self.path, self.path / self.CHECKPOINTS):
            remove_stale_temporaries(folder)
        write_atomic(self.path / self.CONFIG, f"{self.HASH_LINE}{config_hash}\n" + config_yaml)

    def roll_back(self) -> None:
        """An attempt failed before it wrote a checkpoint: take back what it wrote (its ``config.yaml`` and its
        trackers' folders), so the folder is as if it had not run. With a checkpoint, everything stays: the run
        can resume."""
        if any((self.path / self.CHECKPOINTS).glob("*.ckpt")):
            return
        (self.path / self.CONFIG).unlink(missing_ok=True)
        for name in (*self.TRACKERS.values(), "wandb", self.CHECKPOINTS):
            if (self.path / name).is_dir() and not (self.path / name).is_symlink():
                shutil.rmtree(self.path / name, ignore_errors=True)

    def write_result(self, result: dict) -> None:
        write_json(self.path / self.RESULT, result)
        (self.path / self.ERROR).unlink(missing_ok=True)

    def record_error(self, message: str, **extra) -> None:
        """Write ``error.json``: the one-line error, where and when it happened."""
        line = " ".join(str(message).split())[:500] or "failed"
        write_json(self.path / self.ERROR, {"error": line, "host": socket.gethostname(), "pid": os.getpid(),
                                            "job": slurm_job(), "time": time.time(), **extra})


def read_record(path: Path, keys: tuple[str, ...]) -> dict | None:
    """A JSON record of a run folder holding ``keys``; None if absent, and None with one warning if damaged."""
    try:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and all(k in record for k in keys):
            return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable, not JSON, not text
        pass
    if path not in _DAMAGED:
        _DAMAGED.add(path)
        log.warning("%s is damaged (not a JSON record with %s): it counts as absent", path, ", ".join(keys))
    return None


_DAMAGED: set[Path] = set()
log = logging.getLogger(__name__)
