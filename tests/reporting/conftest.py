"""Figures a test draws are closed after it (pyplot keeps every figure open until told)."""

import matplotlib.pyplot as plt
import pytest


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
