"""Figures a paper can print: an incomplete average is drawn as missing (a gap in a curve, a hatched box among
bars, a note saying which), never as a number; each method keeps its colour in every figure; zero-shot first;
datasets under display names in the papers' order; the caption beside the figure unless asked into it; TrueType
fonts in PDF; a column or page width."""

import json
import math
import re
import shutil
import subprocess

import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer
from matplotlib.image import imread

from prompt_tuning.apps.cli import main
from prompt_tuning.config.experiment import expected_runs
from prompt_tuning.core.errors import UserError
from prompt_tuning.reporting import plot as plot_mod
from prompt_tuning.reporting.plot import bars_figure, caption_of, curves_figure
from prompt_tuning.reporting.results import AVERAGE, aggregate
from prompt_tuning.reporting.style import method_colors
from tests.reporting.grid import experiment, result, write_runs


def _few(methods, datasets, shots=(1, 2, 4), seeds=(1, 2), skip=()):
    """Few-shot results; ``skip``: (method, dataset, shots) left out."""
    return [result(m, d, s, k, acc=30.0 + 5 * k + s + 3 * i) for i, d in enumerate(datasets) for m in methods
            for k in ((1,) if m == "zeroshot" else shots) for s in seeds if (m, d, k) not in skip]


def _b2n(methods, datasets, seeds=(1, 2), skip=(), no_hm=()):
    out = []
    for m in methods:
        for d in datasets:
            for s in seeds:
                if (m, d) in skip:
                    continue
                metrics = {"base_acc": 70.0 + s + len(m), "novel_acc": 60.0 + s}
                if m not in no_hm:
                    metrics["hm"] = 0.0
                out.append(result(m, d, s, **metrics))
    return out


def _line(ax, label):
    return next(ln for ln in ax.get_lines() if ln.get_label() == label)


def _colors_of_lines(fig) -> dict:
    return {ln.get_label(): to_hex(ln.get_color()) for ax in fig.axes for ln in ax.get_lines()}


def _notes(fig) -> list[str]:
    return [t.get_text().replace("\n", " ") for t in fig.texts if t.get_gid() == "note"]


# ------------------------------------------------------------------------------------- never a wrong number
def test_an_average_missing_a_dataset_is_a_gap_in_the_curve_with_a_note():
    datasets = ["eurosat", "dtd"]
    expected = {(m, k): datasets for m in ("zeroshot", "coop") for k in (1, 2, 4)}
    table = aggregate(_few(("zeroshot", "coop"), datasets, skip={("coop", "dtd", 2)}), expected)
    fig = curves_figure(table)
    average = next(ax for ax in fig.axes if ax.get_title() == "Average over 2 datasets")
    coop = _line(average, "CoOp")
    assert list(coop.get_xdata()) == [1, 2, 4]
    assert not math.isnan(coop.get_ydata()[0]) and math.isnan(coop.get_ydata()[1])  # no point at 2 shots
    dtd = _line(next(ax for ax in fig.axes if ax.get_title() == "DTD"), "CoOp")
    assert math.isnan(dtd.get_ydata()[1])  # the dataset's own gap is a gap too, not a line across it
    assert _notes(fig) == ["Average not drawn for CoOp (2 shots): a dataset of the average has no result."]
    assert all(t.get_visible() for t in fig.texts if t.get_gid() == "note")  # the note is in the image


def test_without_an_experiment_a_method_run_on_one_of_two_datasets_has_no_average():
    table = aggregate(_few(("zeroshot", "coop"), ["eurosat", "dtd"], skip={("coop", "dtd", k) for k in (1, 2, 4)}))
    average = next(ax for ax in curves_figure(table).axes if ax.get_title().startswith("Average"))
    assert "CoOp" not in [ln.get_label() for ln in average.get_lines()]
    assert "acc" not in table[("coop", 1)][AVERAGE]
    zero = _line(average, "Zero-shot CLIP")  # complete: drawn at the mean of the two datasets
    assert list(zero.get_ydata()) == [pytest.approx(table[("zeroshot", None)][AVERAGE]["acc"][0])] * 2


def _bars(ax):
    return [p for p in ax.patches if p.get_gid() != "missing"], [p for p in ax.patches if p.get_gid() == "missing"]


