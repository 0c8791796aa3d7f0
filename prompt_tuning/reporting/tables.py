"""The wide layout of a result table, as the papers print them.

Accuracy experiments (few-shot, cross-dataset, domain generalisation, ablations): one row per method (and shots,
where the table has several), one column per dataset in the papers' order, then the average over datasets;
cross-dataset results get the source, each target and the targets' average (CoCoOp's Table 2). Base-to-novel
experiments: one block per dataset, the average first, each a row per method with Base, Novel and HM columns
(CoCoOp's Table 1 grid); as CSV, one row per method with every block's three columns side by side.

Cells hold the mean over seeds; the best value of each column is bold; a published row follows each method the
experiment has published numbers for; notes under the table say what the marks mean. The long layout
(`prompt_tuning.reporting.results.format_table`) keeps std and seed count per cell.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from prompt_tuning.core.errors import UserError
from prompt_tuning.reporting.formats import FORMATS, csv_text, latex, markdown, tex
from prompt_tuning.reporting.names import dataset_name, key_order, method_name, ordered_datasets
from prompt_tuning.reporting.results import AVERAGE, published_value

B2N = {"base_acc": "Base", "novel_acc": "Novel", "hm": "HM"}


@dataclass(frozen=True)
class Column:
    dataset: str
    metric: str
    title: str


@dataclass
class Cell:
    text: str  # the number, "missing", or "–" (not published)
    note: str = ""  # "(n=1/3)", "†"
    best: bool = False

    def render(self, fmt: str) -> str:
        if fmt == "csv":
            return "" if self.text in ("missing", "–") else self.text
        if fmt == "latex":
            return (rf"\textbf{{{self.text}}}" if self.best else tex(self.text)) + tex(self.note)
        return (f"**{self.text}**" if self.best else self.text) + self.note


def _is_accuracy(metric: str) -> bool:
    return metric in ("acc", "targets_avg") or metric.endswith("/acc")


def _metrics(table: dict, dataset: str, published: dict | None) -> set[str]:
    """Every metric of ``dataset`` in the table or in the published numbers of the table's methods."""
    found = {m for rows in table.values() for m in rows.get(dataset, {})}
    values = (published or {}).get("values") or {}
    for method, _ in table:
        found |= set((values.get(method.split("[")[0]) or {}).get(dataset) or {})
    return found


def accuracy_columns(table: dict, published: dict | None, display: dict | None) -> list[Column]:
    """Columns of an accuracy table: per dataset its accuracy, then its transfer targets and their average;
    then the average over datasets."""
    datasets = ordered_datasets(d for rows in table.values() for d in rows if d != AVERAGE)
    metrics = {d: {m for m in _metrics(table, d, published) if _is_accuracy(m)} for d in datasets}
    sources = [d for d in datasets if metrics[d]]
    cols = []
    for d in sources:
        prefix = "" if len(sources) == 1 else f"{dataset_name(d, display)} → "
        if "acc" in metrics[d]:
            cols.append(Column(d, "acc", dataset_name(d, display)))
        targets = ordered_datasets(m.removesuffix("/acc") for m in metrics[d] if m.endswith("/acc"))
        cols += [Column(d, f"{t}/acc", prefix + dataset_name(t, display)) for t in targets]
        if "targets_avg" in metrics[d]:
            cols.append(Column(d, "targets_avg", prefix + "Average"))
    if sum("acc" in metrics[d] for d in sources) > 1 and any(AVERAGE in rows for rows in table.values()):
        cols.append(Column(AVERAGE, "acc", "Average"))
    return cols


def base_novel_blocks(table: dict, published: dict | None, display: dict | None) -> list[list[Column]]:
    """One block of Base / Novel / HM columns per dataset, the average over datasets first."""
    datasets = ordered_datasets(d for rows in table.values() for d in rows if d != AVERAGE)
    shown = [d for d in datasets if set(B2N) & _metrics(table, d, published)]
    if not shown:
        return []
    blocks = [AVERAGE] if len(datasets) > 1 else []
    blocks += shown
    return [[Column(b, m, f"Average over {len(datasets)} datasets" if b == AVERAGE else dataset_name(b, display))
             for m in B2N] for b in blocks]


def _short(rows: dict, metric: str, asked: int) -> list[tuple[str, int]]:
    """The datasets behind an average whose ``metric`` (for HM: base and novel) has fewer seeds than asked."""
    parts = ("base_acc", "novel_acc") if metric == "hm" else (metric,)
    out = []
    for d in ordered_datasets(d for d in rows if d != AVERAGE):
        n = min((rows[d][p][2] for p in parts if p in rows[d]), default=asked)
        if n < asked:
            out.append((d, n))
    return out


@dataclass
class Grid:
    """The rows of a wide table (method rows and published rows) over some columns, with what its notes need."""

    cols: list[Column]
    header: list[str]
    rows: list[list[Cell | str]]
    align: str
    short: dict  # row label -> [(dataset, n)] behind a flagged average
    missing: bool = False
    published: bool = False


