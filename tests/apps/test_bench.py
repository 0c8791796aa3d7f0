"""`prompt-tuning bench` runs end to end (on the tiny model: timings there mean nothing), its paths agree, and its
report says which performance targets its figures meet."""

import json

import pytest

from prompt_tuning.apps import bench
from prompt_tuning.apps.bench import format_report, run, targets
from prompt_tuning.apps.cli import main
from tests.conftest import TINY_ARCH


@pytest.fixture(autouse=True)
def _one_call_per_round(monkeypatch):
    """Timings on the tiny model mean nothing: one call per path and round (no filling of `SPAN`)."""
    monkeypatch.setattr(bench, "SPAN", 0.0)


KEYS = {"train_step_ratio_exact", "train_step_ratio_cached", "eval_ratio_warm", "eval_ratio_cold",
        "logits_max_abs_diff", "peak_mem_ours_mb", "peak_mem_reference_mb",
        "text_step_ratio", "act_mem_1000cls_ours_mb", "act_mem_1000cls_reference_mb", "cocoop_step_ratio",
        "cocoop_act_mem_ours_mb", "cocoop_act_mem_reference_mb"}


def test_bench_reports_every_figure_and_same_logits():
    r = run(classes=6, model=str(TINY_ARCH), repeats=1, batch=8, test_images=12, eval_batch=4, log=lambda m: None,
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
    r = run(classes=3, model=str(TINY_ARCH), repeats=1, batch=4, test_images=4, eval_batch=2, log=lambda m: None,
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
    r = run(classes=4, model=str(path), repeats=1, batch=4, test_images=4, eval_batch=2, log=lambda m: None,
            cocoop_classes=2)
    assert r["logits_max_rel_diff"] <= 1e-5
    from prompt_tuning.apps.bench import run_multimodal

    assert run_multimodal("maple", classes=3, model=str(path), repeats=1, log=lambda m: None)[
        "text_features_max_abs_diff"] <= 1e-6


def test_a_short_path_is_called_until_it_spans_the_round(monkeypatch):
    monkeypatch.setattr(bench, "SPAN", 0.05)
    calls = []
    times = bench.interleaved({"slow": lambda: __import__("time").sleep(0.06), "fast": lambda: calls.append(1)}, 2,
                              "cpu", log=lambda m: None)
    assert len(calls) == 1 + 2 * bench.MAX_CALLS  # the warm-up call, then 50 a round (capped)
    assert all(t >= 0.06 for t in times["slow"]) and all(t < 0.01 for t in times["fast"])


def test_paths_take_turns_after_a_warm_up_and_each_round_gives_a_paired_ratio():
    from prompt_tuning.apps.bench import interleaved, paired_ratio

    calls, resets = [], []
    paths = {name: (lambda name=name: calls.append(name)) for name in ("reference", "ours", "cached")}
    times = interleaved(paths, 3, "cpu", reset=lambda: resets.append(len(calls)), log=lambda m: None)
    assert calls == ["cached", "ours", "reference",  # the untimed warm-up round
                     "reference", "ours", "cached", "cached", "ours", "reference", "reference", "ours", "cached"]
    assert resets == list(range(12))  # a reset before every call
    assert {k: len(v) for k, v in times.items()} == {"reference": 3, "ours": 3, "cached": 3}
    # a burst that slows one round's both paths alike leaves that round's ratio alone
    assert paired_ratio([2.0, 20.0, 2.2], [1.0, 10.0, 1.0]) == (2.0, 2.0, 2.2)


def test_bench_prints_each_ratio_with_its_spread():
    r = run(classes=3, model=str(TINY_ARCH), repeats=2, batch=4, test_images=4, eval_batch=2, log=lambda m: None,
            cocoop_classes=2)
    for key in ("train_step_ratio_exact", "train_step_ratio_cached", "text_step_ratio", "eval_ratio_cold",
                "eval_ratio_warm", "cocoop_step_ratio", "cocoop_step_ratio_b32"):
        low, high = r[f"{key}_spread"]
        assert low <= r[key] <= high
        assert f"{r[key]:.2f}x ({low:.2f}-{high:.2f})" in format_report(r)


def test_whole_run_bench_runs_both_paths_on_generated_jpegs(tmp_path, capsys):
    from prompt_tuning.apps.bench_run import make_jpeg_folder

    root = make_jpeg_folder(tmp_path / "images", classes=3, shots=2, test_images=7)
    test = sorted((root / "test").rglob("*.jpg"))
    assert len(test) == 7 and len(list((root / "train").rglob("*.jpg"))) == 6
    from PIL import Image

    sizes = [Image.open(p).size for p in test]
    assert all(224 <= w <= 500 and 224 <= h <= 500 for w, h in sizes) and len(set(sizes)) > 1
    out = tmp_path / "whole.json"
    assert main(["bench", "--whole-run", "--model", str(TINY_ARCH), "--classes", "3", "--shots", "2",
                 "--test-images", "6", "--epochs", "1", "--workers", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("epoch_s_ours", "epoch_s_reference", "run_s_ours", "run_s_reference", "data_s_per_epoch_ours",
                "data_s_per_epoch_reference", "peak_mem_mb_ours", "peak_mem_mb_reference", "projected_run_s_ours"):
        assert r[key] > 0, key
    assert r["data_share_ours"] > 0 and r["epoch_ratio"] == r["epoch_s_reference"] / r["epoch_s_ours"]
    assert "| training epoch |" in capsys.readouterr().out


def test_the_gpu_branches_of_timing_and_memory_run_with_a_simulated_cuda(monkeypatch):
    """No GPU here: torch.cuda's synchronisation and memory counters are simulated, so that the branches a GPU
    run takes (synchronised timing under bf16 autocast, peak allocation as the memory figure) run as written."""
    import torch

    from prompt_tuning.apps import bench

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**20)
    import contextlib

    def autocast(device_type, dtype):
        events.append(("autocast", device_type, dtype))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", autocast)

    def step():
        return torch.ones(2) * 2

    t, out = bench._timed(step, "cuda")
    assert t >= 0 and torch.equal(out, torch.full((2,), 2.0))
    assert events == ["sync", ("autocast", "cuda", torch.bfloat16), "sync"]
    events.clear()
    assert bench._measured(step, "cuda")["mb"] == 3.0
    assert [e for e in events if isinstance(e, str)] == ["sync", "reset", "sync", "sync"]
    times = bench.interleaved({"a": step, "b": step}, 2, "cuda", log=lambda m: None)
    assert [len(v) for v in times.values()] == [2, 2]
