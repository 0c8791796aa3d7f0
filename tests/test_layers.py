"""The package's layers read bottom-up: lower modules never import higher ones (checked in a fresh interpreter,
where nothing else has been imported yet)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

# module -> modules it must not pull in
LAYERS = {
    "prompt_tuning.objectives": ["prompt_tuning.module", "prompt_tuning.runner"],
    "prompt_tuning.contexts.coop": ["prompt_tuning.module", "prompt_tuning.objectives", "prompt_tuning.runner"],
    "prompt_tuning.data.fewshot_cache": ["prompt_tuning.results", "prompt_tuning.runner", "prompt_tuning.module"],
    "prompt_tuning.data.prepare": ["prompt_tuning.results", "prompt_tuning.runner"],
    "prompt_tuning.features": ["prompt_tuning.results", "prompt_tuning.runner", "prompt_tuning.module"],
    "prompt_tuning.files": ["prompt_tuning.results", "prompt_tuning.config"],
}


@pytest.mark.parametrize("module, forbidden", LAYERS.items(), ids=list(LAYERS))
def test_lower_layers_do_not_import_higher_ones(module, forbidden):
    code = f"import sys, {module}; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"
