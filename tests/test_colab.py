"""launch/colab.ipynb executes top to bottom (offline, on digits) with the installed kdt."""

import os

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' installs nbclient")
nbformat = pytest.importorskip("nbformat")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab.ipynb")


def test_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
  # The kernel inherits this environment: a cut-down run (documented in the notebook), CPU, a
  # temporary workdir, and compile settings as in conftest.py.
  monkeypatch.setenv("KDT_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("KDT_NOTEBOOK_WORKDIR", str(tmp_path / "workdir"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
      "commit the notebook without outputs")
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

  outputs = ["".join(o.get("text", "") for o in cell.outputs)
             for cell in notebook.cells if cell.cell_type == "code"]
  assert "kdt is already importable: skipping the install." in outputs[0]
  images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
            if "image/png" in o.get("data", {})]
  assert images, "the accuracy-vs-weights plot was not displayed"
  assert "pruned weights that are non-zero: 0" in outputs[-1]
  assert os.path.exists(tmp_path / "workdir" / "results.json")
  # The ticket leaves kdt: load_ticket, save_npz, and np.load reads it back.
  assert any("is zero wherever the mask is False" in o for o in outputs)
  assert os.path.exists(tmp_path / "workdir" / "ticket_round2_lth.npz")
