"""Results of many runs: every ``result.json`` under a folder, the mean and std over seeds, and tables against
published numbers."""

from __future__ import annotations

import os
from pathlib import Path

from prompt_tuning.core.errors import UserError
from prompt_tuning.reporting.formats import FORMATS, csv_text, latex, markdown
from prompt_tuning.reporting.names import TRAINS_NOTHING
from prompt_tuning.runs.folder import RunFolder, read_record
from prompt_tuning.runs.metrics import harmonic_mean

# ------------------------------------------------------------------------------------------- aggregation
MAIN_METRICS = ("acc", "base_acc", "novel_acc", "hm", "targets_avg")
AVERAGE = "average"


def collect(root: str | os.PathLike, wanted: dict[str, str] | None = None, ignored: list | None = None) -> list[dict]:
    """Every readable ``result.json`` under ``root``; with ``wanted`` (run folder relative to ``root`` -> run
    hash, `prompt_tuning.config.experiment.grid_hashes`) only the experiment's runs of that configuration, the
    others appended to ``ignored`` as ``(path, why)`` (a backup copy, a hand-made run at another setting)."""
    root, out, skipped = Path(root), [], []
    for path in sorted(root.rglob(RunFolder.RESULT)):
        result = read_record(path, ("method", "dataset", "metrics"))
        where = str(path.parent.relative_to(root))
        if result is None:
            skipped.append((path, "damaged"))
        elif wanted is not None and where not in wanted:
            skipped.append((path, "not a run of the experiment's grid"))
        elif wanted is not None and result.get("config_hash") != wanted[where]:
            skipped.append((path, f"run hash {result.get('config_hash')}, the grid's is {wanted[where]}"))
        else:
            out.append(result)
    if ignored is not None:
        ignored.extend(skipped)
    return out


def method_label(result: dict) -> str:
    """The method name plus its tags (ablation variant), e.g. ``coop[n_ctx=4]``."""
    tags = result.get("tags") or {}
    return result["method"] + (f"[{','.join(f'{k}={v}' for k, v in sorted(tags.items()))}]" if tags else "")


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def shots_of(result: dict) -> int | None:
    """The shots a result was trained with; None for a method that trains nothing (zero-shot CLIP), whose
    numbers do not depend on the shots (results written before ``trainable`` existed: ``epochs == 0``)."""
    trainable = result.get("trainable", result.get("epochs", 1) > 0)
    return result["shots"] if trainable else None


def aggregate(results: list[dict], expected: dict | None = None) -> dict:
    """Mean and std over seeds, per (method, shots, dataset, metric), plus the across-dataset average.

    Returns ``{(method, shots): {dataset: {metric: (mean, std, n_seeds)}}}``; ``shots`` is None for methods that
    train nothing (zero-shot CLIP: one entry per dataset and seed, whatever shots its runs were given). At every
    level ``hm`` is the harmonic mean of the seed-averaged (then dataset-averaged) base and novel accuracies, as
    the papers compute it; its std is that of the per-seed HMs. The average row takes the mean of the
    per-dataset means, only where every dataset has the metric. ``expected`` (``{(method, shots): [datasets]}``)
    adds the missing ones as empty entries, so they show as missing, never as zero; without it, an average needs
    every dataset of any result (a method run on one of two datasets has no average). Methods that train nothing
    (`TRAINS_NOTHING`, or runs that say so) get one entry without shots even before they ran.
    """
    groups: dict = {}
    seen = set()
    for r in results:
        shots = shots_of(r)
        label = method_label(r)
        if shots is None:  # the same zero-shot numbers, whatever shots the grid gave the run
            once = (label, r["dataset"], r.get("protocol"), r.get("seed"))
            if once in seen:
                continue
            seen.add(once)
        per_dataset = groups.setdefault((label, shots), {}).setdefault(r["dataset"], {})
        for metric, value in r["metrics"].items():
            if metric in MAIN_METRICS or metric.endswith("/acc"):
                per_dataset.setdefault(metric, []).append(value)
    shotless = {m for m, k in groups if k is None} | set(TRAINS_NOTHING)
    for (method, shots), datasets in (expected or {}).items():
        key = (method, None) if method in shotless else (method, shots)
        for d in datasets:
            groups.setdefault(key, {}).setdefault(d, {})
    every = {d for datasets in groups.values() for d in datasets}
    table = {}
    for key, datasets in groups.items():
        rows = {d: _summary(metrics) for d, metrics in datasets.items()}
        reference = list(rows) if expected else sorted(every)
        metrics = sorted({m for row in rows.values() for m in row})
        complete = [m for m in metrics if all(m in rows.get(d, {}) for d in reference)]
        avg = {m: (sum(rows[d][m][0] for d in reference) / len(reference), 0.0, 0) for m in complete}
        if "base_acc" in avg and "novel_acc" in avg:
            avg["hm"] = (harmonic_mean(avg["base_acc"][0], avg["novel_acc"][0]), 0.0, 0)
        if len(reference) > 1:
            rows[AVERAGE] = avg
        table[key] = rows
    return table


