"""Shared fixtures: tiny random CLIPs and a generated shapes dataset (no downloads anywhere)."""

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

# matplotlib's font cache and torch's compile cache (torch makes /tmp/torchinductor_<user> when imported): in
# temporary folders removed at exit, never in ~/.cache or left in /tmp (set before any import)
if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="pt-tests-mpl-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], True)
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="pt-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)

import pytest
import torch

from prompt_tuning.backbone import FrozenCLIP
from prompt_tuning.config.compose import PACKAGE_CONFIGS, group_options
from prompt_tuning.data.synthetic import make_shapes
from prompt_tuning.methods.base import Task

_BASETEMP: list[str] = []  # the session's temporary folder, when this conftest made it


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """The session's temporary folders (``tmp_path``) go to a folder of its own, removed when the session ends:
    pytest would otherwise keep the last three sessions' under ``/tmp/pytest-of-<user>``. ``--basetemp DIR``
    keeps them in DIR, to look at after a failure."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        _BASETEMP.append(tempfile.mkdtemp(prefix="pt-tests-"))
        config.option.basetemp = _BASETEMP[-1]


def pytest_unconfigure(config):
    while _BASETEMP:
        shutil.rmtree(_BASETEMP.pop(), ignore_errors=True)


ASSETS = Path(__file__).parent / "assets"
TINY_ARCH = ASSETS / "tiny_clip.json"  # 2 blocks per tower: fast, for tests of one mechanism
TINY_DEEP_ARCH = ASSETS / "tiny_clip_deep.json"  # 12 blocks per tower: every method config runs unchanged
REPO = Path(__file__).resolve().parents[1]
CONFIGS = PACKAGE_CONFIGS


def method_configs() -> list[str]:
    """Every method config on the config path (the package's, and any folder in ``$PT_CONFIG_DIR``)."""
    return group_options("method")


def build_tiny(seed: int = 0, arch: Path = TINY_ARCH, **options) -> FrozenCLIP:
    """A tiny random CLIP (seeded); ``options`` are `TextPassOptions` fields."""
    from prompt_tuning.backbone import TextPassOptions

    torch.manual_seed(seed)
    name = "tiny" if arch == TINY_ARCH else arch.stem
    return FrozenCLIP.build(name, None, arch=json.loads(arch.read_text()), options=TextPassOptions(**options))


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory):
    """Keep the feature cache of every run in the test session's temporary folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_clip() -> FrozenCLIP:
    return build_tiny()


@pytest.fixture(scope="session")
def deep_clip() -> FrozenCLIP:
    return build_tiny(arch=TINY_DEEP_ARCH)


@pytest.fixture(scope="module")
def clip4() -> FrozenCLIP:
    """A tiny CLIP with 4 blocks per tower and different tower widths (`tests.helpers.ARCH4`)."""
    from tests.helpers import ARCH4

    torch.manual_seed(0)
    return FrozenCLIP.build("tiny4", None, arch=ARCH4)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """9 classes, 16 train / 4 val / 20 test images each, 32 px, CoOp split-file layout."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), seed=0)


@pytest.fixture
def data(tmp_path) -> Path:
    """A data root holding a small shapes dataset (2 train, 1 val, 2 test images per class)."""
    make_shapes(tmp_path / "data" / "shapes", n_train=2, n_val=1, n_test=2)
    return tmp_path / "data"


@pytest.fixture
def task() -> Task:
    return Task(("red circle", "great_crested_grebe", "dog", "blue square"), "a photo of a {}.")


class ComposedRuns:
    """Composed configs memoised by (working folder, arguments): the tests that compose every run of the paper
    experiments (their recipes, their dry-run counts) compose each run once per session, not once per test."""

    def __init__(self):
        from prompt_tuning.config.compose import compose_annotated

        self.real, self.memo = compose_annotated, {}

    def __call__(self, args):
        import copy

        key = (os.getcwd(), tuple(args))
        if key not in self.memo:
            self.memo[key] = self.real(args)
        return copy.deepcopy(self.memo[key])  # a caller may change its config (compose_run sets resume)


@pytest.fixture(scope="session")
def composed_runs() -> ComposedRuns:
    return ComposedRuns()


@pytest.fixture(scope="session")
def paper_cwd(tmp_path_factory) -> Path:
    """An empty working folder (no dataset under it) for composing the paper experiments."""
    return tmp_path_factory.mktemp("paper-cwd")
