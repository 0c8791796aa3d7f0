"""Training objectives. An objective sees logits and labels (and later the frozen zero-shot features), never a
method's internals."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CrossEntropy:
    """Cross-entropy averaged over prompt sets: ``mean_s CE(logits[s], labels)`` for logits ``(S, B, C)``.

    With one prompt set (CoOp) this is plain cross-entropy; with Monte-Carlo prompt samples it is the
    Monte-Carlo estimate of the expected cross-entropy.
    """

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s, b, c = logits.shape
        return F.cross_entropy(logits.reshape(s * b, c), labels.repeat(s))
