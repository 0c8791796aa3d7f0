"""Both notebooks execute top to bottom, offline, on the tiny model, and print their tables."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("name", ["new_method", "fewshot_ablation"])
def test_notebook_runs_top_to_bottom(name, tmp_path):
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "| method | shots | dataset | acc |" in text
