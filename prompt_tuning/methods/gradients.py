"""Gradient rules: how the gradients of an objective's loss terms combine into the applied update.

A rule is called with the loss terms, the trainable parameters and ``average`` and must set ``p.grad``; the
module then steps the optimiser. ``average(grads)`` is the mean of a list of gradients over the processes of a
multi-device run (identity in one process): a rule averages each gradient it computes before combining them, so
that it combines the gradients of the global batch. Without a rule the terms are summed and back-propagated as usual.
"""

from __future__ import annotations

import torch


class GradientRule:
    """Base class: ``rule(terms, params, average)`` sets ``p.grad`` of every parameter from the loss terms."""

    def __call__(self, terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter], average=list) -> None:
        raise NotImplementedError


class ProGrad(GradientRule):
    """Prompt-aligned gradient (Zhu et al., ICCV 2023, arXiv:2205.14865).

    For each parameter, with ``g`` the gradient of the main terms (all but ``guide``) and ``k`` the gradient of
    the ``guide`` term (the KL to zero-shot CLIP): if ``g . k >= 0`` the update is ``g``; otherwise the
    conflicting component is removed, ``g - lam * (g . k / ||k||^2) k``. With ``lam = 1`` the applied gradient
    is orthogonal to ``k``, so the update never increases the KL to first order.

    Args:
        guide: name of the guiding loss term.
        lam: lambda (1.0 in the paper).
    """

    def __init__(self, guide: str = "kl", lam: float = 1.0):
        self.guide = guide
        self.lam = lam

    def __call__(self, terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter],
                 average=list) -> None:
        if self.guide not in terms:
            raise KeyError(f"ProGrad guides with loss term {self.guide!r}, the objective gave {sorted(terms)}")
        main = sum(v for k, v in terms.items() if k != self.guide)
        g_guide = torch.autograd.grad(terms[self.guide], params, retain_graph=True, allow_unused=True)
        g_main = torch.autograd.grad(main, params, allow_unused=True)
        g_guide, g_main = average(g_guide), average(g_main)
        for p, g, k in zip(params, g_main, g_guide):
            p.grad = g if k is None or g is None else project(g, k, self.lam)


def project(g: torch.Tensor, k: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``g`` if it agrees with ``k`` (``g . k >= 0``), else ``g - lam * (g . k / ||k||^2) k``."""
    dot = torch.dot(g.flatten(), k.flatten())
    if dot >= 0:
        return g
    return g - lam * dot / k.flatten().pow(2).sum().clamp_min(1e-30) * k
