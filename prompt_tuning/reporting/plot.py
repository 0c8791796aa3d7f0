"""`prompt-tuning plot DIR`: few-shot curves and base-to-novel bars from the result.json files under DIR.

Figures a paper can use: PNG (``--dpi``), PDF (TrueType fonts) or SVG, a paper column (3.3 in) or page (6.9 in)
wide; methods under their display names and in their own colour in every figure (`prompt_tuning.reporting.style`),
zero-shot CLIP first; datasets under their display names in the papers' order. Few-shot curves have a band of one
standard deviation over seeds, zero-shot CLIP is a dashed horizontal line; base / novel / HM bars have error bars.
An average over datasets is drawn only when every dataset it needs has a result: otherwise the point is left out
(curves) or the bar is an empty hatched box (bars), and a note in the figure says which. The caption (what bands
and bars show) goes to a ``.txt`` beside the figure, or into it with ``caption=True``.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prompt_tuning.core.errors import UserError  # noqa: E402
from prompt_tuning.reporting.names import dataset_name, key_order, method_name, ordered_datasets  # noqa: E402
from prompt_tuning.reporting.results import AVERAGE, aggregate, collect  # noqa: E402
from prompt_tuning.reporting.style import STYLE, figure_width, method_colors  # noqa: E402

FORMATS = ("png", "pdf", "svg")
BARS = {"base_acc": "Base", "novel_acc": "Novel", "hm": "HM"}
CAPTION = "caption"  # gid of the caption text of a figure


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


def _datasets(table: dict) -> list[str]:
    return ordered_datasets(d for rows in table.values() for d in rows if d != AVERAGE)


def _panel_title(dataset: str, datasets: list[str], display: dict | None) -> str:
    return f"Average over {len(datasets)} datasets" if dataset == AVERAGE else dataset_name(dataset, display)


def _missing_note(missing: dict[str, list]) -> str:
    """``Average not drawn for CoOp (4, 8 shots), CoCoOp: ...``, from ``{method name: [shots or None]}``."""
    parts = [name + (f" ({', '.join(map(str, shots))} shots)" if any(s is not None for s in shots) else "")
             for name, shots in missing.items()]
    return "Average not drawn for " + ", ".join(parts) + ": a dataset of the average has no result."


def curves_figure(table: dict, display: dict | None = None, published: dict | None = None,
                  width: str | float = "page", caption: bool = False):
    """One panel per dataset (and the average): accuracy against shots, a line per method with a band of one
    standard deviation over seeds; methods without shots (zero-shot CLIP) are a dashed horizontal line; the
    experiment's published numbers, where it has them, are crosses on a dotted line in the method's colour. A
    missing result is a gap in its line, never a value."""
    with plt.rc_context(STYLE):
        return _curves(table, display, published, figure_width(width), caption)


def _curves(table, display, published, width, caption):
    methods = list(dict.fromkeys(m for m, _ in sorted(table, key=key_order)))
    colors = method_colors(methods)
    datasets = _datasets(table)
    panels = datasets + ([AVERAGE] if len(datasets) > 1 else [])
    ticks = sorted({s for (_, s) in table if s is not None})
    cols = min(len(panels), 4 if width > 5 else 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * min(width / cols * 0.78, 2.2) + 0.5),
                             squeeze=False, layout="constrained")
    missing: dict[str, list] = {}  # method name -> shots (None: no shots) whose average is not drawn
    for ax, dataset in zip(axes.flat, panels):
        for method in methods:
            gaps = _draw_runs(ax, table, method, dataset, ticks, colors[method], method_name(method, display))
            if dataset == AVERAGE and gaps:
                missing.setdefault(method_name(method, display), []).extend(gaps)
        for method in dict.fromkeys(m.split("[")[0] for m in methods):  # once per method, not per variant
            _draw_published(ax, _published_points(published, method, dataset), ticks,
                            colors.get(method) or method_colors([method])[method],
                            f"{method_name(method, display)} (published)")
        if ticks:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_title(_panel_title(dataset, datasets, display))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.supxlabel("Shots per class", fontsize=STYLE["axes.labelsize"])
    fig.supylabel("Accuracy (%)", fontsize=STYLE["axes.labelsize"])
    _legend(fig, axes.flat, width)
    shown = published and any(_published_points(published, m, d) is not None for m in methods for d in panels)
    _footer(fig, [_missing_note(missing) if missing else None],
            f"Lines: mean over {_seeds(table)}; bands: ±1 std over seeds; dashed: methods without training shots "
            "(zero-shot CLIP)" + ("; dotted, crosses: published numbers, in the method's colour" if shown else "")
            + ".", caption)
    return fig


def _draw_runs(ax, table: dict, method: str, dataset: str, ticks: list[int], color: str, name: str) -> list:
    """A method's results on one panel: a dashed line without shots, else a curve with its band, broken where a
    result is missing. Returns the shots (None: the dashed line) of the expected results that are missing."""
    if (method, None) in table:
        flat = table[(method, None)].get(dataset, {}).get("acc")
        if flat is None:
            return [None]
        ax.axhline(flat[0], color=color, linestyle="--", label=name)
    points = [(s, table[(method, s)].get(dataset, {}).get("acc")) for s in ticks if (method, s) in table]
    if all(v is None for _, v in points):
        return [s for s, _ in points]
    xs = [s for s, _ in points]
    mean = [math.nan if v is None else v[0] for _, v in points]
    std = [math.nan if v is None else v[1] for _, v in points]
    ax.plot(xs, mean, marker="o", color=color, label=name)
    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color,
                    alpha=0.2, linewidth=0)
    return [s for s, v in points if v is None]


def _draw_published(ax, pub: dict | float | None, ticks: list[int], color: str, label: str) -> None:
    if isinstance(pub, dict) and pub:
        xs = sorted(s for s in pub if s in ticks) or sorted(pub)
        ax.plot(xs, [pub[s] for s in xs], linestyle=":", marker="x", color=color, label=label)
    elif isinstance(pub, float):
        ax.axhline(pub, color=color, linestyle=":", linewidth=1, label=label)


def _legend(fig, axes, width: float) -> None:
    """One legend for the figure, above the panels, outside every axes."""
    seen: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        cols = min(len(seen), 6 if width > 5 else 2)
        # matplotlib fills a legend column by column: hand it the entries so that rows read in table order
        order = [i for j in range(cols) for i in range(j, len(seen), cols)]
        handles, labels = list(seen.values()), list(seen)
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside upper center", ncol=cols,
                   frameon=False, handlelength=1.8, columnspacing=1.2)


def _footer(fig, notes: list[str | None], caption: str, show_caption: bool) -> None:
    """Notes under the figure (always shown: they say what is not drawn), then the caption: in the image with
    ``show_caption``, else kept as a hidden text for `caption_of` and the ``.txt`` beside the figure."""
    chars = max(40, int(fig.get_figwidth() * 72 / (STYLE["font.size"] * 0.5)))
    line = STYLE["font.size"] * 1.35 / (fig.get_figheight() * 72)  # one text line, in figure heights
    y = -0.3 * line
    for text, kind in [(n, "note") for n in notes if n] + [(caption, CAPTION)]:
        wrapped = textwrap.fill(text, chars)
        visible = kind == "note" or show_caption
        fig.text(0.5 if kind == CAPTION else 0.0, y, wrapped, ha="center" if kind == CAPTION else "left", va="top",
                 fontsize=STYLE["font.size"] - (kind == "note"), style="italic" if kind == "note" else "normal",
                 gid=kind, visible=visible)
        y -= (wrapped.count("\n") + 1.4) * line if visible else 0


def caption_of(fig) -> str:
    """The caption a figure carries (shown in it or not)."""
    return next(t.get_text().replace("\n", " ") for t in fig.texts if t.get_gid() == CAPTION)


def _bar_label(key: tuple, usual: int | None, display: dict | None) -> str:
    method, shots = key
    return method_name(method, display) + ("" if shots in (None, usual) else f" ({shots} shots)")


def bars_figure(table: dict, display: dict | None = None, width: str | float = "column", caption: bool = False):
    """Base, novel and harmonic-mean accuracy, a bar per method in its colour, of the average over datasets (or
    of the single dataset), with error bars (±1 std over seeds for a single dataset; the spread of per-dataset
    means is not a seed std, so averages show none). A method whose average lacks a dataset, or a metric, gets an
    empty hatched box across the axes instead of a bar."""
    with plt.rc_context(STYLE):
        return _bars(table, display, figure_width(width), caption)


def _bars(table, display, width, caption):
    keys = sorted(table, key=key_order)
    colors = method_colors(m for m, _ in keys)
    datasets = _datasets(table)
    where = datasets[0] if len(datasets) == 1 else AVERAGE
    usual = Counter(s for _, s in keys if s is not None).most_common(1)
    usual = usual[0][0] if usual else None
    values = {(k, m): table[k].get(where, {}).get(m) for k in keys for m in BARS}
    shown = [v[0] + (v[1] if where != AVERAGE else 0) for v in values.values() if v is not None]
    low = max(0.0, 10 * math.floor((min(shown, default=0.0) - 5) / 10))
    high = min(100.0, 5 * math.ceil((max(shown, default=100.0) + 3) / 5))
    fig, ax = plt.subplots(figsize=(width, min(2.6, 0.62 * width + 0.6)), layout="constrained")
    step = 0.8 / len(keys)
    missing = {}
    for i, key in enumerate(keys):
        label = _bar_label(key, usual, display)
        xs = [g - 0.4 + step * (i + 0.5) for g in range(len(BARS))]
        have = [(x, values[key, m]) for x, m in zip(xs, BARS) if values[key, m] is not None]
        if have:
            errors = [v[1] if where != AVERAGE and v[2] > 1 else 0.0 for _, v in have]
            ax.bar([x for x, _ in have], [v[0] for _, v in have], step * 0.9, color=colors[key[0]], label=label,
                   yerr=errors if any(errors) else None, capsize=1.5, error_kw={"elinewidth": 0.6})
        gaps = [x for x, m in zip(xs, BARS) if values[key, m] is None]
        if gaps:
            missing[label] = [BARS[m] for m in BARS if values[key, m] is None]
            ax.bar(gaps, [high - low] * len(gaps), step * 0.9, bottom=low, facecolor="none",
                   edgecolor=colors[key[0]], hatch="////", linewidth=0.6, gid="missing",
                   label=None if have else label)
            for x in gaps:
                ax.text(x, (low + high) / 2, "missing", rotation=90, ha="center", va="center", fontsize=6,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_xticks(range(len(BARS)), list(BARS.values()))
    ax.set_ylim(low, high)
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(_panel_title(where, datasets, display))
    ax.grid(axis="y", alpha=0.3)
    _legend(fig, [ax], width)
    note = None
    if missing:
        note = ("Hatched: missing, " + ("a dataset of the average or the metric has no result: " if where == AVERAGE
                                        else "no result: ") + ", ".join(missing) + ".")
    what = (f"error bars: ±1 std over {_seeds(table)}" if where != AVERAGE else
            "averages over datasets of the seed means (no error bars: their spread is not a seed std)")
    _footer(fig, [note], f"Base and novel accuracy and their harmonic mean; {what}.", caption)
    return fig


def _save(fig, path: Path, dpi: int) -> Path:
    try:
        with plt.rc_context(STYLE):
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
        path.with_suffix(".txt").write_text(caption_of(fig) + "\n")
    except OSError as e:  # a read-only folder, a full disk
        raise UserError(f"cannot write the figure {path}: {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return path


def fewshot_curves(table: dict, path: Path, display: dict | None = None, dpi: int = 150,
                   published: dict | None = None, width: str | float = "page", caption: bool = False) -> Path:
    return _save(curves_figure(table, display, published, width, caption), path, dpi)


def base_novel_bars(table: dict, path: Path, display: dict | None = None, dpi: int = 150,
                    width: str | float = "column", caption: bool = False) -> Path:
    return _save(bars_figure(table, display, width, caption), path, dpi)


def plot(root: str | os.PathLike, out_dir: str | os.PathLike | None = None, fmt: str = "png", dpi: int = 150,
         display: dict | None = None, published: dict | None = None, results: list[dict] | None = None,
         expected: dict | None = None, width: str | float | None = None, caption: bool = False) -> list[Path]:
    """Write the figures that the results under ``root`` support (with the experiment's ``published`` numbers
    where given; ``results``: those to draw, default every result under ``root``; ``expected``: the runs the
    experiment expects, `prompt_tuning.config.experiment.expected_runs`, so that an average missing one is drawn
    as missing; ``width``: ``column``, ``page`` or inches, default page for curves of several datasets and column
    for one dataset's curves and for bars; each
    figure's caption goes to a ``.txt`` beside it, and into it with ``caption``); returns the figures' paths."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if dpi < 10:
        raise UserError(f"--dpi {dpi}: expected at least 10")
    if width is not None:
        figure_width(width)  # a bad width is said before anything is drawn
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
        table = aggregate(few, expected)
        panels = len({d for rows in table.values() for d in rows})  # the datasets and their average
        paths.append(fewshot_curves(table, out / f"fewshot_curves.{fmt}", display, dpi, published,
                                    width or ("page" if panels > 2 else "column"), caption))
    if b2n:
        paths.append(base_novel_bars(aggregate(b2n, expected), out / f"base_novel.{fmt}", display, dpi,
                                     width or "column", caption))
    return paths
