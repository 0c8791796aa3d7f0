"""A new user's first hour (issue 12), through the CLI with its output captured: missing data and weights,
a dry run that checks, one-line errors, Ctrl-C, help texts, tables and plots, nothing left in ~/.cache."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap

import open_clip
import pytest

from prompt_tuning import __version__
from prompt_tuning.cli import _parser, main
from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.data.synthetic import make_shapes
from prompt_tuning.results import aggregate, format_table
from tests.conftest import REPO


@pytest.fixture
def data(tmp_path):
    make_shapes(tmp_path / "data" / "shapes", n_train=2, n_val=1, n_test=2)
    return tmp_path / "data"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ 1. missing data or weights
def test_missing_data_is_reported_before_any_weights_are_loaded(tmp_path, capsys, monkeypatch):
    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the data was checked")

    monkeypatch.setattr(FrozenCLIP, "build", no_weights)
    assert main(["train", "model=vit_b16", "method=coop", "dataset=eurosat", f"data.root={tmp_path}"]) == 2
    assert f"dataset folder {tmp_path}/eurosat does not exist" in _one_line(capsys)


def test_a_failed_weight_download_is_one_line_saying_what_to_do(data, tmp_path, capsys, monkeypatch):
    def offline(*a, **k):
        raise RuntimeError("Failed to download weights for tag 'openai': cannot reach the hub")

    monkeypatch.setattr(open_clip, "create_model", offline)
    code = main(["train", "model=vit_b16", "method=coop", "dataset=shapes", f"data.root={data}",
                 f"output_dir={tmp_path / 'run'}"])
    line = _one_line(capsys)
    assert code == 2 and "cannot load the weights of model ViT-B-16, pretrained tag 'openai'" in line
    assert "model.pretrained=/path/to/file" in line and "cache" in line
    assert not (tmp_path / "run").exists()


def _experiment(tmp_path, data, grid_datasets=("shapes",), extra=""):
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""\
        name: first
        output: {tmp_path / 'out'}
        args: [model=tiny, data.root={data}, optim.max_epochs=1, protocol.shots=1]
        grid:
          method: [zeroshot, coop]
          dataset: [{', '.join(grid_datasets)}]
          seed: [1, 2]
        """) + extra)
    return exp


