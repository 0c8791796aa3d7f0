"""Experiment and config files read by the command line: `--only` that matches nothing names the grid's values,
`--only key=a,b` keeps either value, and a YAML syntax error names the file and line."""


import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.core.errors import UserError
from tests.helpers import one_line, write_experiment


def test_only_matching_nothing_lists_the_grid_values(tmp_path, capsys):
    from prompt_tuning.data.synthetic import make_shapes

    make_shapes(tmp_path / "data" / "shapes", n_train=2, n_val=1, n_test=2)
    exp = write_experiment(tmp_path, tmp_path / "data")
    assert main(["sweep", str(exp), "--only", "seed=9"]) == 2
    assert "--only seed=9 matches nothing: the grid's seed values are 1, 2" in one_line(capsys)


def test_only_takes_a_comma_list_of_alternatives(tmp_path):
    from prompt_tuning.config.experiment import expand, load_experiment

    exp = load_experiment(write_experiment(tmp_path, tmp_path / "data", extra="  protocol.shots: [1, 2]\n"))
    picked = expand(exp, ["method=zeroshot,coop", "seed=2"])
    assert [(r.choice["method"], r.choice["seed"]) for r in picked] == [("zeroshot", 2)] * 2 + [("coop", 2)] * 2
    assert expand(exp, ["method=coop", "method=zeroshot"]) == expand(exp, ["method=zeroshot,coop"])
    with pytest.raises(UserError, match="^--only method=coop_csc matches nothing: the grid's method values are "
                                        "zeroshot, coop$"):
        expand(exp, ["method=zeroshot,coop_csc"])


@pytest.mark.parametrize("kind", ["config", "experiment"])
def test_yaml_syntax_errors_name_file_and_line(tmp_path, capsys, kind):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncontext: {class_path: a\n")
    args = ["sweep", str(bad)] if kind == "experiment" else ["train", f"method={bad}", "dataset=eurosat"]
    assert main(args) == 2
    assert f"{bad}:3:1: YAML syntax error in this {kind} file" in one_line(capsys)
