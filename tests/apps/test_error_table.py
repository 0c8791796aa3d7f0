"""The table of one-line errors in docs/errors.md: every user mistake it lists, run through the command line,
ends in one line naming the culprit, and every case is a row of the table."""

import json
import re
import shutil

import pytest

from prompt_tuning.apps.cli import main
from tests.conftest import REPO, TINY_ARCH


@pytest.fixture
def data(shapes_dir, tmp_path):
    """A private copy of the shapes dataset that a test may break."""
    return shutil.copytree(shapes_dir, tmp_path / "shapes")


def _train(data, tmp_path, *extra):
    return ["train", f"model={TINY_ARCH}", f"dataset={data}", "protocol.shots=2", "optim.max_epochs=1",
            "runtime.progress=false", f"output_dir={tmp_path / 'out'}", *extra]


def _split(data):
    return json.loads((data / "split_shapes.json").read_text())


def _rewrite(data, split):
    (data / "split_shapes.json").write_text(json.dumps(split))


def case_unknown_key(data, tmp_path):
    return _train(data, tmp_path, "protocol.shot=4"), r"unknown config key 'protocol.shot'; did you mean 'shots'"


def case_unknown_group_value(data, tmp_path):
    return _train(data, tmp_path, "method=coopp"), r"method='coopp': .*did you mean 'coop'.*choose one of"


def case_wrong_type(data, tmp_path):
    return _train(data, tmp_path, "protocol.shots=abc"), r"protocol.shots='abc': expected int"


def case_unknown_method_argument(data, tmp_path):
    return (_train(data, tmp_path, "method.context.init_args.nctx=4"),
            r"init_args.nctx: not an argument of prompt_tuning.methods.contexts.coop.CoOp; did you mean 'n_ctx'")


def case_shots_zero(data, tmp_path):
    return _train(data, tmp_path, "protocol.shots=0"), r"protocol.shots=0: expected images per class >= 1"


def case_missing_root(data, tmp_path):
    return _train(tmp_path / "nowhere", tmp_path), r"dataset='.*nowhere': no .*a dataset folder"


def case_missing_benchmark_root(data, tmp_path):
    return (_train(data, tmp_path, "dataset=eurosat", f"data.root={tmp_path}"),
            r"dataset folder .*eurosat does not exist; set data.root")


def case_split_not_json(data, tmp_path):
    (data / "split_shapes.json").write_text("{oops")
    return _train(data, tmp_path), r"split file .*split_shapes.json is not valid JSON"


def case_split_lacks_test(data, tmp_path):
    split = _split(data)
    del split["test"]
    _rewrite(data, split)
    return _train(data, tmp_path), r"must hold the keys train, val, test; found \['train', 'val'\]"


def case_split_names_missing_images(data, tmp_path):
    for p in list((data / "images" / "red_circle").iterdir())[:3]:
        p.unlink()
    return _train(data, tmp_path), r"lists 3 images that do not exist, e\.g\. .*red_circle"


def case_unreadable_image(data, tmp_path):
    for row in _split(data)["train"]:
        (data / "images" / row[0]).write_bytes(b"\x89PNG truncated")
    return _train(data, tmp_path), r"cannot read image .*\.png"


def case_label_name_clash(data, tmp_path):
    split = _split(data)
    split["test"][0][2] = "purple hexagon"
    _rewrite(data, split)
    return _train(data, tmp_path), r"label 0 is named both 'red circle' and 'purple hexagon'"


def case_checkpoint_of_another_class_set(data, tmp_path):
    assert main(_train(data, tmp_path, "method.context.init_args.csc=true")) == 0  # 9 class-specific contexts
    return (["eval", str(tmp_path / "out"), "protocol.subsample=base", "protocol.eval_subsets=[base]",
             "runtime.progress=false"],
            r"checkpoint .*last.ckpt does not fit this method/class set \(CoOp, 5 classes\)")


def case_checkpoint_of_another_method(data, tmp_path):
    assert main(_train(data, tmp_path)) == 0
    return (["eval", str(tmp_path / "out"), "method=cocoop", "runtime.progress=false"],
            r"checkpoint .*last.ckpt does not fit this method/class set \(CoCoOp, 9 classes\)")


def case_unknown_model(data, tmp_path):
    return (_train(data, tmp_path, "model=vit_b16", "model.name=ViT-B-61"),
            r"model.name='ViT-B-61' is not an open_clip architecture; did you mean .*'ViT-B-16'")


def case_unknown_pretrained_tag(data, tmp_path):
    return (_train(data, tmp_path, "model=vit_b16", "model.pretrained=opneai"),
            r"model.pretrained='opneai' is neither a pretrained tag of ViT-B-16 nor an existing file; did you mean "
            r"'openai'")


def case_text_tower_not_promptable(data, tmp_path):
    arch = json.loads(TINY_ARCH.read_text())
    arch["text_cfg"]["pool_type"] = "last"
    (tmp_path / "last.json").write_text(json.dumps(arch))
    pattern = r"the text tower of this model .*cannot be prompted"
    return _train(data, tmp_path, f"model={tmp_path / 'last.json'}"), pattern


def case_output_not_writable(data, tmp_path):
    (tmp_path / "a_file").write_text("")
    return (_train(data, tmp_path, f"output_dir={tmp_path / 'a_file' / 'run'}"),
            r"cannot write to .*a_file/run: .*; choose another output_dir")


def case_run_locked(data, tmp_path):
    from prompt_tuning.core.locks import FileLock

    lock = FileLock(tmp_path / "out")
    lock.acquire()  # held by this (live) process
    return _train(data, tmp_path), r"is being trained by pid \d+ on .*; if that process is gone, delete the lock"


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_clear_line(case, data, tmp_path, capsys):
    args, pattern = CASES[case](data, tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err


def test_every_case_is_in_the_errors_table():
    table = (REPO / "docs" / "errors.md").read_text()
    missing = [c for c in CASES if f"`{c}`" not in table]
    assert not missing, f"add rows to docs/errors.md for {missing}"


def test_debug_shows_the_traceback(data, tmp_path):
    from prompt_tuning.core.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", *_train(data, tmp_path, "protocol.shots=abc")])