def _summary(metrics: dict[str, list[float]]) -> dict[str, tuple[float, float, int]]:
    """``{metric: (mean, std, n)}`` over seeds; ``hm`` from the mean base and novel accuracies; with transfer
    targets (``<dataset>/acc``), ``targets_avg``: the mean over targets of their seed means (the papers'
    cross-dataset "Average")."""
    row = {m: (*_mean_std(v), len(v)) for m, v in metrics.items()}
    if "base_acc" in row and "novel_acc" in row and "hm" in row:
        row["hm"] = (harmonic_mean(row["base_acc"][0], row["novel_acc"][0]), row["hm"][1], row["hm"][2])
    targets = [v for m, v in row.items() if m.endswith("/acc")]
    if targets:
        row["targets_avg"] = (sum(t[0] for t in targets) / len(targets), 0.0, min(t[2] for t in targets))
    return row


def published_value(published: dict | None, method: str, dataset: str, metric: str,
                    shots: int | None = None) -> float | None:
    """A published number: ``values[method][dataset][metric]``, either one number or a mapping from shots to
    numbers (few-shot tables: ``acc: {1: 61.3, 2: 62.7, ...}``)."""
    values = (published or {}).get("values", {})
    try:
        value = values[method.split("[")[0]][dataset][metric]
        if isinstance(value, dict):
            value = value[shots]
        return float(value)
    except (KeyError, TypeError, ValueError):
        return None


def _metric_order(m: str) -> tuple:
    return (m not in MAIN_METRICS, MAIN_METRICS.index(m) if m in MAIN_METRICS else 0, m)


def _cell(value: tuple[float, float, int], seeds: int | None) -> str:
    """``mean ± std (n)``; with fewer seeds than the experiment asks, ``mean (n=1/3)`` (no std of too few);
    an average over datasets (n = 0) is its mean alone."""
    mean, std, n = value
    if n == 0:
        return f"{mean:.2f}"
    if seeds and n < seeds:
        return f"{mean:.2f} (n={n}/{seeds})"
    return f"{mean:.2f} ± {std:.2f} ({n})"


def format_table(table: dict, fmt: str = "md", published: dict | None = None, seeds: int | None = None) -> str:
    """Rows of method, shots, dataset; per metric ``mean ± std (seeds)``, the published number and the gap.

    ``seeds``: the seeds the experiment asks for; a cell with fewer shows ``n=1/3``. The CSV has separate
    columns per metric: mean, std, n, published, diff (empty where there is nothing). Metrics that only the
    published numbers have still get columns, so an experiment without finished runs shows what it expects.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose md, csv or latex")
    metrics = {m for rows in table.values() for row in rows.values() for m in row}
    for (method, _), rows in table.items():
        for dataset in rows:
            values = ((published or {}).get("values") or {}).get(method.split("[")[0], {}) or {}
            metrics |= set(values.get(dataset) or {})
    metrics = sorted(metrics, key=_metric_order)
    header = ["method", "shots", "dataset"]
    for m in metrics:
        if fmt == "csv":
            header += [f"{m} mean", f"{m} std", f"{m} n"] + ([f"{m} published", f"{m} diff"] if published else [])
        else:
            header += [m] + ([f"{m} (published)", f"{m} (diff)"] if published else [])
    lines = []
    for (method, shots), rows in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        names = sorted(d for d in rows if d != AVERAGE) + ([AVERAGE] if AVERAGE in rows else [])
        for dataset in names:
            row = rows[dataset]
            cells = [method, "-" if shots is None else str(shots), dataset]
            for m in metrics:
                value = row.get(m)
                pub = published_value(published, method, dataset, m, shots) if published else None
                diff = f"{value[0] - pub:+.2f}" if value is not None and pub is not None else ""
                if fmt == "csv":
                    cells += ([f"{value[0]:.4f}", f"{value[1]:.4f}" if value[2] > 1 else "", str(value[2])]
                              if value is not None else ["", "", "0"])
                    cells += [f"{pub:.2f}" if pub is not None else "", diff] if published else []
                    continue
                cells.append(_cell(value, seeds) if value is not None else "missing")
                if published:
                    cells += ["not published" if pub is None else f"{pub:.2f}", diff]
            lines.append(cells)
    if fmt == "csv":
        return csv_text(header, lines)
    notes = [long_note(seeds)]
    if fmt == "latex":
        return latex(header, lines, "".join("l" if h in ("method", "dataset") else "r" for h in header), notes)
    source = (published or {}).get("source")
    return markdown(header, lines, notes=notes + ([f"Published numbers: {source}"] if source else []))


def long_note(seeds: int | None) -> str:
    """What the cells of the long layout say."""
    fewer = f"; n=1/{seeds}: fewer seeds than the {seeds} asked (no std)" if seeds else ""
    return ("Cells: mean ± std over seeds, (n): the number of seeds" + fewer + "; average: the mean over the "
            "datasets of their seed means; missing: a run the experiment expects, without a result.")
