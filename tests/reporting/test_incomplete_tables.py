"""Tables and plots of incomplete or unfinished experiments: cells with fewer seeds than asked, an experiment
without runs showing its published numbers and expected runs, and plots with display names, error bars, a caption
and a legend outside the axes."""

import json

from prompt_tuning.apps.cli import main
from prompt_tuning.reporting.results import aggregate, format_table
from tests.conftest import REPO


def _result(method, dataset, seed, shots=16, **metrics):
    return {"method": method, "dataset": dataset, "seed": seed, "shots": shots, "protocol": "p", "tags": {},
            "metrics": metrics}


def test_a_cell_with_fewer_seeds_than_asked_shows_n_of_n():
    table = aggregate([_result("coop", "a", 1, acc=50.0), _result("coop", "b", 1, acc=60.0),
                       _result("coop", "b", 2, acc=62.0), _result("coop", "b", 3, acc=64.0)])
    md = format_table(table, seeds=3)
    assert "| coop | 16 | a | 50.00 (n=1/3) |" in md and "± 0.00" not in md
    assert "| coop | 16 | b | 62.00 ± 2.00 (3) |" in md


def test_an_experiment_without_runs_shows_its_published_numbers_and_expected_runs(tmp_path, capsys):
    (tmp_path / "experiment.yaml").write_text((REPO / "experiments" / "domain_generalization.yaml").read_text())
    assert main(["table", str(tmp_path), "--layout", "long"]) == 0
    out = capsys.readouterr().out
    assert "| coop | 16 | imagenet | missing | 71.51 |  |" in out
    assert "| kgcoop | 4 | imagenet | missing | not published |" in out  # KgCoOp's transfer recipe: 4 shots
    assert main(["table", str(tmp_path)]) == 0  # wide: the source and each target, published rows
    wide = capsys.readouterr().out
    assert wide.startswith("| Method | Shots | ImageNet | ImageNet-V2 | ImageNet-Sketch | ImageNet-A | ImageNet-R |")
    assert "| CoOp | 16 | missing | missing | missing | missing | missing |" in wide
    assert "| CoOp (published) | 16 | 71.51 | 64.20 | 47.99 | 49.71 | 75.21 |" in wide
    assert "| KgCoOp | 4 | missing |" in wide and "KgCoOp (published)" not in wide


def test_plot_formats_display_names_error_bars_caption_and_outside_legend(tmp_path, capsys):
    from prompt_tuning.reporting.plot import bars_figure, caption_of, curves_figure

    runs = tmp_path / "runs"
    for i, (m, k, s) in enumerate((m, k, s) for m in ("coop", "zeroshot") for k in (1, 4) for s in (1, 2)):
        r = _result(m, "a", s, shots=k, acc=40.0 + k + s, base_acc=70.0 + s, novel_acc=60.0 - s)
        r["metrics"]["hm"] = 0.0
        r["trainable"] = m != "zeroshot"
        (runs / str(i)).mkdir(parents=True)
        (runs / str(i) / "result.json").write_text(json.dumps(r))
    (tmp_path / "exp.yaml").write_text("name: x\ngrid: {seed: [1, 2]}\ndisplay: {coop: My CoOp}\n")
    for fmt, magic in (("pdf", b"%PDF"), ("svg", b"<?xml"), ("png", b"\x89PNG")):
        assert main(["plot", str(runs), "--format", fmt, "--dpi", "80", "--experiment",
                     str(tmp_path / "exp.yaml")]) == 0
        for name in ("fewshot_curves", "base_novel"):
            assert (runs / "plots" / f"{name}.{fmt}").read_bytes().startswith(magic)
    table = aggregate(json.loads(p.read_text()) for p in runs.rglob("result.json"))
    curves = curves_figure(table, {"coop": "My CoOp"})
    assert [t.get_text() for t in curves.legends[0].get_texts()] == ["Zero-shot CLIP", "My CoOp"]
    assert not any(ax.get_legend() for ax in curves.axes)  # the legend is the figure's, outside the axes
    assert "±1 std over seeds" in caption_of(curves)
    bars = bars_figure(table)
    assert any(len(c.lines) > 1 and c.lines[1] for c in bars.axes[0].containers if hasattr(c, "lines"))
    assert "error bars: ±1 std over 2 seeds" in caption_of(bars)
    assert "error bars: ±1 std over 2 seeds" in (runs / "plots" / "base_novel.txt").read_text()
