"""Shared fixtures: a tiny random CLIP and a generated shapes dataset (no downloads anywhere)."""

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

# matplotlib's font cache: in a temporary folder removed at exit, never in ~/.cache (set before any import)
if "MPLCONFIGDIR" not in os.environ:
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="pt-tests-mpl-")
    atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], True)

import pytest
import torch

from prompt_tuning.clip import FrozenCLIP
from prompt_tuning.contexts.base import Task
from prompt_tuning.data.synthetic import make_shapes

ASSETS = Path(__file__).parent / "assets"
TINY_ARCH = ASSETS / "tiny_clip.json"
REPO = Path(__file__).resolve().parents[1]


# the tiny CLIP has 2 blocks per tower: deep-prompt methods get a prompt depth that fits it
TINY_METHOD_ARGS = {
    "ivlp": ["method.context.init_args.depth_text=2", "method.context.init_args.depth_vision=2"],
    "deep_language": ["method.context.init_args.depth_text=2"],
    "vpt_deep": ["method.context.init_args.depth_vision=2"],
    "maple": ["method.context.init_args.depth=2"],
    "promptsrc": ["method.context.init_args.depth_text=2", "method.context.init_args.depth_vision=2"],
}


def tiny_method_args(method: str) -> list[str]:
    """Overrides a method needs to run on the tiny CLIP (its prompt depth at most the 2 blocks)."""
    return TINY_METHOD_ARGS.get(method, [])


def build_tiny(seed: int = 0) -> FrozenCLIP:
    torch.manual_seed(seed)
    return FrozenCLIP.build("tiny", None, arch=json.loads(TINY_ARCH.read_text()))


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
def shapes_dir(tmp_path_factory) -> Path:
    """9 classes, 16 train / 4 val / 20 test images each, 32 px, CoOp split-file layout."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), seed=0)


@pytest.fixture
def task() -> Task:
    return Task(("red circle", "great_crested_grebe", "dog", "blue square"), "a photo of a {}.")
