"""The README's recipes for each kind of method work as written: every Python and YAML block of "Adding a
method" is copied verbatim into a package and a config folder of a user's own, and each method trains one epoch
from the command line on the tiny CLIP, its checkpoint holding only its learned tensors. Every Python block of the
README passes the project's own `ruff check`, in this repository and copied into a folder of one's own. A test
session removes its temporary folders."""

import json
import os
import re
import shutil
import subprocess
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


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


@pytest.mark.parametrize("where", ["a folder of ones own", "this repository"])
def test_every_python_block_of_the_readme_passes_the_projects_ruff(tmp_path, where):
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    assert len(PYTHON_BLOCKS) >= 7  # the export example and the Adding a method recipes
    ruff = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml")]
    failures = []
    for i, code in enumerate(PYTHON_BLOCKS):
        if where == "this repository":  # as a file of the repository would be read (its own package first-party)
            out = subprocess.run([*ruff, "--stdin-filename", str(REPO / "my_lab" / f"block_{i}.py"), "-"],
                                 input=code, capture_output=True, text=True, cwd=REPO)
        else:
            (tmp_path / f"block_{i}.py").write_text(code)
            out = subprocess.run([*ruff, f"block_{i}.py"], capture_output=True, text=True, cwd=tmp_path)
        if out.returncode != 0:
            failures.append(f"README python block {i} ({code.splitlines()[0]}):\n{out.stdout}{out.stderr}")
    assert not failures, "\n".join(failures)


def test_a_test_session_leaves_nothing_in_the_temporary_folder(tmp_path):
    """pytest keeps its sessions' tmp_path folders under /tmp/pytest-of-<user>; this suite's conftest gives each
    session a folder of its own and removes it, so the README's promise holds."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR")}
    test = "tests/runs/test_shared_folders.py::test_atomic_files_and_locks_get_the_umasks_permissions"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          cwd=REPO, env={**env, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "3 passed" in done.stdout  # the test used tmp_path, three times
    assert sorted(p.name for p in tmp.iterdir()) == []
