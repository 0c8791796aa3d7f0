"""The table of bad inputs in docs/errors.md ("Bad input"): each, run through the command line, ends in one line
naming the culprit, exit code 2, before any training, and leaves no file behind where the run would have gone."""

import json
import re
import textwrap

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.data.synthetic import make_shapes
from tests.conftest import REPO, TINY_ARCH


def _train(data, tmp_path, *extra):
    """A short run on the dataset folder ``data`` (``data/shapes`` of the data root, unless another)."""
    folder = data / "shapes" if (data / "shapes").is_dir() else data
    return ["train", f"model={TINY_ARCH}", f"dataset={folder}", "protocol.shots=2", "optim.max_epochs=1",
            "runtime.progress=false", f"output_dir={tmp_path / 'out'}", *extra]


def _experiment(tmp_path, data, body: str):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: bad\noutput: {tmp_path / 'out'}\n" + textwrap.dedent(body).replace("DATA", str(data)))
    return ["sweep", str(exp)]


def _finished(data, tmp_path):
    assert main(_train(data, tmp_path)) == 0
    return tmp_path / "out"


def case_lr_of_400_digits(data, tmp_path):
    return _train(data, tmp_path, "optim.lr=1" + "0" * 400), r"optim.lr=1000.*\.\.\.: expected a number > 0 \(finite"


def case_seed_beyond_32_bits(data, tmp_path):
    return _train(data, tmp_path, "seed=4294967296"), r"seed=4294967296: expected an integer >= 0 and <= 4000000"


def case_seed_beyond_epoch_seeds(data, tmp_path):
    return _train(data, tmp_path, "seed=5000000"), r"seed=5000000: expected an integer >= 0 and <= 4000000"


def case_feature_dtype_int8(data, tmp_path):
    return _train(data, tmp_path, "data.feature_dtype=int8"), r"data.feature_dtype='int8': expected float32 or float16"


def case_precision_banana(data, tmp_path):
    return _train(data, tmp_path, "trainer.precision=banana"), r"trainer.precision='banana'.*Precision 'banana'"


def case_accelerator_tpu(data, tmp_path):
    return _train(data, tmp_path, "trainer.accelerator=tpu"), r"trainer.accelerator='tpu'.*Lightning refuses them"


def case_strategy_foo(data, tmp_path):
    return _train(data, tmp_path, "trainer.strategy=foo"), r"trainer.strategy='foo'.*invalid strategy name"


