"""Sweeps (grid, resume, dry-run counts of the paper experiments), tables (known means/std/HM, published, missing)
and plots."""

import json
import math

import pytest

from prompt_tuning import sweep as sweep_mod
from prompt_tuning.cli import main
from prompt_tuning.plot import curves_figure, plot
from prompt_tuning.results import AVERAGE, aggregate, format_table, harmonic_mean
from tests.conftest import REPO


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


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name, runs", [
    pytest.param("base2novel", 8 * 11 * 3, marks=SLOW), pytest.param("coop_fewshot", 6 * 11 * 5 * 3, marks=SLOW),
    pytest.param("promptsrc_fewshot", 3 * 11 * 5 * 3, marks=SLOW),
    pytest.param("cross_dataset", 6 * 3, marks=SLOW), pytest.param("domain_generalization", 6 * 3, marks=SLOW),
    ("ablation_nctx", 27), ("demo", 12)])
def test_each_paper_experiment_dry_runs_to_the_right_number_of_runs(name, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts = sweep_mod.sweep(REPO / "experiments" / f"{name}.yaml", dry_run=True, log=lambda m: None)
    assert counts == {"total": runs, "done": 0, "running": 0, "changed": 0, "blocked": runs, "ran": 0,
                      "failed": 0}  # no dataset folder under this empty working directory


def _tiny_experiment(tmp_path, shapes_dir):
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({
        "name": "tiny", "output": str(tmp_path / "out"),
        "args": ["model=tiny", f"dataset={shapes_dir}", "optim.max_epochs=1", "data.batch_size=8"],
        "grid": {"method": ["coop", "zeroshot"], "protocol.shots": [1, 2], "seed": [1, 2]},
    }))
    return exp


def test_killed_sweep_resumes_running_only_the_missing_runs(tmp_path, shapes_dir, monkeypatch):
    exp = _tiny_experiment(tmp_path, shapes_dir)
    from prompt_tuning import runner

    real, calls = runner.train, []

    def dying_train(cfg, sources=None):
        calls.append(cfg.output_dir)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the sweep is killed during its 4th run
        return real(cfg, sources)

    monkeypatch.setattr(runner, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.sweep(exp, log=lambda m: None)
    assert len(list((tmp_path / "out").rglob("result.json"))) == 3

    calls.clear()
    monkeypatch.setattr(runner, "train", lambda cfg, sources=None: calls.append(cfg.output_dir) or real(cfg, sources))
    counts = sweep_mod.sweep(exp, log=lambda m: None)
    assert counts["done"] == 3 and counts["ran"] == 5 and len(calls) == 5
    assert len(list((tmp_path / "out").rglob("result.json"))) == 8
    again = sweep_mod.sweep(exp, log=lambda m: None)
    assert again["ran"] == 0 and again["done"] == 8

    only = sweep_mod.sweep(exp, only=["method=coop", "seed=1"], dry_run=True, log=lambda m: None)
    assert only["total"] == 2


def test_sweep_table_plot_end_to_end_offline(tmp_path, shapes_dir, capsys):
    exp = _tiny_experiment(tmp_path, shapes_dir)
    assert main(["sweep", str(exp)]) == 0
    assert (tmp_path / "out" / "experiment.yaml").is_file()
    capsys.readouterr()
    assert main(["table", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert table.count("| coop |") == 2  # shots 1 and 2
    assert table.count("| zeroshot | - | shapes0 | 11.11 ± 0.00 (2) |") == 1  # no shots: one row, 2 seeds
    assert main(["plot", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "plots" / "fewshot_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_has_one_line_per_method(tmp_path):
    results = [_result(m, "a", s, shots=k, acc=50.0 + k + s) for m in ("coop", "cocoop", "zeroshot")
               for k in (1, 2, 4) for s in (1, 2)]
    fig = curves_figure(aggregate(results))
    assert len(fig.axes[0].get_lines()) == 3
    for i, r in enumerate(results):
        out = tmp_path / "runs" / str(i)
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps(r))
    assert [p.name for p in plot(tmp_path / "runs")] == ["fewshot_curves.png"]


def test_cross_dataset_evaluation_reports_the_target_datasets(tmp_path):
    from prompt_tuning.data.synthetic import make_shapes

    make_shapes(tmp_path / "data" / "shapes", n_train=2, n_val=1, n_test=4)
    out = tmp_path / "run"
    assert main(["train", "model=tiny", "dataset=shapes", f"data.root={tmp_path / 'data'}", "protocol.shots=1",
                 "optim.max_epochs=1", "protocol.eval_datasets=[shapes]", "runtime.progress=false",
                 f"output_dir={out}"]) == 0
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["shapes/acc"] == metrics["acc"]  # "transfer" to the same test set gives the same accuracy