def _grid(table: dict, cols: list[Column], published: dict | None, asked: int | None, display: dict | None,
          first: str, with_shots: bool, titles: list[str] | None = None) -> Grid:
    keys = sorted(table, key=key_order)
    label = {k: method_name(k[0], display) for k in keys}
    grid = Grid(cols, [first] + (["Shots"] if with_shots else []) + (titles or [c.title for c in cols]), [],
                "l" + "r" * (with_shots + len(cols)), {})
    cells = {}
    for k in keys:
        for c in cols:
            value = table[k].get(c.dataset, {}).get(c.metric)
            if value is None:
                cells[k, c] = Cell("missing")
                grid.missing = True
                continue
            mean, _, n = value
            cell = Cell(f"{mean:.2f}", f" (n={n}/{asked})" if n and asked and n < asked else "")
            short = _short(table[k], c.metric, asked) if c.dataset == AVERAGE and asked else []
            if short:
                cell.note += "†"
                grid.short.setdefault(label[k] + (f", {k[1]} shots" if with_shots and k[1] else ""), short)
            cells[k, c] = cell
    by_shots = _shots_axis(table)
    for c in cols:
        _mark_best({k: cells[k, c] for k in keys}, by_shots)
    for k in keys:
        shots = (["-" if k[1] is None else str(k[1])] if with_shots else [])
        grid.rows.append([label[k], *shots, *(cells[k, c] for c in cols)])
        pubs = [published_value(published, k[0], c.dataset, c.metric, k[1]) for c in cols]
        if any(p is not None for p in pubs):
            grid.published = True
            grid.rows.append([f"{label[k]} (published)", *shots, *(Cell("–" if p is None else f"{p:.2f}")
                                                                   for p in pubs)])
    return grid


def _shots_axis(table: dict) -> bool:
    """The shots are an axis of the table (a method at several), not only a recipe's choice (ProGrad's 4)."""
    per_method = Counter(m for m, s in table if s is not None)
    return any(n > 1 for n in per_method.values())


def _mark_best(cells: dict, by_shots: bool) -> None:
    """Bold the best value of a column where at least two compete: with ``by_shots``, among the rows of each
    number of shots (methods without shots compete in every group), else among all rows."""
    values = {k: float(c.text) for k, c in cells.items() if c.text != "missing"}
    for shots in ({s for _, s in values if s is not None} if by_shots else set()) or {None}:
        group = {k: v for k, v in values.items() if not by_shots or k[1] in (shots, None)}
        if len(group) > 1:
            top = max(group.values())
            for k, v in group.items():
                cells[k].best |= v == top


def _notes(grids: list[Grid], seeds: int | None, asked: int | None, by_shots: bool, b2n: bool,
           published: dict | None, display: dict | None) -> list[str]:
    flagged = any("(n=" in c.note for g in grids for row in g.rows for c in row if isinstance(c, Cell))
    cells = f"Cells: the mean over the {seeds} seeds asked" if seeds else "Cells: the mean over seeds"
    if flagged:
        cells += f"; (n=k/{asked}): over k of the {asked} seeds " + ("asked" if seeds else "of the best-covered cell")
    if any(c.dataset == AVERAGE for g in grids for c in g.cols):
        cells += (". Average: the mean over the datasets of their seed means"
                  + (" (HM: the harmonic mean of the average base and novel accuracies)" if b2n else ""))
    if any(c.best for g in grids for row in g.rows for c in row if isinstance(c, Cell)):
        cells += ". Bold: the best of each column" + (" at each number of shots" if by_shots else "")
    notes = [cells + "."]
    short = {who: ds for g in grids for who, ds in g.short.items()}
    if short:
        notes.append(f"†: an average over datasets with fewer seeds than {asked}: " + "; ".join(
            f"{who}: " + ", ".join(f"{dataset_name(d, display)} (n={n})" for d, n in ds) for who, ds in short.items())
            + ".")
    if any(g.missing for g in grids):
        notes.append("missing: a run the experiment expects, without a result (or an average over datasets "
                     "where one is missing).")
    if any(g.published for g in grids):
        source = str((published or {}).get("source") or "").rstrip(".")
        notes.append("(published): the published numbers (–: not published)" + (f"; source: {source}" if source
                                                                                  else "") + ".")
    notes.append("Std and seed counts per cell: the long layout (--layout long).")
    return notes


def wide_table(table: dict, fmt: str = "md", published: dict | None = None, seeds: int | None = None,
               display: dict | None = None) -> str:
    """``table`` (`prompt_tuning.reporting.results.aggregate`) in the wide layout; ``seeds``: the seeds the
    experiment asks for (default: the most any cell has); ``display``: names of methods and datasets."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose md, csv or latex")
    counts = [v[2] for rows in table.values() for row in rows.values() for v in row.values() if v[2]]
    asked = seeds or max(counts, default=None)
    with_shots = len({s for _, s in table if s is not None}) > 1
    acc = accuracy_columns(table, published, display)
    blocks = base_novel_blocks(table, published, display)
    if not acc and not blocks:  # no run finished and nothing published: the expected runs, by accuracy
        acc = accuracy_columns({k: {d: {"acc": None} for d in rows} for k, rows in table.items()}, None, display)
    if fmt == "csv":
        cols = acc + [c for block in blocks for c in block]
        titles = [c.title if c.metric not in B2N else f"{c.title} {B2N[c.metric]}" for c in cols]
        grid = _grid(table, cols, published, asked, display, "method", True, titles)
        rows = [[c.render("csv") if isinstance(c, Cell) else c for c in row] for row in grid.rows]
        return csv_text(["method", "shots", *titles], rows)
    grids = ([_grid(table, acc, published, asked, display, "Method", with_shots)] if acc else [])
    grids += [_grid(table, block, published, asked, display, block[0].title, with_shots, list(B2N.values()))
              for block in blocks]
    if not grids:
        raise UserError("nothing to tabulate yet: no result, and no run the experiment expects")
    notes = _notes(grids, seeds, asked, _shots_axis(table), bool(blocks), published, display)
    parts = []
    for i, g in enumerate(grids):
        rows = [[c.render(fmt) if isinstance(c, Cell) else (tex(c) if fmt == "latex" else c) for c in row]
                for row in g.rows]
        last = notes if i == len(grids) - 1 else []
        if fmt == "latex":
            parts.append(latex([tex(h) for h in g.header], rows, g.align, last, escaped=True))
        else:
            parts.append(markdown(g.header, rows, g.align, last))
    return "\n\n".join(parts)
