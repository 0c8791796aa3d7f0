"""Files a user shares and values a careless or hostile user gives: a config never runs code, never writes outside
its run, never records a secret, and a value that would give a wrong number is refused before training (or stops
the run with no result)."""

import json
import shutil
import textwrap

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.runs.folder import RunFolder
from tests.conftest import TINY_ARCH
from tests.faults.conftest import run_args
from tests.helpers import one_line

RUNS_CODE = ["class_path: os.system", "init_args: {command: 'touch MARK'}"]


def _method_file(tmp_path, mark):
    path = tmp_path / "evil_method.yaml"
    path.write_text("name: evil\ncontext:\n" + "".join(f"  {line}\n" for line in RUNS_CODE).replace("MARK", str(mark)))
    return [f"method={path}"]


def _dataset_file(tmp_path, mark):
    path = tmp_path / "evil_dataset.yaml"
    path.write_text("name: evil\n" + "".join(f"{line}\n" for line in RUNS_CODE).replace("MARK", str(mark)))
    return [f"dataset={path}"]


def _override(key, cls="os.system"):
    return lambda tmp_path, mark: [f"{key}.class_path={cls}", f"{key}.init_args.command=touch {mark}"]


ATTACKS = {
    "method file": _method_file,
    "dataset file": _dataset_file,
    "objective override": _override("method.objective"),
    "scheduler override (a class, not a Schedule)": lambda tmp_path, mark: [
        "optim.scheduler.class_path=subprocess.Popen", f"optim.scheduler.init_args.args=touch {mark}",
        "optim.scheduler.init_args.shell=true"],
    "optimizer override": _override("optim.optimizer", "subprocess.Popen"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_class_path_that_runs_code_is_refused_in_one_line_before_anything(shapes_dir, tmp_path, capsys, attack):
    mark, out = tmp_path / "ran", tmp_path / "run"
    assert main([*run_args(shapes_dir, out), *ATTACKS[attack](tmp_path, mark)]) == 2
    assert "is not a subclass of" in one_line(capsys)
    assert not mark.exists() and not out.exists()


@pytest.mark.parametrize("dry", [True, False], ids=["dry run", "sweep"])
def test_an_experiment_whose_args_run_code_is_refused_before_any_run(tmp_path, data, capsys, dry):
    mark = tmp_path / "ran"
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""\
        name: evil
        output: {tmp_path / 'out'}
        args: [model=tiny, data.root={data}, optim.max_epochs=1, protocol.shots=1,
               method.context.class_path=os.system, "method.context.init_args.command=touch {mark}"]
        grid: {{method: [coop], dataset: [shapes]}}
        """))
    assert main(["sweep", str(exp), *(["--dry-run"] if dry else [])]) == 2
    assert "method.context.class_path='os.system' is not a subclass of" in one_line(capsys)
    assert not mark.exists() and not (tmp_path / "out").exists()


def test_a_class_path_where_no_class_is_built_is_refused(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*run_args(shapes_dir, out), "tags.x={class_path: subprocess.Popen}"]) == 2
    assert "tags.x.class_path: nothing is built from this key" in one_line(capsys)


def test_environment_values_are_recorded_as_their_interpolations(shapes_dir, tmp_path, monkeypatch):
    secret = "s3cr3t-t0ken-0451"
    monkeypatch.setenv("PT_TEST_TOKEN", secret)
    out = tmp_path / "run"
    assert main([*run_args(shapes_dir, out), "optim.max_epochs=1", "runtime.loggers=[csv]",
                 "tags.token=${oc.env:PT_TEST_TOKEN}", "tags.derived=token-${tags.token}"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "hparams.yaml" for p in files) and any(p.name == "config.yaml" for p in files)
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked and secret not in str(out)
    result = json.loads((out / "result.json").read_text())
    assert result["tags"]["token"] == "${oc.env:PT_TEST_TOKEN}"
    assert result["tags"]["derived"] == "token-${tags.token}"


def test_a_folder_that_is_not_a_run_is_left_untouched(shapes_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "config.yaml").write_text("my own config\n")
    (mine / "checkpoints" / "model.ckpt").write_bytes(b"my weights")
    (mine / "notes.txt").write_text("my notes\n")
    assert main(run_args(shapes_dir, mine)) == 2
    assert "holds files that are not a run's (notes.txt)" in one_line(capsys)
    assert (mine / "config.yaml").read_text() == "my own config\n"
    assert (mine / "checkpoints" / "model.ckpt").read_bytes() == b"my weights"


def test_a_checkpoints_link_is_refused_and_its_target_kept(shapes_dir, tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.ckpt").write_bytes(b"keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(target)
    assert main(run_args(shapes_dir, out)) == 2
    assert "checkpoints is a link" in one_line(capsys)
    assert (target / "precious.ckpt").read_bytes() == b"keep me"


@pytest.mark.parametrize("value, message", [
    ("", "output_dir='': expected a folder (not empty)"),
    (".", "output_dir is empty: name the run's folder"),
])
def test_an_empty_output_dir_is_refused(shapes_dir, tmp_path, capsys, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    assert main([*run_args(shapes_dir, tmp_path / "unused"), f"output_dir={value}"]) == 2
    assert message in one_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["dataset.name", "method.name", "protocol.name"])
def test_a_name_that_climbs_out_of_the_sweep_folder_is_refused(tmp_path, data, capsys, key):
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""\
        name: climb
        output: {tmp_path / 'sweep'}
        args: [model=tiny, data.root={data}, optim.max_epochs=1, protocol.shots=1, {key}=../../../x]
        grid: {{method: [coop], dataset: [shapes]}}
        """))
    assert main(["sweep", str(exp)]) == 2
    assert f"{key}='../../../x': expected a name without / or a leading ." in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "exp.yaml"]


