"""How figures look in a paper: one colour per method in every figure, widths of a paper column and page, font
sizes that stay legible at those widths, and TrueType fonts in PDF and PostScript (venues reject Type 3)."""

from __future__ import annotations

import zlib

from prompt_tuning.core.errors import UserError

WIDTHS = {"column": 3.3, "page": 6.9}  # inches: one column / the full text width of a two-column paper

STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False, "grid.linewidth": 0.4, "hatch.linewidth": 0.6,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType, not Type 3
    "savefig.pad_inches": 0.02,
}

COLORS = {  # every known method keeps its colour whatever else a figure shows
    "zeroshot": "#4d4d4d", "linear_probe": "#8c564b", "coop": "#1f77b4", "coop_csc": "#393b79",
    "cocoop": "#ff7f0e", "clip_adapter": "#e377c2", "tip_adapter": "#bcbd22", "tip_adapter_f": "#637939",
    "prograd": "#d62728", "kgcoop": "#2ca02c", "bayesian": "#8c6d31", "bayesian_conditional": "#e7ba52",
    "eco": "#843c39", "deep_language": "#ad494a", "vpt_deep": "#6b6ecf", "ivlp": "#17becf", "maple": "#9467bd",
    "promptsrc": "#7b4173",
}
# other labels (new methods, ablation variants) hash into these; a clash within one figure takes the next free one
SPARE = ("#5254a3", "#8ca252", "#bd9e39", "#a55194", "#d6616b", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8")


def figure_width(width: str | float) -> float:
    """``column`` (3.3 in), ``page`` (6.9 in) or a number of inches."""
    if isinstance(width, str) and width in WIDTHS:
        return WIDTHS[width]
    try:
        inches = float(width)
    except (TypeError, ValueError):
        inches = 0.0
    if not 1.0 <= inches <= 20.0:
        raise UserError(f"--width {width}: choose {' or '.join(WIDTHS)}, or a width in inches from 1 to 20")
    return inches


def method_colors(labels) -> dict[str, str]:
    """A colour for each method label: a known method's own (a variant, ``coop[n_ctx=4]``, is its own label),
    else one picked by a hash of the label, so a label has the same colour in every figure unless two labels of
    one figure hash alike."""
    labels = list(dict.fromkeys(labels))
    out = {label: COLORS[label] for label in labels if label in COLORS}
    used = set(out.values())
    for label in sorted((lb for lb in labels if lb not in COLORS), key=lambda lb: zlib.crc32(lb.encode())):
        start = zlib.crc32(label.encode()) % len(SPARE)
        free = [SPARE[(start + i) % len(SPARE)] for i in range(len(SPARE))]
        out[label] = next((c for c in free if c not in used), free[0])
        used.add(out[label])
    return out
