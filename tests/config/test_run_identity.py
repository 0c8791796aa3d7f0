"""A run's folder names what changes its numbers: the model, and a tag for every other override, so that runs
of other models or settings never share a folder, in `train` and in sweeps with overrides."""

import json

import pytest

from prompt_tuning.apps import sweep as sweep_mod
from prompt_tuning.apps.cli import main
from prompt_tuning.config.compose import compose
from prompt_tuning.config.experiment import expand, swept_copy, swept_experiment, with_overrides
from prompt_tuning.config.identity import MAX_TAG, override_tag
from prompt_tuning.core.errors import UserError


def _dir(*args):
    return compose(["dataset=eurosat", "method=coop", *args]).output_dir


def test_the_model_and_the_overrides_name_the_folder():
    assert _dir("model=rn50").endswith("/eurosat/coop/rn50/fewshot/shots_16/seed_1")
    assert _dir("model=tiny", "protocol=base2novel").endswith("/eurosat/coop/tiny/base2novel/shots_16/seed_1")
    assert _dir("optim.lr=0.01", "method.context.init_args.n_ctx=4", "seed=2").endswith(
        "/coop/vit_b16/fewshot-lr0.01-n_ctx4/shots_16/seed_2")


def test_keys_that_do_not_change_the_numbers_leave_the_folder_alone():
    plain = _dir()
    assert _dir("runtime.num_workers=2", "runtime.feature_cache=false", "resume=true", "tags.note=x",
                "data.root=/elsewhere") == plain
    assert _dir("protocol.shots=16") == plain  # the shots have their own level


def test_a_path_value_enters_as_its_name_and_a_digest():
    a, b = _dir("model.pretrained=/ckpt/one/w.pt"), _dir("model.pretrained=/ckpt/two/w.pt")
    assert "fewshot-pretrainedw.pt." in a and a != b and "/ckpt/" not in a.partition("fewshot")[2]


def test_a_long_tag_is_cut_and_stays_unique():
    many = [("optim.lr", "0.01"), ("optim.weight_decay", "0.0005"), ("data.batch_size", "16"),
            ("method.context.init_args.n_ctx", "8"), ("optim.warmup_epochs", "2")]
    tag = override_tag(many)
    assert len(tag) <= MAX_TAG and tag.startswith("lr0.01-weight_decay0.0005")
    assert tag != override_tag([*many[:-1], ("optim.warmup_epochs", "3")])


def test_a_sweep_with_overrides_never_uses_the_plain_folders(tmp_path):
    exp = {"name": "e", "output": str(tmp_path), "args": ["model=tiny", "dataset=eurosat"], "overrides": [],
           "grid": {"method": ["coop"], "method.context.init_args.n_ctx": [4], "seed": [1]}}
    (plain,) = (compose(r.args).output_dir for r in expand(exp))
    (other,) = (compose(r.args).output_dir for r in expand(with_overrides(exp, ["optim.lr=0.01"])))
    (rn50,) = (compose(r.args).output_dir for r in expand(with_overrides(exp, ["model=rn50"])))
    assert plain == f"{tmp_path}/eurosat/coop/tiny/fewshot-n_ctx4/shots_16/seed_1"  # args do not tag, grid keys do
    assert other == f"{tmp_path}/eurosat/coop/tiny/fewshot-n_ctx4-lr0.01/shots_16/seed_1"
    assert rn50 == f"{tmp_path}/eurosat/coop/rn50/fewshot-n_ctx4/shots_16/seed_1"
    assert swept_copy(exp) == "experiment.yaml"
    assert swept_copy(with_overrides(exp, ["model=rn50", "optim.lr=0.01"])) == "experiment-modelrn50-lr0.01.yaml"


def test_table_reads_the_plain_copy_or_the_only_override_copy(tmp_path):
    assert swept_experiment(tmp_path) is None
    (tmp_path / "experiment-lr0.01.yaml").write_text("name: e\n")
    assert swept_experiment(tmp_path).name == "experiment-lr0.01.yaml"
    (tmp_path / "experiment-lr0.1.yaml").write_text("name: e\n")
    with pytest.raises(UserError, match="2 sweeps with overrides .* choose one with --experiment"):
        swept_experiment(tmp_path)
    (tmp_path / "experiment.yaml").write_text("name: e\n")
    assert swept_experiment(tmp_path).name == "experiment.yaml"


def test_plain_and_override_sweeps_keep_their_own_runs_and_tables(tmp_path, shapes_dir, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({
        "name": "tiny", "output": str(tmp_path / "out"),
        "args": ["model=tiny", f"dataset={shapes_dir}", "optim.max_epochs=1", "data.batch_size=8"],
        "grid": {"method": ["coop"], "protocol.shots": [1], "seed": [1]},
    }))
    assert sweep_mod.sweep(exp, log=lambda m: None)["ran"] == 1
    counts = sweep_mod.sweep(exp, overrides=["optim.lr=0.5"], log=lambda m: None)
    assert counts["ran"] == 1 and counts["changed"] == 0  # its own folder, not "another configuration"
    results = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("result.json"))
    assert results == ["shapes0/coop/tiny/fewshot-lr0.5/shots_1/seed_1/result.json",
                       "shapes0/coop/tiny/fewshot/shots_1/seed_1/result.json"]
    lr = {json.loads((tmp_path / "out" / r).read_text())["config_hash"] for r in results}
    assert len(lr) == 2
    capsys.readouterr()
    copy = tmp_path / "out" / "experiment-lr0.5.yaml"
    assert main(["table", str(tmp_path / "out"), "--experiment", str(copy)]) == 0
    out = capsys.readouterr()
    assert "11.11" in out.out and "1 result.json not counted" in out.err  # the plain run is not this sweep's
