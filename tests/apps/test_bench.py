"""`prompt-tuning bench` runs end to end (on the tiny model: timings there mean nothing), its paths agree, and its
report says which performance targets its figures meet."""

import json

from prompt_tuning.apps.bench import format_report, run, targets
from prompt_tuning.apps.cli import main
from tests.conftest import TINY_ARCH

KEYS = {"train_step_ratio_exact", "train_step_ratio_cached", "eval_ratio_warm", "eval_ratio_cold",
        "logits_max_abs_diff", "peak_mem_ours_mb", "peak_mem_reference_mb",
        "text_step_ratio", "act_mem_1000cls_ours_mb", "act_mem_1000cls_reference_mb", "cocoop_step_ratio",
        "cocoop_act_mem_ours_mb", "cocoop_act_mem_reference_mb"}


def test_bench_reports_every_figure_and_same_logits():
    r = run(classes=6, model=str(TINY_ARCH), repeats=1, batch=8, test_per_class=2, eval_batch=4, log=lambda m: None,
            cocoop_classes=3)
    assert set(r) >= KEYS
    assert r["logits_max_rel_diff"] <= 1e-5  # the shared-prefix pass: the same logits within float rounding
    assert r["act_mem_1000cls_ours_checkpointed_mb"] < r["act_mem_1000cls_ours_mb"] < r["act_mem_1000cls_reference_mb"]
    assert r["cocoop_act_mem_ours_mb"] < r["cocoop_act_mem_reference_mb"]
    assert r["prompt_tokens_ours"] < r["prompt_tokens_reference"] == 77
    assert r["peak_mem_ours_mb"] < r["peak_mem_reference_mb"]  # fewer positions keep fewer activations
    assert "same logits" in format_report(r)


# figures on either side of each target (names as the report prints them); each target is met in one of the two
TARGET_FIGURES = [
    ({"train_step_ratio_exact": 1.8, "train_step_ratio_cached": 5.99, "text_step_ratio": 7.0,
      "act_mem_1000cls_ours_mb": 30.0, "act_mem_1000cls_reference_mb": 100.0, "cocoop_step_ratio": 3.0,
      "eval_ratio_warm": 19.9, "eval_ratio_cold": 1.0},
     {"train exact >= 1.8x": True, "cached views >= 6x": False, "text side >= 6x": True,
      "activations at 1000 classes <= 1/4 of the reference": False, "CoCoOp step >= 3x": True,
      "eval warm >= 20x": False, "eval cold > 1x": False}),
    ({"train_step_ratio_exact": 1.79, "train_step_ratio_cached": 6.0, "text_step_ratio": 5.99,
      "act_mem_1000cls_ours_mb": 25.0, "act_mem_1000cls_reference_mb": 100.0, "cocoop_step_ratio": 2.99,
      "eval_ratio_warm": 20.0, "eval_ratio_cold": 1.01},
     {"train exact >= 1.8x": False, "cached views >= 6x": True, "text side >= 6x": False,
      "activations at 1000 classes <= 1/4 of the reference": True, "CoCoOp step >= 3x": False,
      "eval warm >= 20x": True, "eval cold > 1x": True}),
]


def test_bench_report_says_met_exactly_for_the_targets_its_figures_reach():
    r = run(classes=3, model=str(TINY_ARCH), repeats=1, batch=4, test_per_class=1, eval_batch=4, log=lambda m: None,
            cocoop_classes=2)
    for changes, expected in TARGET_FIGURES:
        figures = {**r, **changes}
        assert dict(targets(figures)) == expected
        line = next(ln for ln in format_report(figures).splitlines() if ln.startswith("targets: "))
        for name, met in expected.items():
            assert f"{name} ({'met' if met else 'NOT met'})" in line, (name, line)


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(TINY_ARCH), "--classes", "4", "--repeats", "1", "--cocoop-classes", "2",
                 "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) >= KEYS
    assert "| train step, exact" in capsys.readouterr().out


def test_bench_multimodal_methods_report_their_step_against_the_authors_path(capsys):
    from prompt_tuning.apps.bench import format_multimodal_report, run_multimodal

    for method in ("maple", "promptsrc"):
        r = run_multimodal(method, classes=5, model=str(TINY_ARCH), repeats=1, log=lambda m: None)
        assert r["text_features_max_abs_diff"] <= 1e-6  # the truncated deep text pass: the same features
        assert r["prompt_tokens_ours"] < r["prompt_tokens_reference"] == 77
        assert r["peak_mem_ours_mb"] < r["peak_mem_reference_mb"]
        assert ("train_step_ratio_cached" in r) == (method == "promptsrc")
        assert "| train step, exact |" in format_multimodal_report(r)
    assert main(["bench", "--method", "maple", "--model", str(TINY_ARCH), "--classes", "3", "--repeats", "1"]) == 0
    assert "--method maple" in capsys.readouterr().out


def test_bench_reference_path_runs_on_a_custom_text_clip(tmp_path):
    """The reference text pass reads the text tower (a CustomTextCLIP keeps it in ``model.text``)."""
    arch = {**json.loads(TINY_ARCH.read_text()), "custom_text": True}
    path = tmp_path / "tiny_custom_text.json"
    path.write_text(json.dumps(arch))
    r = run(classes=4, model=str(path), repeats=1, batch=4, test_per_class=1, eval_batch=4, log=lambda m: None,
            cocoop_classes=2)
    assert r["logits_max_rel_diff"] <= 1e-5
    from prompt_tuning.apps.bench import run_multimodal

    assert run_multimodal("maple", classes=3, model=str(path), repeats=1, log=lambda m: None)[
        "text_features_max_abs_diff"] <= 1e-6
