"""Checkpoints: read with ``weights_only=True`` (a shared file never runs code), written atomically in the run
folder (a temporary file beside the target, then a rename, so the previous checkpoint stays until the new one is
whole)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import atomic_path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``: tensors and plain containers only, so a file
    someone shared cannot run code here. Anything else is refused with a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} holds more than tensors (refused, it could run code): {first}") from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"checkpoint {path} cannot be read: {' '.join(str(e).split())[:300]}") from e


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing as every other file here: a temporary file beside the target,
    flushed, then renamed over it (Lightning's own goes through a temporary file in ``$TMPDIR``, which on another
    file system is copied onto the target, truncating it first)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
