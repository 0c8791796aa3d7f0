"""Experiment and config files read by the command line: `--only` that matches nothing names the grid's values,
and a YAML syntax error names the file and line."""


import pytest

from prompt_tuning.apps.cli import main
from tests.helpers import one_line, write_experiment


def test_only_matching_nothing_lists_the_grid_values(tmp_path, capsys):
    from prompt_tuning.data.synthetic import make_shapes

    make_shapes(tmp_path / "data" / "shapes", n_train=2, n_val=1, n_test=2)
    exp = write_experiment(tmp_path, tmp_path / "data")
    assert main(["sweep", str(exp), "--only", "seed=9"]) == 2
    assert "--only seed=9 matches nothing: the grid's seed values are 1, 2" in one_line(capsys)


@pytest.mark.parametrize("kind", ["config", "experiment"])
def test_yaml_syntax_errors_name_file_and_line(tmp_path, capsys, kind):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncontext: {class_path: a\n")
    args = ["sweep", str(bad)] if kind == "experiment" else ["train", f"method={bad}", "dataset=eurosat"]
    assert main(args) == 2
    assert f"{bad}:3:1: YAML syntax error in this {kind} file" in one_line(capsys)
