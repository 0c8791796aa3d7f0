"""A lock file per run folder, so two processes (two sweeps on one output folder) never train the same run.

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+ file systems) and holds the owner's
host and pid. A lock whose owner is on this host and no longer alive is stale and is taken over; a lock held by
another host is respected (its liveness cannot be checked from here) until it is removed by hand, unless it was
taken inside a SLURM job that the queue (``squeue``) no longer holds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import make_temporary

LOCK_FILE = ".lock"
log = logging.getLogger(__name__)


def slurm_job() -> str | None:
    """This process's SLURM job (``JOBID`` or ``ARRAYJOBID_TASK``), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def squeue(job: str) -> set[str]:
    """The ids (``JOB`` or ``JOB_TASK``, array tasks listed one by one) of ``job`` still in SLURM's queue:
    pending, running or completing. An id the queue no longer knows is an empty set; raises `UserError` when
    SLURM cannot be asked."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"cannot ask SLURM about job {job}: {e}") from e
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return set()
        raise UserError(f"squeue failed: {out.stderr.strip()[:300]}")
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def job_queued(job: str) -> bool | None:
    """Whether SLURM still holds ``job`` (pending or running); None when it cannot be asked here."""
    if shutil.which("squeue") is None:
        return None
    try:
        return bool(squeue(job))
    except UserError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Busy(UserError):
    """Another live process holds the lock (``holder``: its host, pid, SLURM job, since when)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class FileLock:
    """``with FileLock(folder): ...`` holds ``folder`` (a run folder, a cache entry) for this process; raises
    `Busy` if another live process holds it, `UserError` if the folder cannot be written.

    Args:
        folder: what is locked.
        file: the lock file's name inside it.
        what, doing: what is locked and what a holder does, for messages (``run ... is being trained by``).
    """

    def __init__(self, folder: str | os.PathLike, file: str = LOCK_FILE, what: str = "run",
                 doing: str = "is being trained by"):
        self.path = Path(folder) / file
        self.what, self.doing = what, doing
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        if slurm_job():
            self.owner["job"] = slurm_job()
        self.created: list[Path] = []  # folders acquire() made, removed again on release if still empty

    def holder(self) -> dict | None:
        """Who holds the lock (None if nobody, or if the lock is stale). Locks are written whole (`acquire`), so
        an empty or unreadable one was not written by this toolkit's writer: it is stale, and said so."""
        try:
            info = json.loads(self.path.read_text())
            if not isinstance(info, dict):
                raise ValueError("not a mapping")
            pid = int(info.get("pid", -1))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, UnicodeDecodeError, OSError):
            log.warning("lock %s is damaged (empty or unreadable): taken as stale", self.path)
            return None
        if info.get("host") == self.owner["host"] and not _alive(pid):
            return None
        if info.get("host") != self.owner["host"] and info.get("job") and job_queued(info["job"]) is False:
            return None  # its SLURM job has ended (cancelled, timed out, node lost)
        return info

    def wait(self, what: str, poll: float = 0.5) -> None:
        """Take the lock, waiting while another live process holds it (that process is doing ``what``); a lock
        that cannot be taken at all (an unwritable folder) is an error at once."""
        said = False
        while True:
            try:
                self.acquire()
                return
            except Busy as busy:
                if not said:
                    log.info("waiting for pid %s on %s, %s", busy.holder.get("pid"), busy.holder.get("host"), what)
                    said = True
                time.sleep(poll)

    def acquire(self) -> None:
        try:
            missing = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = missing  # innermost first
        except OSError as e:
            raise UserError(f"cannot write to {self.path.parent}: {e.strerror}; choose another output_dir") from e
        for _ in range(2):
            try:
                self._create()
            except FileExistsError:
                holder = self.holder()
                if holder is not None:
                    raise Busy(f"{self.what} {self.path.parent} {self.doing} pid {holder.get('pid')} on "
                               f"{holder.get('host')} (lock {self.path}); if that process is gone, delete the lock",
                               holder) from None
                self.path.unlink(missing_ok=True)  # stale: its owner died
                continue
            except OSError as e:  # a read-only or full file system: waiting would never help
                raise UserError(f"cannot write the lock {self.path}: {e.strerror}") from e
            return
        raise UserError(f"could not take the lock {self.path}; another process keeps re-creating it")

    def _create(self) -> None:
        """Create the lock file whole or not at all: its content goes to a temporary file, which is then linked to
        the lock's name (atomic, and refused when the lock exists), so a kill or a full disk never leaves an empty
        lock. It is readable as the umask allows (a colleague's sweep must see who holds a run, not a stale
        lock)."""
        tmp = make_temporary(self.path.parent, self.path.name)
        try:
            with open(tmp, "w") as f:
                json.dump({**self.owner, "since": time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError, AttributeError):  # gone, or not ours
            pass
        for folder in self.created:  # a run that wrote nothing leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote files), or gone
                break

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
