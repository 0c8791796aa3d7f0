"""Config composition: groups and overrides, struct-mode errors (unknown keys, wrong types, unknown group values,
misspelt init_args), numeric range checks, init_args typed by their class's signature, and the run hash."""

from pathlib import Path

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.config.compose import compose, group_options
from prompt_tuning.config.hashing import run_hash
from prompt_tuning.core.errors import UserError
from tests.conftest import CONFIGS, TINY_ARCH


def _base(shapes_dir, *extra):
    return ["model=tiny", f"dataset={shapes_dir}", *extra]


def test_groups_and_overrides_compose(shapes_dir):
    cfg = compose(_base(shapes_dir, "method=coop", "protocol=fewshot", "protocol.shots=4", "seed=2",
                        "method.context.init_args.n_ctx=8", "optim.lr=0.01"))
    assert cfg.protocol.shots == 4 and cfg.seed == 2 and cfg.optim.lr == 0.01
    assert cfg.method.context.init_args.n_ctx == 8
    assert cfg.method.context.class_path == "prompt_tuning.methods.contexts.coop.CoOp"
    assert cfg.dataset.class_path == "prompt_tuning.data.datasets.Folder"
    assert cfg.output_dir.endswith(f"{Path(shapes_dir).name}/coop/tiny/fewshot-n_ctx8-lr0.01/shots_4/seed_2")


def test_model_can_be_an_open_clip_json_and_init_args_can_be_added(shapes_dir):
    cfg = compose([f"model={TINY_ARCH}", f"dataset={shapes_dir}", "method.context.init_args.csc=true"])
    assert cfg.model.arch == str(TINY_ARCH) and cfg.model.pretrained is None
    assert cfg.method.context.init_args.csc is True


def test_unknown_key_lists_valid_keys_and_suggests(shapes_dir):
    with pytest.raises(UserError, match=r"unknown config key 'protocol.shot'; did you mean 'shots'.*valid keys"):
        compose(_base(shapes_dir, "protocol.shot=4"))
    with pytest.raises(UserError, match="unknown config key 'nonsense'"):
        compose(_base(shapes_dir, "nonsense=1"))


def test_wrong_type_is_an_error(shapes_dir):
    with pytest.raises(UserError, match=r"protocol.shots='abc': expected int"):
        compose(_base(shapes_dir, "protocol.shots=abc"))
    with pytest.raises(UserError, match=r"data.augment=3: expected bool"):
        compose(_base(shapes_dir, "data.augment=3"))
    assert compose(_base(shapes_dir, "optim.lr=1")).optim.lr == 1  # an int where a float is expected is fine


def test_unknown_group_value_lists_the_choices(shapes_dir):
    with pytest.raises(UserError, match=r"method='cop'.*did you mean 'coop'.*choose one of .*cocoop, coop, "):
        compose(_base(shapes_dir, "method=cop"))


def test_missing_dataset_is_asked_for():
    with pytest.raises(UserError, match="choose a dataset"):
        compose(["model=tiny"])


def test_misspelt_init_arg_names_the_valid_arguments(shapes_dir):
    with pytest.raises(UserError, match=r"init_args.nctx: not an argument of .*CoOp; did you mean 'n_ctx'"):
        compose(_base(shapes_dir, "method.context.init_args.nctx=4"))


def test_malformed_argument():
    with pytest.raises(UserError, match="not of the form key=value"):
        compose(["protocol.shots"])


def test_run_hash_tracks_what_changes_numbers(shapes_dir):
    a = compose(_base(shapes_dir))
    assert run_hash(a) == run_hash(compose(_base(shapes_dir, "output_dir=/elsewhere", "runtime.num_workers=2")))
    assert run_hash(a) != run_hash(compose(_base(shapes_dir, "seed=2")))
    assert len(run_hash(a)) == 12


def test_group_options_lists_configs():
    assert {"coop", "zeroshot"} <= set(group_options("method"))
    assert {"fewshot", "base2novel"} <= set(group_options("protocol"))


def test_init_args_are_typed_by_the_signature_so_a_list_may_replace_a_name(shapes_dir, tmp_path):
    """A template-set name is the default, a list of templates is just as valid: on the command line as in a
    YAML. A value of a type the argument does not take is a one-line error naming the key."""
    cli = compose(_base(shapes_dir, "method=promptsrc", 'method.objective.init_args.templates=["a {}.", "the {}."]'))
    recipe = tmp_path / "promptsrc_two.yaml"
    recipe.write_text((CONFIGS / "method/promptsrc.yaml").read_text().replace(
        "templates: CLIP_IMAGENET_60", 'templates: ["a {}.", "the {}."]'))
    from_yaml = compose(_base(shapes_dir, f"method={recipe}"))
    assert list(cli.method.objective.init_args.templates) == ["a {}.", "the {}."]
    assert from_yaml.method.objective.init_args == cli.method.objective.init_args
    with pytest.raises(UserError, match=r"init_args.n_ctx='abc': expected int"):
        compose(_base(shapes_dir, "method=coop", "method.context.init_args.n_ctx=abc"))
    with pytest.raises(UserError, match=r"init_args.templates=3: expected str \| list\[str\]"):
        compose(_base(shapes_dir, "method=promptsrc", "method.objective.init_args.templates=3"))


@pytest.mark.parametrize("arg, accepted", [
    ("optim.max_epochs=-1", "an integer >= 1"),
    ("seed=-3", "an integer >= 0"),
    ("optim.lr=-0.1", "a number > 0"),
    ("data.batch_size=0", "an integer >= 1"),
    ("data.eval_batch_size=0", "an integer >= 1"),
    ("optim.optimizer.init_args.momentum=1.5", "a number in [0, 1)"),
    ("data.crop_scale=[0.5,0.1]", "0 < min <= max <= 1"),
    ("protocol.epochs.16=0", "an integer >= 1"),
])
def test_out_of_range_values_are_one_line_errors(arg, accepted, capsys, tmp_path):
    code = main(["train", "model=tiny", "dataset=eurosat", arg, f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {arg.split('=')[0]}=") and accepted in err
    assert not (tmp_path / "run").exists()
