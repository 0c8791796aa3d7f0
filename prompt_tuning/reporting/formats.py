"""Writing a table of text cells as Markdown, CSV or LaTeX (booktabs), with note lines under it."""

from __future__ import annotations

import csv
import io

FORMATS = ("md", "csv", "latex")
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$",
        "–": "--"}


def tex(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``±`` and ``†`` as math)."""
    return "".join(_TEX.get(c, c) for c in text)


def markdown(header: list[str], rows: list[list[str]], align: str | None = None, notes: list[str] = ()) -> str:
    """A Markdown table; ``align``: ``l`` or ``r`` per column (default: no alignment marks)."""
    rule = "|" + "".join({"l": ":---|", "r": "---:|"}[a] for a in align) if align else "|" + "---|" * len(header)
    out = ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "".join(f"\n\n{note}" for note in notes)


def latex(header: list[str], rows: list[list[str]], align: str, notes: list[str] = (), escaped: bool = False) -> str:
    """A booktabs tabular (``\\toprule``, ``\\midrule``, ``\\bottomrule``); ``align``: ``l``/``r`` per column;
    ``notes`` as full-width lines under the bottom rule. Cells are escaped unless ``escaped``."""
    cell = (lambda c: c) if escaped else tex
    body = [" & ".join(cell(c) for c in row) + r" \\" for row in [header, *rows]]
    notes = [rf"\multicolumn{{{len(header)}}}{{l}}{{\footnotesize {tex(n)}}} \\" for n in notes]
    return "\n".join([r"\begin{tabular}{" + align + "}", r"\toprule", body[0], r"\midrule", *body[1:],
                      r"\bottomrule", *notes, r"\end{tabular}"])


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    return buf.getvalue()
