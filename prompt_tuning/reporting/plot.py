"""`prompt-tuning plot DIR`: few-shot curves and base-to-novel bars from the result.json files under DIR.

Figures a paper can use: PNG (``--dpi``), PDF or SVG; methods under their display names (the experiment's
``display:`` map, else the papers' spelling); few-shot curves with a band of one standard deviation over seeds,
zero-shot CLIP as a dashed horizontal line; base / novel / HM bars with error bars; a caption line saying what
the band and the bars show; legends outside the axes, so they never cover data.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prompt_tuning.core.errors import UserError  # noqa: E402
from prompt_tuning.reporting.results import AVERAGE, aggregate, collect  # noqa: E402

FORMATS = ("png", "pdf", "svg")
DISPLAY = {  # the papers' spelling; an experiment's `display:` map overrides it
    "zeroshot": "Zero-shot CLIP", "coop": "CoOp", "coop_csc": "CoOp (CSC)", "cocoop": "CoCoOp",
    "kgcoop": "KgCoOp", "prograd": "ProGrad", "bayesian": "BPL", "bayesian_conditional": "BPL (conditional)",
    "eco": "ECO", "linear_probe": "Linear probe CLIP", "clip_adapter": "CLIP-Adapter", "tip_adapter": "Tip-Adapter",
    "tip_adapter_f": "Tip-Adapter-F",
}


def display_name(label: str, display: dict | None = None) -> str:
    """``coop[n_ctx=4]`` -> ``CoOp (n_ctx=4)``; an entry of ``display`` for the full label or the method wins."""
    display = {**DISPLAY, **(display or {})}
    if label in display:
        return str(display[label])
    method, _, variant = label.partition("[")
    name = str(display.get(method, method))
    return f"{name} ({variant.rstrip(']').replace(',', ', ')})" if variant else name


def _seeds(table: dict) -> str:
    """``3 seeds`` or ``1-3 seeds``: the seed counts behind the cells of ``table``."""
    counts = sorted({v[2] for rows in table.values() for row in rows.values() for v in row.values() if v[2]})
    if not counts:
        return "seeds"
    return f"{counts[0]} seed{'s' * (counts[0] > 1)}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"


def _published_points(published: dict | None, method: str, dataset: str) -> dict | float | None:
    """The published ``acc`` of a method on a dataset: ``{shots: value}`` (few-shot tables) or one number."""
    values = ((published or {}).get("values") or {}).get(method.split("[")[0]) or {}
    acc = (values.get(dataset) or {}).get("acc")
    if isinstance(acc, dict):
        return {int(k): float(v) for k, v in acc.items()}
    return float(acc) if isinstance(acc, int | float) else None


def curves_figure(table: dict, display: dict | None = None, published: dict | None = None):
    """One panel per dataset (and the average): accuracy against shots, a line per method with a band of one
    standard deviation over seeds; methods without shots (zero-shot CLIP) are a dashed horizontal line; the
    experiment's published numbers, where it has them, are crosses on a dotted line in the method's colour."""
    methods = sorted({m for m, _ in table})
    datasets = sorted({d for rows in table.values() for d in rows if d != AVERAGE})
    panels = datasets + ([AVERAGE] if len(datasets) > 1 else [])
    ticks = sorted({s for (_, s) in table if s is not None})
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.9), squeeze=False)
    for ax, dataset in zip(axes.flat, panels):
        for k, method in enumerate(methods):
            color, name = f"C{k % 10}", display_name(method, display)
            flat = table.get((method, None), {}).get(dataset, {}).get("acc")
            if flat is not None:
                ax.axhline(flat[0], color=color, linestyle="--", label=name)
            points = sorted((shots, rows_[dataset]["acc"]) for (m, shots), rows_ in table.items()
                            if m == method and shots is not None and "acc" in rows_.get(dataset, {}))
            if not points:
                continue
            shots = [s for s, _ in points]
            mean = [v[0] for _, v in points]
            std = [v[1] for _, v in points]
            ax.plot(shots, mean, marker="o", markersize=4, color=color, label=name)
            ax.fill_between(shots, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.2, linewidth=0)
        for k, method in enumerate(methods):
            pub = _published_points(published, method, dataset)
            color, label = f"C{k % 10}", f"{display_name(method, display)} (published)"
            if isinstance(pub, dict) and pub:
                xs = sorted(s for s in pub if s in ticks) or sorted(pub)
                ax.plot(xs, [pub[s] for s in xs], linestyle=":", marker="x", markersize=5, color=color, label=label)
            elif isinstance(pub, float):
                ax.axhline(pub, color=color, linestyle=":", linewidth=1, label=label)
        if ticks:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_title("Average" if dataset == AVERAGE else dataset)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _legend_below(fig, axes.flat[0])
    shown = published and any(_published_points(published, m, d) is not None for m in methods for d in panels)
    _caption(fig, f"Lines: mean over {_seeds(table)}; bands: ±1 std over seeds; dashed: methods without "
             "training shots (zero-shot CLIP)" + ("; dotted, crosses: published numbers, in the method's colour"
                                                  if shown else "") + ".")
    return fig


def _caption(fig, text: str) -> None:
    """A caption line (wrapped to the figure's width) under the axes."""
    width = max(40, int(fig.get_figwidth() * 15))
    wrapped = textwrap.fill(text, width)
    fig.text(0.5, 0.005, wrapped, ha="center", va="bottom", fontsize=8)
    bottom = (wrapped.count("\n") + 1) * 11 / (fig.get_figheight() * 72) + 0.02  # 8 pt lines, 11 pt apart
    fig.tight_layout(rect=(0, bottom, 1, 0.90))  # the axes (and their x label) end above the caption


def _legend_below(fig, ax) -> None:
    """One legend for the figure, in its own strip under the title row, outside every axes."""
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.tight_layout(rect=(0, 0.05, 1, 0.90))
    fig.legend(seen.values(), seen.keys(), loc="upper center", ncol=min(len(seen), 5), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1.0))


