"""The README's recipes for each kind of method work as written: every Python and YAML block of "Adding a
method" is copied verbatim into a package and a config folder of a user's own, and each method trains one epoch
from the command line on the tiny CLIP, its checkpoint holding only its learned tensors."""

import json
import re
import sys

import pytest

from prompt_tuning.apps.cli import main
from prompt_tuning.runs.build import build
from prompt_tuning.runs.checkpoints import load_checkpoint
from prompt_tuning.runs.folder import RunFolder
from tests.conftest import REPO, TINY_ARCH

SECTION = (REPO / "README.md").read_text().split("## Adding a method", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```(python|yaml)\n# (\S+)\n(.*?)```", SECTION, re.S)  # (language, path, text)
METHODS = [path.split("/")[-1].removesuffix(".yaml") for lang, path, _ in BLOCKS if lang == "yaml"]


def test_the_section_has_a_recipe_for_each_kind():
    kinds = re.findall(r"^### (.+)$", SECTION, re.M)
    assert kinds == ["A text context", "Prompts in both towers", "A hook of your own", "A head",
                     "An objective that needs more than the logits", "A gradient rule"]
    assert len(METHODS) == len(kinds) and all(lang in ("python", "yaml") for lang, _, _ in BLOCKS)


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory):
    """``my_lab/`` (the Python blocks, importable) and ``my_configs/`` (the YAML blocks), verbatim."""
    root = tmp_path_factory.mktemp("user")
    for _, path, text in BLOCKS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "my_lab" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "my_lab" or m.startswith("my_lab.")]:
        del sys.modules[name]


@pytest.mark.parametrize("method", METHODS)
def test_each_recipe_trains_from_the_command_line(user_folders, shapes_dir, tmp_path, monkeypatch, method):
    monkeypatch.setenv("PT_CONFIG_DIR", str(user_folders / "my_configs"))
    out = tmp_path / method
    assert main(["train", f"method={method}", f"model={TINY_ARCH}", f"dataset={shapes_dir}", "protocol.shots=2",
                 "optim.max_epochs=1", "data.batch_size=6", "runtime.progress=false", f"output_dir={out}"]) == 0
    folder = RunFolder(out)
    result = json.loads((out / RunFolder.RESULT).read_text())
    assert result["method"] == method and result["epochs"] == 1
    learned = {f"method.{n}" for n, p in build(folder.config()).module.method.named_parameters() if p.requires_grad}
    assert learned and set(load_checkpoint(folder.last_checkpoint)["state_dict"]) == learned
