"""Bayesian prompt learning (Derakhshani et al., "Bayesian Prompt Learning for Image-Language Model
Generalization", ICCV 2023, arXiv:2210.02390).

The context is a distribution: learned context vectors plus a residual ``r`` added to every vector, with
``r ~ N(mu, exp(logvar))`` drawn by the reparameterisation trick. Unconditional: ``mu`` and ``logvar`` are learned
vectors (initialised to 0 and U(0, 1), as in the authors' code). Conditional: two small networks
(Linear -> ELU -> Linear -> ELU -> Linear, hidden d/2) map the image feature to ``mu`` and ``logvar``. Each
forward draws ``n_samples`` residuals; training adds ``kl_weight * KL(q(r) || N(0, I))`` (mean over dimensions)
to the Monte-Carlo data term (`prompt_tuning.methods.objectives.MonteCarloLikelihood`); predictions average the
class probabilities over samples.
"""

from __future__ import annotations

import torch
from torch import nn

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.methods.base import Capabilities, Prompts, Task
from prompt_tuning.methods.contexts.coop import CoOp


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` per dimension, analytically: ``(exp(logvar) + mu^2 - 1 - logvar) / 2``."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)


class BayesianContext(CoOp):
    """Variational context with a learned (image-independent) Gaussian residual.

    In evaluation with ``per_image_test_draws`` every image gets its own ``n_samples`` draws (the authors test with
    batch size 1), so the sets pair with images as a conditional context's do; in training one draw serves the
    batch (the authors train with batch size 1 too, so the two agree there).

    Args:
        clip, task: as for `CoOp`.
        n_ctx, ctx_init: the mean context (the paper: 4 vectors from "a photo of a").
        n_samples: Monte-Carlo samples per forward pass (L; per dataset in the authors' VPT.md, set by the
            method's recipes).
        kl_weight: weight of the KL term (0.001 in the authors' code).
        per_image_test_draws: in evaluation, draw ``n_samples`` residuals for each image (the authors' batch-1
            testing), vectorised over the batch; false shares one draw per evaluation batch.
    """

    def __init__(self, clip: FrozenCLIP, task: Task, n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                 n_samples: int = 10, kl_weight: float = 0.001, per_image_test_draws: bool = True):
        super().__init__(clip, task, n_ctx=n_ctx, ctx_init=ctx_init)
        if n_samples < 1:
            raise ValueError(f"n_samples={n_samples}: need at least one sample")
        self.n_samples = n_samples
        self.kl_weight = kl_weight
        self.per_image_test_draws = per_image_test_draws
        self.capabilities = Capabilities(stochastic=True, conditional=self.per_image_test_draws or self.amortized,
                                         sets_per_image=n_samples)
        self._init_posterior(clip)

    amortized = False  # the residual's distribution depends on the image (the conditional variant)

    def per_image(self) -> bool:
        """Whether this forward pass draws for each image (the sets then pair with the images)."""
        return self.amortized or (self.per_image_test_draws and not self.training)

    def _init_posterior(self, clip: FrozenCLIP) -> None:
        self.mu = nn.Parameter(torch.zeros(1, clip.width, device=clip.device))
        self.logvar = nn.Parameter(torch.rand(1, clip.width, device=clip.device))

    def posterior(self, image_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu`` and ``logvar`` of the residual, ``(1, D)`` (``(B, D)`` when conditional)."""
        return self.mu, self.logvar

    def forward(self, image_features: torch.Tensor | None = None) -> Prompts:
        mu, logvar = self.posterior(image_features)
        per_image = self.per_image() and image_features is not None
        if per_image and mu.shape[0] == 1:  # one draw per image
            mu, logvar = (t.expand(image_features.shape[0], -1) for t in (mu, logvar))
        eps = torch.randn((self.n_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
        residual = mu + eps * (0.5 * logvar).exp()  # (M, B or 1, D)
        ctx = self.ctx.view(1, 1, *self.ctx.shape) + residual.unsqueeze(2)  # (M, B or 1, n_ctx, D)
        prompts = self.assemble(ctx.flatten(0, 1))  # (M * B, C, L, D), set m * B + b
        kl = self.kl_weight * gaussian_kl(mu, logvar).mean()
        return Prompts(prompts, self.frame.eot_index, shared_prefix=self.frame.shared_prefix(), per_image=per_image,
                       aux_loss=kl)


class _Amortized(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, d_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConditionalBayesianContext(BayesianContext):
    """Variational context whose residual distribution depends on the image (the paper's conditional variant)."""

    amortized = True

    def _init_posterior(self, clip: FrozenCLIP) -> None:
        d = clip.embed_dim
        self.mu_net = _Amortized(d, max(1, d // 2), clip.width).to(clip.device)
        self.logvar_net = _Amortized(d, max(1, d // 2), clip.width).to(clip.device)

    def posterior(self, image_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if image_features is None:
            raise ValueError("a conditional context needs image_features")
        return self.mu_net(image_features), self.logvar_net(image_features)
