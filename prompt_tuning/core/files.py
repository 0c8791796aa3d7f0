"""Files written whole or not at all: a temporary file beside the target, flushed, then renamed over it.

Every file this toolkit writes (result.json, config.yaml, few-shot and feature caches, split files) goes through
here, so a crash never leaves half a file for a later reader. The files get the permissions the process's umask
gives a file it creates (``0o666 & ~umask``), as `open` would, not ``mkstemp``'s private 0600: a colleague with
the same group can read a few-shot split written into a shared dataset folder.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from prompt_tuning.core.errors import UserError


def umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it, which races
    with other threads creating files): the ``Umask:`` line of ``/proc/self/status`` (Linux >= 4.7), else set and
    restore it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions of a file created now: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def make_temporary(folder: Path, name: str) -> str:
    """A new empty temporary file for ``folder/name`` (``.NAME.XXXX.tmp``), with the umask's permissions."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
    except OSError:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (readers see the old file
    or the whole new one, never half of it); on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temporary(path.parent, path.name)
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror}") from e
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a folder that became read-only
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMPORARY = ".*.tmp"  # what atomic_path leaves behind when its process is killed mid-write


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 3600.0) -> int:
    """Delete the temporary files of writes killed in ``folder`` (not its subfolders) at least ``older_than``
    seconds ago (younger ones may belong to a live writer); returns how many."""
    now, removed = time.time(), 0
    for tmp in Path(folder).glob(TEMPORARY):
        try:
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed += 1
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see `atomic_path`), flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
