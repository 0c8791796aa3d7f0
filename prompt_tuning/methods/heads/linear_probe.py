"""Linear-probe CLIP (Radford et al., 2021, arXiv:2103.00020), with CoOp's protocol (Zhou et al., IJCV 2022,
arXiv:2109.01134; KaiyangZhou/CoOp ``lpclip/``): a scikit-learn logistic regression on the frozen image
features of the few-shot training images, its inverse regularisation strength C chosen on the few-shot
validation images.

The search, as ``lpclip/linear_probe.py``: fit at C in ``1e6, 1e4, ..., 1e-6`` and keep the best on validation
(the first on ties); then ``steps`` rounds of a bisection in log10(C) between ``C/10`` and ``10 C``: fit at both
ends, keep the better one (the left on ties) and move the other end to the middle of the interval. The classifier
tested is the fit of the last round. Features are the image encoder's unnormalised output, as the authors'
``feat_extractor.py`` saves them (``normalize: true`` L2-normalises them first). L-BFGS, at most 1000 iterations:
deterministic for a given split.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from prompt_tuning.methods.base import Capabilities, FrozenFeatures, Head, Task, refuse_other_classes

if TYPE_CHECKING:
    from prompt_tuning.backbone import FrozenCLIP

log = logging.getLogger(__name__)

C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


class LinearProbe(Head):
    """Logistic regression on frozen image features.

    Args:
        normalize: L2-normalise features before the fit (the authors' code does not).
        c_grid: the coarse values of C.
        steps: bisection rounds after the coarse search (the authors: 8).
        max_iter: L-BFGS iterations per fit (the authors: 1000).
    """

    capabilities = Capabilities(fits=True, class_bound=True)

    def __init__(self, clip: FrozenCLIP, task: Task, normalize: bool = False, c_grid: tuple = C_GRID,
                 steps: int = 8, max_iter: int = 1000):
        super().__init__()
        if not c_grid or any(c <= 0 for c in c_grid) or steps < 0:
            raise ValueError(f"c_grid={list(c_grid)!r} needs values > 0 and steps={steps!r} must be >= 0")
        self.normalize, self.c_grid, self.steps, self.max_iter = normalize, tuple(c_grid), steps, max_iter
        self.c: float | None = None  # the chosen C
        self._fitted: tuple[str, ...] = ()
        self.set_task(clip, task)

    def set_task(self, clip: FrozenCLIP, task: Task) -> None:
        refuse_other_classes(self, self._fitted, task)
        self.classnames = task.classnames
        n = len(task.classnames)
        if not self._fitted:
            weight = torch.zeros(n, clip.embed_dim, dtype=torch.float64)  # (C, d), scikit-learn's float64
            self.register_buffer("weight", weight, persistent=False)
            self.register_buffer("bias", torch.zeros(n, dtype=torch.float64), persistent=False)

    def _inputs(self, features: torch.Tensor) -> np.ndarray:
        """The rows scikit-learn fits, in float64: the authors' features reach it as Python floats
        (``lpclip/feat_extractor.py`` saves ``.tolist()`` through ``np.savez``), and L-BFGS keeps the dtype it is
        given, so float32 rows would give other weights (2.5e-5 relative) and, at times, other predictions."""
        x = F.normalize(features.double(), dim=-1) if self.normalize else features.double()
        return x.cpu().numpy()

    def fit(self, clip: FrozenCLIP, data: FrozenFeatures) -> None:
        start = time.perf_counter()
        x, y = self._inputs(data.train[0]), data.train_labels.numpy()
        xv, yv = self._inputs(data.val), data.val_labels.numpy()

        unconverged = []

        def fit_at(c: float):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf = logistic_regression(c, self.max_iter).fit(x, y)
            if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                unconverged.append(c)  # extreme C values do, in the authors' runs too; said once below
            return clf, int((clf.predict(xv) == yv).sum())

        correct = [fit_at(c)[1] for c in self.c_grid]
        peak = self.c_grid[int(np.argmax(correct))]
        left, right = 1e-1 * peak, 1e1 * peak
        clf, chosen = fit_at(peak)[0], peak  # steps=0: the coarse search's best
        for _ in range(self.steps):
            (clf_l, acc_l), (clf_r, acc_r) = fit_at(left), fit_at(right)
            mid = 0.5 * (np.log10(right) + np.log10(left))
            if acc_l < acc_r:
                clf, chosen = clf_r, right
                left, right = np.power(10, mid), np.power(10, np.log10(right))
            else:
                clf, chosen = clf_l, left
                left, right = np.power(10, np.log10(left)), np.power(10, mid)
        if unconverged:
            log.info("linear probe: L-BFGS stopped before convergence at %d of the C values tried (%s)",
                     len(unconverged), ", ".join(f"{c:.3g}" for c in unconverged[:4]))
        self.c = float(chosen)
        log.info("linear probe: C = %.4g (coarse best %.0e, %d bisection rounds; %d fits in %.1f s)", self.c, peak,
                 self.steps, len(self.c_grid) + 2 * self.steps, time.perf_counter() - start)
        self._load(clf, len(self.classnames))
        self._fitted = tuple(self.classnames)

    def _load(self, clf, n_classes: int) -> None:
        """The fitted classifier as ``(C, d)`` weights and ``(C,)`` biases (classes absent from the training set
        score -inf; scikit-learn's binary case has one row, the second class's margin)."""
        weight = torch.zeros(n_classes, self.weight.shape[1], dtype=torch.float64)
        bias = torch.full((n_classes,), -torch.inf, dtype=torch.float64)
        coef, intercept = torch.from_numpy(clf.coef_).double(), torch.from_numpy(clf.intercept_).double()
        classes = torch.as_tensor(clf.classes_)
        if len(classes) == 2:
            weight[classes[1]], bias[classes[1]], bias[classes[0]] = coef[0], intercept[0], 0.0
        else:
            weight[classes], bias[classes] = coef, intercept
        self.weight = weight.to(self.weight.device)  # float64, as scikit-learn's decision_function
        self.bias = bias.to(self.bias.device)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        """scikit-learn's decision_function, in its float64."""
        x = image_features.double()
        x = F.normalize(x, dim=-1) if self.normalize else x
        return x @ self.weight.T + self.bias


def logistic_regression(c: float, max_iter: int = 1000):
    """scikit-learn's L2-regularised multinomial logistic regression with L-BFGS (the authors' settings)."""
    return LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c)
