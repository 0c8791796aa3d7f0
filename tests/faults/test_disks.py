"""A full disk and a read-only folder, wherever they are met: each ends in a one-line refusal that leaves no
truncated file behind, or (the feature cache) in a run that goes on without storing and gives the same numbers."""

import json
import shutil

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.runs.checkpoints import load_checkpoint
from prompt_tuning.runs.folder import RunFolder
from tests.faults.conftest import run_args
from tests.helpers import one_line


def _metrics(out):
    return json.loads((out / "result.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def reference(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={tmp_path_factory.mktemp('cache')}")) == 0
    return _metrics(out)


@pytest.mark.parametrize("size", ["12k", "20k", "28k"])
def test_a_full_run_folder_is_one_line_and_never_a_truncated_checkpoint(shapes_dir, small_disk, tmp_path, size,
                                                                         capsys):
    out = small_disk(size) / "run"
    code = main(run_args(shapes_dir, out, f"runtime.cache_dir={tmp_path / 'cache'}"))
    capsys.readouterr()
    folder = RunFolder(out)
    if code == 0:  # it fitted
        assert folder.result() is not None
        return
    assert code == 2
    assert not (out / "result.json").exists()
    if folder.last_checkpoint.exists():
        load_checkpoint(folder.last_checkpoint)  # the previous epoch's, whole
    assert not list(out.rglob("*.tmp"))  # no leftovers of the writes that failed


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_run_resumes(shapes_dir, small_disk, tmp_path,
                                                                                  reference, capsys):
    disk = small_disk("40k")
    out = disk / "run"
    ballast = disk / "ballast"
    args = run_args(shapes_dir, out, f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.loggers=[]")
    # fill the disk as epoch 2 ends: its checkpoint cannot be written, epoch 1's stays
    import pytorch_lightning as pl

    from prompt_tuning.runs import runner

    class Fill(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1 and not ballast.exists():
                with open(ballast, "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(b"\0" * 512)
                    except OSError:  # the disk is full
                        pass

    make = runner.make_trainer

    def with_fill(*a, **k):
        trainer = make(*a, **k)
        trainer.callbacks.insert(0, Fill())
        return trainer

    runner.make_trainer = with_fill
    try:
        assert main(args) == 2
    finally:
        runner.make_trainer = make
    line = one_line(capsys)
    assert "cannot write checkpoint" in line and "is the disk full" in line, line
    assert load_checkpoint(RunFolder(out).last_checkpoint)["epoch"] == 0  # epoch 1's checkpoint, whole
    ballast.unlink()
    assert main([*args, "resume=true"]) == 0
    assert _metrics(out) == reference


def test_an_unwritable_feature_cache_is_said_once_and_the_run_goes_on(shapes_dir, read_only, tmp_path, reference,
                                                                       capsys):
    cache = read_only()
    out = tmp_path / "run"
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    err = capsys.readouterr().err
    assert err.count("the run goes on computing image features without storing them") == 1, err
    assert _metrics(out) == reference


def test_a_full_feature_cache_is_said_once_and_the_run_goes_on(shapes_dir, small_disk, tmp_path, reference, capsys):
    cache = small_disk("8k")
    out = tmp_path / "run"
    assert main(run_args(shapes_dir, out, f"runtime.cache_dir={cache}")) == 0
    assert "without storing them" in capsys.readouterr().err
    assert _metrics(out) == reference
    assert not list(cache.rglob("*.tmp"))


def test_a_read_only_run_folder_and_plot_folder_are_one_line(shapes_dir, read_only, tmp_path, capsys):
    runs = read_only(lambda p: (p / "empty").mkdir())
    assert main(run_args(shapes_dir, runs / "empty", f"runtime.cache_dir={tmp_path / 'cache'}")) == 2
    assert "cannot write" in one_line(capsys)
    done = tmp_path / "done"
    assert main(run_args(shapes_dir, done / "run", f"runtime.cache_dir={tmp_path / 'cache'}")) == 0
    plots = read_only(lambda p: None, name="plots")
    capsys.readouterr()
    assert main(["plot", str(done), "--out", str(plots)]) == 2
    assert "cannot write the figure" in one_line(capsys)
    shutil.rmtree(done)
