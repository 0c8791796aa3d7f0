"""Checkpoints: read with ``weights_only=True`` (a shared file never runs code), written atomically in the run
folder (a temporary file beside the target, then a rename, so the previous checkpoint stays until the new one is
whole)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from prompt_tuning.core.errors import UserError
from prompt_tuning.core.files import atomic_path

CHECKSUM = "prompt_tuning_checksum"  # the key of a checkpoint's digest of everything else it holds


def digest(obj, h=None) -> str:
    """A digest of a checkpoint's contents: every tensor's dtype, shape and bytes, and every other value's repr,
    walked in a fixed order (mappings by key)."""
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if key != CHECKSUM:
                h.update(f"K{key!r}".encode())
                digest(obj[key], h)
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            digest(item, h)
    else:
        h.update(f"V{obj!r}".encode())
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True`` (tensors and plain containers only, so a file
    someone shared cannot run code here) and checked against the digest it was written with (flipped bytes are
    refused, never trained on). Anything else is refused with a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes: a write that did not finish); delete it to start over")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = (str(e).partition("WeightsUnpickler error:")[2].strip().splitlines() or [type(e).__name__])[0]
        if "Unsupported global" in detail:  # a pickle naming classes or functions: loading it could call them
            raise UserError(f"checkpoint {path} holds more than tensors (refused, loading it could run code): "
                            f"{detail[:200]}") from e
        raise UserError(f"checkpoint {path} is damaged or not a checkpoint ({detail[:200]}); delete it to start "
                        "over") from e
    except Exception as e:  # noqa: BLE001 - whatever else torch meets in a damaged file
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(f"checkpoint {path} cannot be read ({reason}); delete it to start over") from e
    if not isinstance(checkpoint, dict):
        raise UserError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint")
    saved = checkpoint.get(CHECKSUM)
    if saved is not None and saved != digest(checkpoint):
        raise UserError(f"checkpoint {path} is damaged: its contents do not match the digest it was written with; "
                        "delete it to start over")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer, writing as every other file here: a temporary file beside the
    target, flushed, then renamed over it (Lightning's own goes through a temporary file in ``$TMPDIR``, which on
    another file system is copied onto the target, truncating it first), with a digest of the contents that
    reading checks. The previous checkpoint stays until the new one is whole."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        checkpoint = {**checkpoint, CHECKSUM: digest(checkpoint)}
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (UserError, RuntimeError, OSError) as e:  # a full disk shows as ENOSPC or torch's "enforce fail"
            reason = " ".join(str(e.__cause__ or e).split())[:200]
            raise UserError(f"cannot write checkpoint {path} (is the disk full?): {reason}; the previous "
                            "checkpoint is kept") from e

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(path)