def bars_figure(table: dict, display: dict | None = None):
    """Average (or single-dataset) base, novel and harmonic-mean accuracy per method, with error bars (±1 std
    over seeds for a single dataset; the spread of per-dataset means is not a seed std, so averages show none)."""
    keys = sorted(table, key=lambda k: (k[0], k[1] or 0))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(keys) + 1.5), 3.8))
    width = 0.8 / 3
    single = True
    for k, metric in enumerate(("base_acc", "novel_acc", "hm")):
        values, errors = [], []
        for key in keys:
            rows = table[key]
            single = single and AVERAGE not in rows
            row = rows.get(AVERAGE) or next(iter(rows.values()))
            value = row.get(metric, (0.0, 0.0, 0))
            values.append(value[0])
            errors.append(value[1] if value[2] > 1 else 0.0)
        x = [i + (k - 1) * width for i in range(len(keys))]
        ax.bar(x, values, width, yerr=errors if any(errors) else None, capsize=3,
               label={"base_acc": "Base", "novel_acc": "Novel", "hm": "HM"}[metric])
    names = [display_name(m, display) + ("" if s in (None, 16) else f"\n{s} shots") for m, s in keys]
    ax.set_xticks(range(len(keys)), names, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, ax)
    what = (f"error bars: ±1 std over {_seeds(table)}" if single else
            "averages over datasets of the seed means (no error bars: their spread is not a seed std)")
    _caption(fig, f"Base and novel accuracy and their harmonic mean; {what}.")
    return fig


def _save(fig, path: Path, dpi: int) -> Path:
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    except OSError as e:  # a read-only folder, a full disk
        raise UserError(f"cannot write the figure {path}: {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return path


def fewshot_curves(table: dict, path: Path, display: dict | None = None, dpi: int = 150,
                   published: dict | None = None) -> Path:
    return _save(curves_figure(table, display, published), path, dpi)


def base_novel_bars(table: dict, path: Path, display: dict | None = None, dpi: int = 150) -> Path:
    return _save(bars_figure(table, display), path, dpi)


def plot(root: str | os.PathLike, out_dir: str | os.PathLike | None = None, fmt: str = "png", dpi: int = 150,
         display: dict | None = None, published: dict | None = None, results: list[dict] | None = None) -> list[Path]:
    """Write the figures that the results under ``root`` support (with the experiment's ``published`` numbers
    where given; ``results``: those to draw, default every result under ``root``); returns their paths."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if dpi < 10:
        raise UserError(f"--dpi {dpi}: expected at least 10")
    results = collect(root) if results is None else results
    if not results:
        raise UserError(f"no result.json under {root}")
    out = Path(out_dir or Path(root) / "plots")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the figures")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the figures to {out}: {e.strerror}") from e
    paths = []
    b2n = [r for r in results if "base_acc" in r["metrics"]]
    few = [r for r in results if "acc" in r["metrics"]]
    if few:
        paths.append(fewshot_curves(aggregate(few), out / f"fewshot_curves.{fmt}", display, dpi, published))
    if b2n:
        paths.append(base_novel_bars(aggregate(b2n), out / f"base_novel.{fmt}", display, dpi))
    return paths
