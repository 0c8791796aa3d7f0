"""Result tables: the mean, std and seed count per method, shots and dataset; the harmonic mean of the
seed-averaged base and novel accuracies; zero-shot as one row without shots; missing runs shown as missing; the
published column and its difference in Markdown, CSV and LaTeX."""

import math

import pytest

from prompt_tuning.reporting.plot import curves_figure
from prompt_tuning.reporting.results import AVERAGE, aggregate, format_table
from prompt_tuning.runs.metrics import harmonic_mean


def _result(method, dataset, seed, shots=16, **metrics):
    return {"method": method, "dataset": dataset, "seed": seed, "shots": shots, "protocol": "x",
            "metrics": metrics, "tags": {}}


def test_aggregation_gives_known_means_std_and_hm_from_averaged_base_and_novel():
    results = [
        _result("coop", "a", 1, base_acc=80, novel_acc=60), _result("coop", "a", 2, base_acc=82, novel_acc=64),
        _result("coop", "b", 1, base_acc=90, novel_acc=50), _result("coop", "b", 2, base_acc=90, novel_acc=70),
    ]
    table = aggregate(results)[("coop", 16)]
    assert table["a"]["base_acc"] == (81.0, pytest.approx(math.sqrt(2)), 2)  # sample std over seeds
    assert table["b"]["novel_acc"][:2] == (60.0, pytest.approx(math.sqrt(200)))
    avg = table[AVERAGE]
    assert avg["base_acc"][0] == pytest.approx(85.5) and avg["novel_acc"][0] == pytest.approx(61.0)
    assert avg["hm"][0] == pytest.approx(harmonic_mean(85.5, 61.0))  # not the mean of per-dataset HMs


# Published base / novel / HM rows (../shared/published.md, PromptKD Table 1): the HM is that of the means.
PUBLISHED_ROWS = {
    ("CoOp", "imagenet"): (76.47, 67.88, 71.92),
    ("CoOp", "dtd"): (79.44, 41.18, 54.24),
    ("CoCoOp", "eurosat"): (87.49, 60.04, 71.21),
    ("CLIP", "fgvc_aircraft"): (27.19, 36.29, 31.09),
    ("MaPLe", "ucf101"): (83.00, 78.66, 80.77),
}


@pytest.mark.parametrize("row", PUBLISHED_ROWS.items(), ids=lambda r: f"{r[0][0]}-{r[0][1]}")
def test_dataset_hm_is_the_hm_of_the_seed_averaged_base_and_novel(row):
    (_, dataset), (base, novel, hm) = row
    seeds = [(base + 6, novel - 9), (base - 6, novel + 9), (base, novel)]  # mean of per-seed HMs differs
    results = [{"method": "m", "dataset": dataset, "seed": s, "shots": 16, "protocol": "base2novel",
                "metrics": {"base_acc": b, "novel_acc": n, "hm": harmonic_mean(b, n)}, "tags": {}}
               for s, (b, n) in enumerate(seeds, 1)]
    mean_of_hms = sum(harmonic_mean(b, n) for b, n in seeds) / 3
    assert abs(round(mean_of_hms, 2) - hm) > 0.05  # averaging the per-seed HMs would show another number
    assert round(aggregate(results)[("m", 16)][dataset]["hm"][0], 2) == hm


def test_zero_shot_is_one_row_without_shots_and_a_dashed_line():
    results = [{"method": m, "dataset": "a", "seed": s, "shots": k, "protocol": "fewshot", "tags": {},
                "trainable": m != "zeroshot", "metrics": {"acc": 40.0 + k + (m == "zeroshot") * 10}}
               for m in ("coop", "zeroshot") for k in (1, 2, 4) for s in (1, 2)]
    table = aggregate(results, {(m, k): ["a"] for m in ("coop", "zeroshot") for k in (1, 2, 4)})
    assert sorted(table, key=str) == sorted([("coop", 1), ("coop", 2), ("coop", 4), ("zeroshot", None)], key=str)
    assert table[("zeroshot", None)]["a"]["acc"] == (51.0, 0.0, 2)  # 2 seeds, not 6 runs
    assert "| zeroshot | - | a | 51.00 ± 0.00 (2) |" in format_table(table)
    lines = curves_figure(table).axes[0].get_lines()
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [51.0, 51.0]


def test_missing_runs_show_as_missing_never_zero():
    results = [_result("coop", "a", 1, acc=70.0)]
    table = aggregate(results, expected={("coop", 16): ["a", "b"], ("cocoop", 16): ["a"]})
    text = format_table(table)
    assert "| coop | 16 | b | missing |" in text
    assert "| cocoop | 16 | a | missing |" in text
    assert AVERAGE not in table[("coop", 16)] or "acc" not in table[("coop", 16)][AVERAGE]
    assert "| 0.00" not in text  # no invented zeros


def test_published_column_and_difference_in_md_csv_latex():
    results = [_result("coop", d, s, base_acc=b, novel_acc=n)
               for d, s, b, n in (("a", 1, 80, 60), ("b", 1, 90, 70))]
    published = {"source": "Paper, Table 1", "values": {"coop": {"average": {"base_acc": 84.0, "hm": 70.0}}}}
    table = aggregate(results)
    md = format_table(table, "md", published)
    avg_row = next(line for line in md.splitlines() if f"| {AVERAGE} |" in line)
    assert "| 85.00 | 84.00 | +1.00 |" in avg_row
    assert "Published numbers: Paper, Table 1" in md
    csv = format_table(table, "csv", published)  # separate columns: mean, std, n, published, diff
    lines = csv.splitlines()
    assert lines[0].startswith("method,shots,dataset,base_acc mean,base_acc std,base_acc n,base_acc published,"
                               "base_acc diff,novel_acc mean")
    assert lines[1].startswith("coop,16,a,80.0000,,1,,,60.0000,,1,")  # one seed: no std; nothing published
    assert lines[-1].startswith(f"coop,16,{AVERAGE},85.0000,,0,84.00,+1.00,")
    latex = format_table(table, "latex", published)
    assert latex.startswith(r"\begin{tabular}") and r"80.00 $\pm$ 0.00 (1)" in latex