def test_a_missing_average_bar_is_a_hatched_box_not_a_bar_at_zero():
    datasets = ["eurosat", "dtd"]
    expected = {(m, 16): datasets for m in ("zeroshot", "coop", "cocoop")}
    table = aggregate(_b2n(("zeroshot", "coop", "cocoop"), datasets, skip={("cocoop", "dtd")}), expected)
    fig = bars_figure(table)
    ax = fig.axes[0]
    filled, missing = _bars(ax)
    assert len(filled) == 6 and all(p.get_height() > 50 for p in filled)  # zero-shot and CoOp: base, novel, HM
    assert len(missing) == 3  # CoCoOp's base, novel and HM
    low, high = ax.get_ylim()
    for box in missing:
        assert box.get_hatch() and box.get_facecolor()[3] == 0  # empty, hatched
        assert (box.get_y(), box.get_height()) == (pytest.approx(low), pytest.approx(high - low))
        assert to_hex(box.get_edgecolor()) == method_colors(["cocoop"])["cocoop"]
    assert sum(t.get_text() == "missing" for t in ax.texts) == 3
    assert "CoCoOp" in _notes(fig)[0] and ax.get_title() == "Average over 2 datasets"
    assert low > 0 and high <= 100  # the range fits the data


def test_a_missing_metric_is_missing_not_zero():
    table = aggregate(_b2n(("coop", "cocoop"), ["eurosat"], no_hm=("cocoop",)))
    ax = bars_figure(table).axes[0]
    filled, missing = _bars(ax)
    assert len(filled) == 5 and min(p.get_height() for p in filled) > 0
    assert len(missing) == 1 and missing[0].get_x() + missing[0].get_width() / 2 > 2 - 0.5  # in the HM group
    assert ax.get_title() == "EuroSAT"


def test_plot_reads_the_experiments_expected_runs(tmp_path, monkeypatch, capsys):
    exp_file, exp, cfgs = experiment(
        tmp_path, "{method: [zeroshot, coop], dataset: [eurosat, dtd], seed: [1], protocol.shots: [1, 2]}")
    write_runs(tmp_path, exp, cfgs, lambda cfg: {"acc": 50.0 + int(cfg.protocol.shots)},
                skip=lambda cfg: cfg.method.name == "coop" and cfg.dataset.name == "dtd")  # CoOp: EuroSAT only
    drawn = []
    save = plot_mod._save
    monkeypatch.setattr(plot_mod, "_save", lambda fig, *a: drawn.append(fig) or save(fig, *a))
    assert main(["plot", str(tmp_path / "out"), "--experiment", str(exp_file)]) == 0
    (fig,) = drawn
    average = next(ax for ax in fig.axes if ax.get_title() == "Average over 2 datasets")
    assert [ln.get_label() for ln in average.get_lines()] == ["Zero-shot CLIP"]  # no CoOp from EuroSAT alone
    assert "CoOp (1, 2 shots)" in _notes(fig)[0]
    assert expected_runs(exp, cfgs)[("coop", 2)] == ["eurosat", "dtd"]
    assert "caption: fewshot_curves.txt" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ paper-ready
def test_a_method_keeps_its_colour_across_figures_with_other_methods():
    small = curves_figure(aggregate(_few(("coop", "zeroshot", "my_method"), ["eurosat"])))
    large = curves_figure(aggregate(_few(("cocoop", "coop", "kgcoop", "zeroshot", "my_method", "a_method"),
                                         ["eurosat"])))
    a, b = _colors_of_lines(small), _colors_of_lines(large)
    for name in ("CoOp", "Zero-shot CLIP", "my_method"):
        assert a[name] == b[name]
    assert len(set(b.values())) == len(b)  # six methods, six colours
    bars = bars_figure(aggregate(_b2n(("kgcoop", "coop"), ["eurosat"])))
    bar_colors = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in bars.axes[0].containers
                  if isinstance(c, BarContainer)}
    assert bar_colors == {"CoOp": b["CoOp"], "KgCoOp": b["KgCoOp"]}


