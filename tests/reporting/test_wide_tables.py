"""Tables as the papers print them (the wide layout): methods x datasets in the papers' order under display names
with the average, the best of each column bold, LaTeX with booktabs and right-aligned numbers, an average that
flags datasets with fewer seeds than asked, notes that say what the marks mean, zero-shot shown alike with or
without runs, and base-to-novel blocks of base / novel / HM per dataset with the average first."""

import csv
import io

from prompt_tuning.apps.cli import main
from prompt_tuning.config.experiment import expected_runs
from prompt_tuning.reporting.results import aggregate, collect, format_table
from prompt_tuning.reporting.tables import wide_table
from tests.reporting.grid import experiment, result, write_runs

DATASETS = ["eurosat", "imagenet", "fgvc_aircraft"]


def _rows(text: str) -> dict[str, list[str]]:
    """Markdown rows by their first cell."""
    return {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def _fewshot(seeds=(1, 2, 3), skip=()):
    return [result(m, d, s, 16, acc=acc + s) for d, base in zip(DATASETS, (60.0, 70.0, 30.0)) for s in seeds
            for m, acc in (("zeroshot", base), ("coop", base + 10), ("cocoop", base + 8 + (d == "imagenet") * 4))
            if (m, d, s) not in skip]


def test_methods_by_datasets_in_the_papers_order_with_the_average_and_the_best_in_bold():
    md = wide_table(aggregate(_fewshot()), "md", seeds=3)
    lines = md.splitlines()
    assert lines[0] == "| Method | ImageNet | FGVC Aircraft | EuroSAT | Average |"
    assert lines[1] == "|:---|---:|---:|---:|---:|"
    rows = _rows(md)
    assert list(rows)[1:] == ["Zero-shot CLIP", "CoOp", "CoCoOp"]  # zero-shot first
    assert rows["CoOp"] == ["82.00", "**42.00**", "**72.00**", "**65.33**"]
    assert rows["CoCoOp"] == ["**84.00**", "40.00", "70.00", "64.67"]
    assert "Cells: the mean over the 3 seeds asked" in md and "Bold: the best of each column." in md
    assert "±" not in "\n".join(lines[:5])  # means only; std lives in the long layout, which the notes name
    assert "the long layout (--layout long)" in md


def test_latex_has_booktabs_right_aligned_numbers_and_the_best_in_bold():
    latex = wide_table(aggregate(_fewshot()), "latex", seeds=3, display={"coop": "CoOp_v2 & more"})
    lines = latex.splitlines()
    assert lines[:4] == [r"\begin{tabular}{lrrrr}", r"\toprule",
                         r"Method & ImageNet & FGVC Aircraft & EuroSAT & Average \\", r"\midrule"]
    assert r"CoOp\_v2 \& more & 82.00 & \textbf{42.00} & \textbf{72.00} & \textbf{65.33} \\" in lines
    assert lines.index(r"\bottomrule") < len(lines) - 1 and lines[-1] == r"\end{tabular}"
    assert all(line.startswith(r"\multicolumn{5}{l}{\footnotesize ") for line in
               lines[lines.index(r"\bottomrule") + 1:-1])  # the notes, under the rule


def test_the_average_flags_datasets_with_fewer_seeds_than_asked():
    table = aggregate(_fewshot(skip={("coop", "eurosat", 3), ("coop", "eurosat", 2)}))
    md = wide_table(table, "md", seeds=3)
    coop = _rows(md)["CoOp"]
    assert coop[2] == "**71.00** (n=1/3)" and coop[3].endswith("†")
    assert "(n=k/3): over k of the 3 seeds asked" in md
    assert "†: an average over datasets with fewer seeds than 3: CoOp: EuroSAT (n=1)." in md
    assert not _rows(md)["CoCoOp"][3].endswith("†")
    latex = wide_table(table, "latex", seeds=3)
    assert r"(n=1/3)" in latex and r"$^\dagger$ \\" in latex


def test_without_an_experiment_fewer_seeds_are_counted_against_the_best_covered_cell():
    md = wide_table(aggregate(_fewshot(skip={("cocoop", "imagenet", 3)})), "md")
    assert _rows(md)["CoCoOp"][0] == "**83.50** (n=2/3)"
    assert "over k of the 3 seeds of the best-covered cell" in md


def test_published_rows_follow_their_method_and_are_never_bold():
    published = {"source": "Paper, Table 2.", "values": {"coop": {"imagenet": {"acc": 99.0}}}}
    md = wide_table(aggregate(_fewshot()), "md", published, seeds=3)
    assert list(_rows(md))[1:4] == ["Zero-shot CLIP", "CoOp", "CoOp (published)"]
    assert _rows(md)["CoOp (published)"] == ["99.00", "–", "–", "–"]
    assert "(published): the published numbers (–: not published); source: Paper, Table 2." in md


def test_a_recipes_own_shots_compete_with_the_others_for_the_best():
    results = [result(m, "eurosat", s, k, acc=acc) for s in (1, 2)
               for m, k, acc in (("zeroshot", 16, 60.0), ("coop", 16, 70.0), ("prograd", 4, 75.0))]
    md = wide_table(aggregate(results), seeds=2)
    assert _rows(md)["ProGrad"] == ["4", "**75.00**"] and _rows(md)["CoOp"] == ["16", "70.00"]
    assert "Bold: the best of each column." in md


def test_cross_dataset_columns_are_the_source_its_targets_and_their_average():
    metrics = {"acc": 71.0, "eurosat/acc": 45.0, "caltech101/acc": 93.0, "targets_avg": 69.0}
    table = aggregate([result(m, "imagenet", s, **metrics) for m in ("coop", "cocoop") for s in (1, 2)])
    assert wide_table(table, "md", seeds=2).splitlines()[0] == (
        "| Method | ImageNet | Caltech101 | EuroSAT | Average |")


def _b2n_grid(tmp_path):
    """A base-to-novel grid of 3 methods on 2 datasets, one seed; CoCoOp has not run on DTD."""
    exp_file, exp, cfgs = experiment(tmp_path, "{method: [zeroshot, coop, cocoop], dataset: [eurosat, dtd], "
                                               "seed: [1]}", "[model=tiny, protocol=base2novel]")
    base, novel = {"zeroshot": 70.0, "coop": 82.0, "cocoop": 80.0}, {"zeroshot": 74.0, "coop": 63.0, "cocoop": 71.0}
    write_runs(tmp_path, exp, cfgs, lambda cfg: {"base_acc": base[cfg.method.name],
                                                 "novel_acc": novel[cfg.method.name], "hm": 0.0},
               skip=lambda cfg: cfg.method.name == "cocoop" and cfg.dataset.name == "dtd")
    return exp_file


def test_a_partial_base_to_novel_grid_shows_blocks_per_dataset_and_a_missing_average(tmp_path, capsys):
    exp_file = _b2n_grid(tmp_path)
    assert main(["table", str(tmp_path / "out"), "--experiment", str(exp_file)]) == 0
    md = capsys.readouterr().out
    blocks = [line for line in md.splitlines() if line.endswith("| Base | Novel | HM |")]
    assert blocks == ["| Average over 2 datasets | Base | Novel | HM |", "| DTD | Base | Novel | HM |",
                      "| EuroSAT | Base | Novel | HM |"]  # the average first, then CoOp's order
    average = md.split(blocks[1])[0]
    assert _rows(average)["CoCoOp"] == ["missing", "missing", "missing"]
    assert _rows(average)["CoOp"] == ["**82.00**", "63.00", "71.26"]  # HM of the averages
    assert _rows(average)["Zero-shot CLIP"] == ["70.00", "**74.00**", "**71.94**"]
    dtd = _rows(md.split(blocks[1])[1].split(blocks[2])[0])
    assert dtd["CoCoOp"] == ["missing"] * 3 and dtd["CoOp"] == ["**82.00**", "63.00", "71.26"]
    assert "missing: a run the experiment expects, without a result" in md
    assert main(["table", str(tmp_path / "out"), "--experiment", str(exp_file), "--format", "csv",
                 "--layout", "wide"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:5] == ["method", "shots", "Average over 2 datasets Base", "Average over 2 datasets Novel",
                           "Average over 2 datasets HM"]
    assert rows[3][:2] == ["CoCoOp", "16"] and rows[3][2:5] == ["", "", ""] and rows[3][-3:] == [
        "80.00", "71.00", "75.23"]  # EuroSAT, the last block


def test_zero_shot_is_one_row_without_shots_whether_or_not_it_ran(tmp_path):
    _, exp, cfgs = experiment(
        tmp_path, "{method: [coop, zeroshot], dataset: [eurosat], seed: [1, 2], protocol.shots: [1, 2]}")
    expected = expected_runs(exp, cfgs)  # as `table` reads them: zero-shot is expected at 1 and 2 shots
    assert set(expected) == {("coop", 1), ("coop", 2), ("zeroshot", 1), ("zeroshot", 2)}
    before = aggregate([], expected)
    write_runs(tmp_path, exp, cfgs, lambda cfg: {"acc": 40.0 + int(cfg.protocol.shots)})
    after = aggregate(collect(tmp_path / "out"), expected)
    assert set(before) == set(after) == {("coop", 1), ("coop", 2), ("zeroshot", None)}
    assert _rows(wide_table(before, seeds=2))["Zero-shot CLIP"] == ["-", "missing"]
    assert _rows(wide_table(after, seeds=2))["Zero-shot CLIP"] == ["-", "**41.00**"]  # ties CoOp at 1 shot
    assert _rows(wide_table(after, seeds=2))["CoOp"] == ["2", "**42.00**"]  # the best at 2 shots
    assert "Bold: the best of each column at each number of shots." in wide_table(after, seeds=2)
    assert "| zeroshot | - | eurosat |" in format_table(before, seeds=2)
    assert "| zeroshot | - | eurosat | 41.00 ± 0.00 (2) |" in format_table(after, seeds=2)


def test_the_layout_defaults_wide_for_md_and_latex_long_for_csv(tmp_path, capsys):
    exp_file = _b2n_grid(tmp_path)
    assert main(["table", str(tmp_path / "out"), "--experiment", str(exp_file), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("method,shots,dataset,base_acc mean,")  # long: one row per cell
    assert main(["table", str(tmp_path / "out"), "--experiment", str(exp_file), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert latex.count(r"\begin{tabular}{lrrr}") == 3 and latex.count(r"\toprule") == 3