@pytest.mark.parametrize("value", [".inf", "1e39", "1" + "0" * 400])
@pytest.mark.parametrize("key", ["optim.lr", "optim.weight_decay", "optim.optimizer.init_args.eps",
                                 "optim.scheduler.init_args.warmup_lr"])
def test_an_infinite_rate_is_refused_before_training(shapes_dir, tmp_path, capsys, key, value):
    optimizer = ["optim.optimizer.class_path=torch.optim.AdamW", "optim.optimizer.init_args={}"] if "eps" in key \
        else []  # AdamW has an eps
    out = tmp_path / "run"
    assert main([*run_args(shapes_dir, out), *optimizer, f"{key}={value}"]) == 2
    line = one_line(capsys)
    assert line.startswith(f"error: {key}=") and "(finite, below 3.4e38)" in line and len(line) < 200, line
    assert not out.exists()


def test_a_loss_that_goes_to_nan_stops_the_run_naming_epoch_and_step(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*run_args(shapes_dir, out), "optim.lr=1e30", "optim.scheduler.init_args.warmup_epochs=0"]) == 2
    line = one_line(capsys)
    assert "the training loss is nan at epoch 1, step 2" in line or "the training loss is inf" in line, line
    assert "writes no result" in line
    assert not (out / "result.json").exists() and not (out / "config.yaml").exists()


@pytest.mark.parametrize("override, message", [
    ("method.context.init_args.n_ctx=100", "is 105 tokens long; the text encoder of tiny_clip takes 77"),
    ("dataset.init_args.template=" + "word " * 20000 + "{}", "tokens long"),
    ("dataset.init_args.template=a photo", "must hold exactly one {}"),
    ("dataset.init_args.template={} and {}", "must hold exactly one {}"),
    ("dataset.init_args.template=a {} {x}", "must hold exactly one {}"),
    ("dataset.init_args.template={foo}", "YAML reads {...} as a mapping: quote the text"),
], ids=["100 context vectors", "a 20000-word template", "no braces", "two braces", "a named field", "a mapping"])
def test_a_prompt_that_would_be_cut_or_shared_by_every_class_is_refused(shapes_dir, tmp_path, capsys, override,
                                                                         message):
    out = tmp_path / "run"
    method = [] if "n_ctx" in override else ["method=zeroshot"]  # the template is the zero-shot prompt
    assert main([*run_args(shapes_dir, out), *method, override]) == 2
    assert message in one_line(capsys) and not out.exists()


def test_long_class_names_with_many_context_vectors_are_refused(shapes_dir, tmp_path, capsys):
    split = json.loads((shapes_dir / "split_shapes.json").read_text())
    long_name = " ".join(["supercalifragilistic"] * 6)
    for part in split.values():
        for row in part:
            row[2] = f"{row[2]} {long_name}"
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "split_shapes.json").write_text(json.dumps(split))
    out = tmp_path / "run"
    assert main([*run_args(data, out), "method.context.init_args.n_ctx=60"]) == 2
    assert "tokens long" in one_line(capsys) and not out.exists()


def test_table_counts_only_the_grids_runs_of_its_configuration(tmp_path, data, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent(f"""\
        name: grid
        output: {tmp_path / 'out'}
        args: [model={TINY_ARCH}, data.root={data}, optim.max_epochs=1, protocol.shots=1, runtime.progress=false]
        grid: {{method: [coop], dataset: [shapes], seed: [1, 2]}}
        """))
    assert main(["sweep", str(exp)]) == 0
    capsys.readouterr()
    assert main(["table", str(tmp_path / "out"), "--format", "csv"]) == 0
    clean = capsys.readouterr().out
    runs = sorted((tmp_path / "out").rglob("result.json"))
    assert len(runs) == 2
    backup = runs[0].parent.parent / "seed_1_backup"  # a copy of a run, beside it
    backup.mkdir()
    backup.joinpath("result.json").write_text(runs[0].read_text())
    changed = json.loads(runs[1].read_text())  # a run redone by hand at another setting
    changed["config_hash"], changed["metrics"] = "0" * 12, {k: 99.0 for k in changed["metrics"]}
    runs[1].write_text(json.dumps(changed))
    assert main(["table", str(tmp_path / "out"), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "ignored 2 result.json not counted in this experiment" in captured.err
    assert "seed_1_backup/result.json: not a run of the experiment's grid" in captured.err
    assert "run hash 000000000000, the grid's is" in captured.err
    assert "99.0" not in captured.out and captured.out != clean  # one seed left: seed 1's accuracy, n = 1
    assert captured.out.splitlines()[1].endswith(",1")
    assert RunFolder(runs[0].parent).result() is not None
