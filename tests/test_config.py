"""Config composition, struct-mode errors, class_path instantiation; every method config runs one step."""

from pathlib import Path

import pytest
import torch

from prompt_tuning.config import compose, group_options, run_hash
from prompt_tuning.errors import UserError
from prompt_tuning.runner import build
from tests.conftest import REPO, TINY_ARCH, tiny_method_args

METHODS = sorted(p.stem for p in (REPO / "configs" / "method").glob("*.yaml"))


def _base(shapes_dir, *extra):
    return ["model=tiny", f"dataset={shapes_dir}", *extra]


def test_groups_and_overrides_compose(shapes_dir):
    cfg = compose(_base(shapes_dir, "method=coop", "protocol=fewshot", "protocol.shots=4", "seed=2",
                        "method.context.init_args.n_ctx=8", "optim.lr=0.01"))
    assert cfg.protocol.shots == 4 and cfg.seed == 2 and cfg.optim.lr == 0.01
    assert cfg.method.context.init_args.n_ctx == 8
    assert cfg.method.context.class_path == "prompt_tuning.contexts.coop.CoOp"
    assert cfg.dataset.class_path == "prompt_tuning.data.datasets.Folder"
    assert cfg.output_dir.endswith(f"{Path(shapes_dir).name}/coop/fewshot/shots_4/seed_2")


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


@pytest.mark.parametrize("method", METHODS)
def test_every_method_config_builds_on_tiny_clip_and_runs_one_step(shapes_dir, method):
    cfg = compose(_base(shapes_dir, f"method={method}", "protocol.shots=2", "data.batch_size=8",
                        *tiny_method_args(method)))
    setup = build(cfg)
    batch = next(iter(setup.datamodule.train_dataloader()))
    module = setup.module
    outputs = module.training_outputs(batch)
    assert outputs.logits.shape[1:] == (8, 9)
    if module.trainable:
        loss = sum(module.loss_terms(outputs, batch["label"]).values())
        loss.backward()
        grads = [p.grad for p in module.context.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_init_args_are_typed_by_the_signature_so_a_list_may_replace_a_name(shapes_dir, tmp_path):
    """A template-set name is the default, a list of templates is just as valid: on the command line as in a
    YAML. A value of a type the argument does not take is a one-line error naming the key."""
    cli = compose(_base(shapes_dir, "method=promptsrc", 'method.objective.init_args.templates=["a {}.", "the {}."]'))
    recipe = tmp_path / "promptsrc_two.yaml"
    recipe.write_text((REPO / "configs/method/promptsrc.yaml").read_text().replace(
        "templates: CLIP_IMAGENET_60", 'templates: ["a {}.", "the {}."]'))
    from_yaml = compose(_base(shapes_dir, f"method={recipe}"))
    assert list(cli.method.objective.init_args.templates) == ["a {}.", "the {}."]
    assert from_yaml.method.objective.init_args == cli.method.objective.init_args
    with pytest.raises(UserError, match=r"init_args.n_ctx='abc': expected int"):
        compose(_base(shapes_dir, "method=coop", "method.context.init_args.n_ctx=abc"))
    with pytest.raises(UserError, match=r"init_args.templates=3: expected str \| list\[str\]"):
        compose(_base(shapes_dir, "method=promptsrc", "method.objective.init_args.templates=3"))