def test_a_sweep_goes_on_after_failures_and_lists_them_at_the_end(data, tmp_path, capsys):
    broken = data / "broken"
    make_shapes(broken, n_train=1, n_val=1, n_test=1)
    (broken / "split_shapes.json").write_text("{ not json")  # present, but unreadable: fails when it runs
    exp = _experiment(tmp_path, data, ("shapes", str(broken), "eurosat"))
    assert main(["sweep", str(exp)]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED") == 4  # the broken split, 2 methods x 2 seeds
    assert "4 ran" in out and "4 failed" in out and "4 blocked" in out
    tail = out.split("not run (8):", 1)[1]
    assert tail.count("dataset=eurosat") == 4 and "is missing" in tail and tail.count("/broken ") == 4


# ------------------------------------------------------------------------------------- 2. a dry run checks
def test_dry_run_checks_data_and_weights_counts_and_estimates(data, tmp_path, capsys):
    exp = _experiment(tmp_path, data, ("shapes", "eurosat"))
    assert main(["sweep", str(exp), "--only", "dataset=shapes", "--only", "seed=1"]) == 0
    capsys.readouterr()
    assert main(["sweep", str(exp), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "experiment first: 8 runs, 2 done, 2 to run, 4 blocked" in out
    assert "  shapes           ready" in out and "  eurosat          dataset folder" in out
    assert "tiny (random weights): random weights, nothing to load" in out
    assert "blocked: dataset folder" in out
    assert "estimated time: " in out and "over 2 finished runs" in out


def test_sweep_takes_overrides_like_train(data, tmp_path, capsys):
    exp = _experiment(tmp_path, data)
    assert main(["sweep", str(exp), "--dry-run", "model.pretrained=/no/such/weights.pt", "--only", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "tiny (/no/such/weights.pt): missing: no file /no/such/weights.pt" in out and "2 blocked" in out


def test_only_matching_nothing_lists_the_grid_values(data, tmp_path, capsys):
    exp = _experiment(tmp_path, data)
    assert main(["sweep", str(exp), "--only", "seed=9"]) == 2
    assert "--only seed=9 matches nothing: the grid's seed values are 1, 2" in _one_line(capsys)


def test_datasets_list_shows_what_is_present(data, capsys):
    assert main(["datasets", "list", "--root", str(data)]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("shapes") and "present" in line for line in out.splitlines())
    assert any(line.startswith("eurosat") and "missing" in line for line in out.splitlines())


# ------------------------------------------------------------------------------------ 3. one-line errors
@pytest.mark.parametrize("kind", ["config", "experiment"])
def test_yaml_syntax_errors_name_file_and_line(tmp_path, capsys, kind):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncontext: {class_path: a\n")
    args = ["sweep", str(bad)] if kind == "experiment" else ["train", f"method={bad}", "dataset=eurosat"]
    assert main(args) == 2
    assert f"{bad}:3:1: YAML syntax error in this {kind} file" in _one_line(capsys)


def test_bench_rejects_zero_classes_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--classes", "0"])
    assert exit_.value.code == 2 and "--classes=0: expected an integer >= 1" in capsys.readouterr().err


def test_debug_after_the_subcommand_and_version(tmp_path, capsys):
    from prompt_tuning.errors import UserError

    with pytest.raises(UserError):
        main(["train", "dataset=eurosat", "protocol.shots=abc", "--debug"])
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"prompt-tuning {__version__}"


def test_ctrl_c_says_where_it_stopped_and_how_to_continue(data, tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys
        import pytorch_lightning as pl
        from prompt_tuning import runner
        from prompt_tuning.cli import main

        class CtrlC(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == 1:
                    os.kill(os.getpid(), signal.SIGINT)

        make = runner.make_trainer
        runner.make_trainer = lambda *a, **k: (lambda t: (t.callbacks.append(CtrlC()), t)[1])(make(*a, **k))
        sys.exit(main(sys.argv[1:]))
    """)
    args = ["train", "model=tiny", "dataset=shapes", f"data.root={data}", "protocol.shots=1",
            "optim.max_epochs=3", "runtime.progress=false", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 130 == 128 + signal.SIGINT, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"interrupted at epoch 2/3; continue with: prompt-tuning {' '.join(args)} resume=true"
    assert main([*args, "resume=true"]) == 0  # and that command finishes the run
    assert json.loads((tmp_path / "run" / "result.json").read_text())["epochs"] == 3


def test_train_help_lists_the_choices_and_every_flag_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for word in ("coop", "kgcoop", "vit_b16", "tiny", "eurosat", "imagenet_r", "base2novel", "fewshot"):
        assert word in out

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    from prompt_tuning import bench, sweep

    for p in [*parsers(_parser()), bench.parser(), sweep.parser()]:
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                assert action.help, f"{p.prog} {action.option_strings} has no description"
                shown = p.formatter_class(p.prog)._get_help_string(action)
                if action.default not in (None, argparse.SUPPRESS):
                    assert "default" in shown, f"{p.prog} {action.option_strings} does not show its default"


# ------------------------------------------------------------------------------------------------- 4. tables
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
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| coop | 16 | imagenet | missing | 71.51 |  |" in out
    assert "| kgcoop | 4 | imagenet | missing | not published |" in out  # KgCoOp's transfer recipe: 4 shots


# -------------------------------------------------------------------------------------------------- 5. plots
def test_plot_formats_display_names_error_bars_caption_and_outside_legend(tmp_path, capsys):
    from prompt_tuning.plot import bars_figure, curves_figure

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
    assert [t.get_text() for t in curves.legends[0].get_texts()] == ["My CoOp", "Zero-shot CLIP"]
    assert not any(ax.get_legend() for ax in curves.axes)  # the legend is the figure's, outside the axes
    assert any("±1 std over seeds" in t.get_text() for t in curves.texts)
    bars = bars_figure(table)
    assert any(len(c.lines) > 1 and c.lines[1] for c in bars.axes[0].containers if hasattr(c, "lines"))
    assert any("error bars: ±1 std over 2 seeds" in t.get_text() for t in bars.texts)


# --------------------------------------------------------------------------------- 6. nothing in ~/.cache
@pytest.mark.slow
def test_the_demo_leaves_nothing_in_the_home_cache(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PT_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME")}
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning.cli", "demo", "--shots", "1", "--epochs", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**env, "HOME": str(home), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "| coop (csc) |" in proc.stdout
    assert not any(home.iterdir()), sorted(str(p) for p in home.rglob("*"))  # no ~/.cache, no ~/.config


def test_weights_status_finds_weights_in_the_hub_cache_without_downloading(tmp_path):
    from prompt_tuning.clip import weights_status

    repo = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].rstrip("/")
    assert weights_status("ViT-B-16", "openai", cache_dir=str(tmp_path)) == "download"
    folder = tmp_path / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    assert weights_status("ViT-B-16", "openai", cache_dir=str(tmp_path)) == "cached"
    (tmp_path / "w.pt").write_bytes(b"x")
    assert weights_status("ViT-B-16", str(tmp_path / "w.pt")) == "file"
    assert weights_status("tiny", None) == "random"
