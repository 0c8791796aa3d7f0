"""`prompt-tuning plot DIR`: few-shot curves and base-to-novel bars from the result.json files under DIR."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prompt_tuning.errors import UserError  # noqa: E402
from prompt_tuning.results import AVERAGE, aggregate, collect  # noqa: E402


def fewshot_curves(table: dict, path: Path) -> Path:
    """One panel per dataset (and the average): accuracy against shots, a line per method, shaded std."""
    fig = curves_figure(table)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_figure(table: dict):
    """The figure of `fewshot_curves` (panels in dataset order, the average last). Methods without shots
    (zero-shot CLIP) are a dashed horizontal line."""
    methods = sorted({m for m, _ in table})
    datasets = sorted({d for rows in table.values() for d in rows if d != AVERAGE})
    panels = datasets + ([AVERAGE] if len(datasets) > 1 else [])
    ticks = sorted({s for (_, s) in table if s is not None})
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, panels):
        for k, method in enumerate(methods):
            color = f"C{k}"
            flat = table.get((method, None), {}).get(dataset, {}).get("acc")
            if flat is not None:
                ax.axhline(flat[0], color=color, linestyle="--", label=method)
            points = sorted((shots, rows_[dataset]["acc"]) for (m, shots), rows_ in table.items()
                            if m == method and shots is not None and "acc" in rows_.get(dataset, {}))
            if not points:
                continue
            shots = [s for s, _ in points]
            mean = [v[0] for _, v in points]
            std = [v[1] for _, v in points]
            ax.plot(shots, mean, marker="o", color=color, label=method)
            ax.fill_between(shots, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.2)
        if ticks:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_title(dataset)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def base_novel_bars(table: dict, path: Path) -> Path:
    """Average (or single-dataset) base, novel and harmonic-mean accuracy per method."""
    methods = sorted(m for m, _ in table)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(methods)), 3.5))
    width = 0.8 / 3
    for k, metric in enumerate(("base_acc", "novel_acc", "hm")):
        values = []
        for method in methods:
            rows = next(r for (m, _), r in table.items() if m == method)
            row = rows.get(AVERAGE) or next(iter(rows.values()))
            values.append(row[metric][0] if metric in row else 0.0)
        ax.bar([i + (k - 1) * width for i in range(len(methods))], values, width, label=metric)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(root: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the plots that the results under ``root`` support; returns their paths."""
    results = collect(root)
    if not results:
        raise UserError(f"no result.json under {root}")
    out = Path(out_dir or Path(root) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    b2n = [r for r in results if "base_acc" in r["metrics"]]
    few = [r for r in results if "acc" in r["metrics"]]
    if few:
        paths.append(fewshot_curves(aggregate(few), out / "fewshot_curves.png"))
    if b2n:
        paths.append(base_novel_bars(aggregate(b2n), out / "base_novel.png"))
    return paths
