"""Metrics computed from a run's accuracies."""


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, 0 when both are 0 (the base-to-novel HM)."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0
