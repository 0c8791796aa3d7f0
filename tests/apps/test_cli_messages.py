"""What the command line tells a user: missing data reported before any weights load, a sweep that goes on after
failures, a dry run that checks, sweep overrides, the datasets list, one-line argument errors, --debug and
--version, Ctrl-C, help texts, and a demo that leaves nothing in the home cache."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning import __version__
from prompt_tuning.apps.cli import _parser, main
from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.data.synthetic import make_shapes
from tests.conftest import REPO
from tests.helpers import one_line, write_experiment


# ------------------------------------------------------------------------------------------- missing data
def test_missing_data_is_reported_before_any_weights_are_loaded(tmp_path, capsys, monkeypatch):
    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the data was checked")

    monkeypatch.setattr(FrozenCLIP, "build", no_weights)
    assert main(["train", "model=vit_b16", "method=coop", "dataset=eurosat", f"data.root={tmp_path}"]) == 2
    assert f"dataset folder {tmp_path}/eurosat does not exist" in one_line(capsys)


def test_a_sweep_goes_on_after_failures_and_lists_them_at_the_end(data, tmp_path, capsys):
    broken = data / "broken"
    make_shapes(broken, n_train=1, n_val=1, n_test=1)
    (broken / "split_shapes.json").write_text("{ not json")  # present, but unreadable: fails when it runs
    exp = write_experiment(tmp_path, data, ("shapes", str(broken), "eurosat"))
    assert main(["sweep", str(exp)]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED") == 4  # the broken split, 2 methods x 2 seeds
    assert "4 ran" in out and "4 failed" in out and "4 blocked" in out
    tail = out.split("not run (8):", 1)[1]
    assert tail.count("dataset=eurosat") == 4 and "is missing" in tail and tail.count("/broken ") == 4


# ----------------------------------------------------------------------------------------- a dry run checks
def test_dry_run_checks_data_and_weights_counts_and_estimates(data, tmp_path, capsys):
    exp = write_experiment(tmp_path, data, ("shapes", "eurosat"))
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
    exp = write_experiment(tmp_path, data)
    assert main(["sweep", str(exp), "--dry-run", "model.pretrained=/no/such/weights.pt", "--only", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "tiny (/no/such/weights.pt): missing: no file /no/such/weights.pt" in out and "2 blocked" in out


def test_datasets_list_shows_what_is_present(data, capsys):
    assert main(["datasets", "list", "--root", str(data)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert lines["shapes"][1:4] == ["9", "classes", "present"]  # counted in its split file (the config says none)
    assert lines["eurosat"][1:4] == ["10", "classes", "missing"]


def test_datasets_prepare_shapes_draws_its_images_with_the_seed(tmp_path, capsys):
    def images(seed: int | None) -> bytes:
        root = tmp_path / str(seed)
        assert main(["datasets", "prepare", "shapes", "--root", str(root),
                     *(["--seed", str(seed)] if seed is not None else [])]) == 0
        return (root / "shapes" / "images" / "red_circle" / "0000.png").read_bytes()

    from prompt_tuning.data.synthetic import make_shapes

    assert images(None) == images(0) != images(7)  # the default is the demo's images
    assert images(7) == (make_shapes(tmp_path / "seven", seed=7) / "images" / "red_circle" / "0000.png").read_bytes()
    assert "wrote the shapes dataset to " in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- one-line errors
def test_bench_rejects_zero_classes_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--classes", "0"])
    assert exit_.value.code == 2 and "--classes=0: expected an integer >= 1" in capsys.readouterr().err


def test_debug_after_the_subcommand_and_version(tmp_path, capsys):
    from prompt_tuning.core.errors import UserError

    with pytest.raises(UserError):
        main(["train", "dataset=eurosat", "protocol.shots=abc", "--debug"])
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"prompt-tuning {__version__}"


@pytest.mark.parametrize("epoch", [2, 1])
def test_ctrl_c_says_where_it_stopped_and_how_to_continue(data, tmp_path, epoch):
    script = textwrap.dedent("""
        import os, signal, sys
        import pytorch_lightning as pl
        from prompt_tuning.runs import runner
        from prompt_tuning.apps.cli import main

        class CtrlC(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == int(os.environ["CTRL_C_AT"]) - 1:
                    os.kill(os.getpid(), signal.SIGINT)

        make = runner.make_trainer
        runner.make_trainer = lambda *a, **k: (lambda t: (t.callbacks.append(CtrlC()), t)[1])(make(*a, **k))
        sys.exit(main(sys.argv[1:]))
    """)
    args = ["train", "model=tiny", "dataset=shapes", f"data.root={data}", "protocol.shots=1",
            "optim.max_epochs=3", "runtime.progress=false", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "CTRL_C_AT": str(epoch)}, timeout=300)
    assert proc.returncode == 130 == 128 + signal.SIGINT, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    if epoch == 1:  # no checkpoint yet: nothing to resume
        assert last == f"interrupted at epoch 1/3, before its first checkpoint; run it again with: prompt-tuning " \
                       f"{' '.join(args)}"
        assert main(args) == 0
        return
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

    from prompt_tuning.apps import bench, sweep

    for p in [*parsers(_parser()), bench.parser(), sweep.parser()]:
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                assert action.help, f"{p.prog} {action.option_strings} has no description"
                shown = p.formatter_class(p.prog)._get_help_string(action)
                if action.default not in (None, argparse.SUPPRESS):
                    assert "default" in shown, f"{p.prog} {action.option_strings} does not show its default"


# ------------------------------------------------------------------------------------- nothing in ~/.cache
@pytest.mark.slow
def test_the_demo_leaves_nothing_in_the_home_cache(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PT_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME")}
    proc = subprocess.run([sys.executable, "-m", "prompt_tuning.apps.cli", "demo", "--shots", "1", "--epochs", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**env, "HOME": str(home), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "| coop (csc) |" in proc.stdout
    assert not any(home.iterdir()), sorted(str(p) for p in home.rglob("*"))  # no ~/.cache, no ~/.config
