"""Full precision for the numbers a run reports, whatever the autocast setting.

Under ``trainer.precision=bf16-mixed`` (the default on a GPU) Lightning runs every step inside autocast, so a
matrix product of fp32 tensors comes out in bf16: at the magnitudes of CLIP logits (``logit_scale * cos``, up to
about 100, and more for Tip-Adapter's cache logits) bf16 values are 0.5 to 1.0 apart, enough to tie the top
scores of many images. The towers may run in low precision; the normalisation of features, the logits, every
head's scores, the loss terms and the metrics run inside `full_precision` on fp32 tensors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def full_precision(*tensors: torch.Tensor):
    """Autocast off, on the device type of ``tensors`` (CPU and CUDA when none are given)."""
    kinds = {t.device.type for t in tensors if isinstance(t, torch.Tensor)} or {"cpu", "cuda"}
    managers = [torch.autocast(kind, enabled=False) for kind in sorted(kinds) if kind in ("cpu", "cuda")]
    for m in managers:
        m.__enter__()
    try:
        yield
    finally:
        for m in reversed(managers):
            m.__exit__(None, None, None)
