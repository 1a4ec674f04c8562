"""The notebooks execute headless without errors (a failing cell fails the test), at tiny sizes
(QS_ATTN_NOTEBOOK_SMOKE=1), and display their figures. They are stored without outputs."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "qs_attention_explained.ipynb", "custom_components.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    stored = json.loads(path.read_text())
    assert all(not c.get("outputs") for c in stored["cells"] if c["cell_type"] == "code"), "stored with outputs"
    monkeypatch.setenv("QS_ATTN_NOTEBOOK_SMOKE", "1")
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert printed  # the cells report what they computed
    # and show their figures (a non-interactive backend such as Agg would silently show none)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