def case_accelerator_gpu_without_gpu(data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return _train(data, tmp_path, "trainer.accelerator=gpu"), r"trainer.accelerator='gpu'.*No supported gpu backend"


def case_precision_fp16(data, tmp_path):
    return _train(data, tmp_path, "trainer.precision=fp16"), r"trainer.precision='fp16'.*Precision 'fp16' is invalid"


def case_shots_beyond_every_class(data, tmp_path):
    return (_train(data, tmp_path, "protocol.shots=100"),
            r"^error: protocol.shots=100: no class of dataset shapes has 100 training images \(the most: 2, the "
            r"fewest: 2, class 'red circle'\); choose protocol.shots <= 2, or -1 for all$")


def case_resume_without_checkpoint(data, tmp_path):
    return (_train(data, tmp_path, "resume=true"),
            rf"resume=true: there is no checkpoint {tmp_path / 'out' / 'checkpoints' / 'last.ckpt'} to resume from")


def case_averaging_beyond_the_epochs(data, tmp_path):
    return (_train(data, tmp_path, "method=promptsrc", "optim.max_epochs=4"),
            r"method.averaging.init_args.mean=30.0: expected an epoch from 1 to 4 \(optim.max_epochs=4\)")


def case_prompt_depth_beyond_the_model(data, tmp_path):
    return (_train(data, tmp_path, "method=maple"),
            r"^error: method.context.init_args.depth=9: the text transformer of tiny_clip has 2 blocks$")


def case_template_two_braces(data, tmp_path):
    return (_train(data, tmp_path, "method=zeroshot", "dataset.init_args.template={} and {}"),
            r"template '\{\} and \{\}' must hold exactly one \{\}")


def case_template_named_field(data, tmp_path):
    return (_train(data, tmp_path, "method=zeroshot", "dataset.init_args.template='a {foo} {}'"),
            r"template 'a \{foo\} \{\}' must hold exactly one \{\}, .* and no other braces")


def case_eval_subsets_unknown(data, tmp_path):
    return _train(data, tmp_path, "protocol.eval_subsets=[everything]"), r"protocol.eval_subsets=\['everything'\]"


def case_class_specific_base_to_novel(data, tmp_path):
    return (_train(data, tmp_path, "method=coop_csc", "protocol=base2novel"),
            r"method coop_csc learns a classifier over its training classes .*novel.*protocol=fewshot")


def case_base_to_novel_on_all_classes(data, tmp_path):
    return (_train(data, tmp_path, "protocol=base2novel", "protocol.subsample=all"),
            r"protocol.subsample=all: the run trains on every class")


def case_one_class_half(data, tmp_path):
    three = make_shapes(tmp_path / "three", colours=("red",), n_train=2, n_val=1, n_test=2)
    return (_train(three, tmp_path, "protocol=base2novel"),
            r"the novel class set of dataset three has 1 class \(red triangle\): classifying needs at least 2")


def case_one_class_dataset(data, tmp_path):
    one = make_shapes(tmp_path / "one", colours=("red",), shapes=("circle",), n_train=2, n_val=1, n_test=2)
    return _train(one, tmp_path), r"class set of dataset one has 1 class \(red circle\): classifying needs at least 2"


def case_export_into_a_folder(data, tmp_path):
    run = _finished(data, tmp_path)
    return ["export", str(run), "--out", str(tmp_path)], r"--out .* is a folder: give the .safetensors file"


def case_plot_into_a_file(data, tmp_path):
    run = _finished(data, tmp_path)
    (tmp_path / "a_file").write_text("")
    return ["plot", str(run), "--out", str(tmp_path / "a_file")], r"--out .*a_file is a file: give a folder"


def case_prepare_under_proc(data, tmp_path):
    return ["datasets", "prepare", "shapes", "--root", "/proc/x"], r"--root /proc/x: cannot write there"


def case_prepare_into_a_file(data, tmp_path):
    (tmp_path / "a_file").write_text("")
    return (["datasets", "prepare", "shapes", "--root", str(tmp_path / "a_file")],
            r"--root .*a_file is a file: give the folder that holds")


def case_experiment_unknown_resolver(data, tmp_path):
    return (_experiment(tmp_path, data, """\
        args: [model=tiny, data.root=DATA, "seed=${nope:x}"]
        grid: {method: [coop], dataset: [shapes]}
        """), r"experiment .*exp.yaml: Unsupported interpolation type nope")


def case_experiment_self_reference(data, tmp_path):
    return (_experiment(tmp_path, data, """\
        args: [model=tiny, data.root=DATA]
        grid: {method: [coop], dataset: [shapes]}
        loop: ${loop}
        """), r"experiment .*exp.yaml: .*loop")


def case_experiment_dict_grid_value(data, tmp_path):
    return (_experiment(tmp_path, data, """\
        args: [model=tiny, data.root=DATA]
        grid: {method: [coop], dataset: [shapes], seed: [{a: 1}]}
        """), r"grid key 'seed': its values must be single values")


def case_experiment_repeated_value(data, tmp_path):
    return (_experiment(tmp_path, data, """\
        args: [model=tiny, data.root=DATA]
        grid: {method: [coop], dataset: [shapes], seed: [1, 1]}
        """), r"grid key 'seed' lists 1 more than once: each value is one run")


def _files(root):
    """Every file and folder under ``root``, but the few-shot draws a dataset keeps (a cache of the data)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if "split_fewshot" not in p.parts)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, data, tmp_path, capsys):
    args, pattern = CASES[case](data, tmp_path)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("error: "), err
    assert re.search(pattern, err), err
    assert _files(tmp_path) == before  # nothing written


@pytest.mark.parametrize("device, message", [
    ("bogus", "--device 'bogus': not a torch device"),
    ("cuda", "--device cuda: no CUDA GPU is available here; use --device cpu"),
])
def test_bench_on_a_device_it_cannot_use_is_one_line(capsys, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--device", device])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_loggers_as_one_name_means_that_logger(data, tmp_path):
    assert main(_train(data, tmp_path, "runtime.loggers=csv")) == 0
    assert (tmp_path / "out" / "logs").is_dir()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["metrics"]


def test_every_case_is_in_the_errors_table():
    table = (REPO / "docs" / "errors.md").read_text().split("## Bad input", 1)[-1]
    missing = [c for c in CASES if f"`{c}`" not in table]
    assert not missing, f"add rows to the 'Bad input' table of docs/errors.md for {missing}"