def test_zero_shot_first_datasets_by_display_name_in_the_papers_order():
    datasets = ["ucf101", "fgvc_aircraft", "imagenet", "eurosat", "imagenet_sketch"]
    fig = curves_figure(aggregate(_few(("coop", "zeroshot", "cocoop"), datasets)))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["ImageNet", "FGVC Aircraft", "EuroSAT", "UCF101", "ImageNet-Sketch", "Average over 5 datasets"]
    assert [t.get_text() for t in fig.legends[0].get_texts()][:1] == ["Zero-shot CLIP"]
    for ax in fig.axes:
        assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())
    bars = bars_figure(aggregate(_b2n(("prograd", "zeroshot", "coop"), ["eurosat"])))
    groups = sorted((c.patches[0].get_x(), c.get_label()) for c in bars.axes[0].containers
                    if isinstance(c, BarContainer))
    assert [label for _, label in groups] == ["Zero-shot CLIP", "CoOp", "ProGrad"]
    assert all(t.get_rotation() == 0 for t in bars.axes[0].get_xticklabels())


def test_the_y_range_fits_the_data():
    results = [result(m, "eurosat", s, k, acc=80.0 + k + s) for m in ("coop",) for k in (1, 2, 4) for s in (1, 2)]
    low, high = curves_figure(aggregate(results)).axes[0].get_ylim()
    assert 78 < low < 82 and 86 < high < 90  # the band of 81.8-87.2 and a margin, not 0-100


def test_the_caption_is_beside_the_figure_unless_asked_into_it(tmp_path):
    runs = tmp_path / "runs"
    for i, r in enumerate(_b2n(("zeroshot", "coop"), ["eurosat"])):
        (runs / str(i)).mkdir(parents=True)
        (runs / str(i) / "result.json").write_text(json.dumps(r))
    (path,) = plot_mod.plot(runs, tmp_path / "plain", "svg")
    text = path.with_suffix(".txt").read_text()
    assert text.startswith("Base and novel accuracy and their harmonic mean; error bars: ±1 std over 2 seeds")
    (shown,) = plot_mod.plot(runs, tmp_path / "shown", "png", 80, caption=True)
    plain_png = plot_mod.plot(runs, tmp_path / "plain_png", "png", 80)[0]
    assert imread(shown).shape[0] > imread(plain_png).shape[0]  # the caption adds lines under the figure
    fig = bars_figure(aggregate(_b2n(("coop",), ["eurosat"])))
    assert not next(t for t in fig.texts if t.get_gid() == "caption").get_visible()
    assert caption_of(fig).startswith("Base and novel accuracy")


def test_pdf_figures_embed_truetype_fonts_never_type3(tmp_path):
    runs = tmp_path / "runs"
    for i, r in enumerate(_few(("zeroshot", "coop"), ["eurosat", "dtd"])):
        (runs / str(i)).mkdir(parents=True)
        (runs / str(i) / "result.json").write_text(json.dumps(r))
    (pdf,) = plot_mod.plot(runs, tmp_path / "plots", "pdf")
    data = pdf.read_bytes()
    assert b"/Type3" not in data and b"/CIDFontType2" in data and b"/FontFile2" in data  # embedded TrueType
    if shutil.which("pdffonts"):
        fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
        assert "TrueType" in fonts and "Type 3" not in fonts


@pytest.mark.parametrize(("width", "inches"), [("column", 3.3), ("page", 6.9), ("4.5", 4.5)])
def test_the_figure_width_fits_a_column_or_a_page(width, inches):
    table = aggregate(_few(("zeroshot", "coop"), ["eurosat", "dtd", "dtd2"]))
    assert curves_figure(table, width=width).get_figwidth() == pytest.approx(inches)
    assert bars_figure(aggregate(_b2n(("coop",), ["eurosat"])), width=width).get_figwidth() == pytest.approx(inches)


def test_a_bad_width_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(UserError, match=re.escape("--width huge: choose column or page, or a width in inches")):
        curves_figure(aggregate(_few(("coop",), ["eurosat"])), width="huge")
    runs = tmp_path / "runs"
    (runs / "0").mkdir(parents=True)
    (runs / "0" / "result.json").write_text(json.dumps(result("coop", "eurosat", 1, acc=50.0)))
    assert main(["plot", str(runs), "--width", "0.1"]) == 2
    assert "--width 0.1: choose column or page" in capsys.readouterr().err
    assert not (runs / "plots").exists()
