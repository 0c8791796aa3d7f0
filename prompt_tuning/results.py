"""Run outputs: atomic writes of ``result.json`` and ``config.yaml``, and the result record."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from prompt_tuning.errors import UserError

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, 0 when both are 0 (the base-to-novel HM)."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: readers see the
    old file or the whole new one, never half of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror}; choose another output_dir") from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_result(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def versions() -> dict[str, Any]:
    import open_clip
    import pytorch_lightning
    import torch

    from prompt_tuning import __version__

    return {
        "prompt_tuning": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": platform.python_version(),
    }
