"""Sweeps of an experiment grid: dry-run counts of the paper experiments, a killed sweep resuming only its missing
runs, sweep -> table -> plot end to end, and the cross-dataset evaluation of a run."""

import json

import pytest

from prompt_tuning.apps import sweep as sweep_mod
from prompt_tuning.apps.cli import main
from tests.conftest import REPO

SLOW = pytest.mark.slow


@pytest.mark.parametrize("name, runs", [
    pytest.param("base2novel", 8 * 11 * 3, marks=SLOW), pytest.param("coop_fewshot", 6 * 11 * 5 * 3, marks=SLOW),
    pytest.param("promptsrc_fewshot", 3 * 11 * 5 * 3, marks=SLOW),
    pytest.param("cross_dataset", 6 * 3, marks=SLOW), pytest.param("domain_generalization", 6 * 3, marks=SLOW),
    ("ablation_nctx", 27), ("demo", 12)])
def test_each_paper_experiment_dry_runs_to_the_right_number_of_runs(name, runs, paper_cwd, composed_runs,
                                                                    monkeypatch):
    from prompt_tuning.apps import grid

    monkeypatch.chdir(paper_cwd)
    monkeypatch.setattr(grid, "compose_annotated", composed_runs)  # each run composed once per session
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
    from prompt_tuning.runs import runner

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
    assert main(["table", str(tmp_path / "out"), "--layout", "long"]) == 0
    table = capsys.readouterr().out
    assert table.count("| coop |") == 2  # shots 1 and 2
    assert table.count("| zeroshot | - | shapes0 | 11.11 ± 0.00 (2) |") == 1  # no shots: one row, 2 seeds
    assert main(["plot", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "plots" / "fewshot_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_dataset_evaluation_reports_the_target_datasets(tmp_path):
    from prompt_tuning.data.synthetic import make_shapes

    make_shapes(tmp_path / "data" / "shapes", n_train=2, n_val=1, n_test=4)
    out = tmp_path / "run"
    assert main(["train", "model=tiny", "dataset=shapes", f"data.root={tmp_path / 'data'}", "protocol.shots=1",
                 "optim.max_epochs=1", "protocol.eval_datasets=[shapes]", "runtime.progress=false",
                 f"output_dir={out}"]) == 0
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["shapes/acc"] == metrics["acc"]  # "transfer" to the same test set gives the same accuracy
