"""The notebooks: committed as ``notebooks/make_notebooks.py`` writes them, and they run end to end with
``BUDGET = "small"`` (a cell injected after the ``parameters`` cell, papermill's convention)."""

import json
import os
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
sys.path.insert(0, NOTEBOOKS)

import make_notebooks  # noqa: E402


@pytest.mark.parametrize("name", sorted(make_notebooks.NOTEBOOKS))
def test_committed_notebook_is_what_the_script_writes(name):
    with open(os.path.join(NOTEBOOKS, name)) as f:
        committed = json.load(f)
    expected = json.loads(nbformat.writes(make_notebooks.build(make_notebooks.NOTEBOOKS[name])))
    assert committed == expected, f"notebooks/{name} differs: run python notebooks/make_notebooks.py"


def execute(name: str, overrides: str) -> nbformat.NotebookNode:
    """Runs the notebook from notebooks/ (so it finds this checkout) with ``overrides`` after its
    parameters cell; returns it with outputs."""
    from nbclient import NotebookClient

    notebook = make_notebooks.build(make_notebooks.NOTEBOOKS[name])
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    return notebook


def text_outputs(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []) if output.get("output_type") == "stream")


@pytest.mark.slow
def test_quickstart_runs_with_the_small_budget(tmp_path):
    workdir = tmp_path / "work"
    notebook = execute("quickstart.ipynb", f'BUDGET = "small"\nWORKDIR = {str(workdir)!r}')
    text = text_outputs(notebook)
    assert "finished" in text and "best λ =" in text and "Σδ_t =" in text
    # It trained and wrote its checkpoints, the λ search report and the δ_t results into WORKDIR.
    assert os.listdir(workdir / "checkpoints") == ["20"]
    assert os.path.isdir(workdir / "lambda_search") and os.path.isdir(workdir / "exposure_bias")
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3      # loss curve, the two grids, the δ_t plot


@pytest.mark.slow
def test_library_notebook_runs_with_the_small_budget():
    notebook = execute("library.ipynb", 'BUDGET = "small"')
    text = text_outputs(notebook)
    line = text.split("loss, mean of the first and last ")[1].split("\n")[0]
    first, last = (float(v) for v in line.split(": ")[1].split(" -> "))
    assert last < first      # 50 Adam steps already lower the Debias-weighted loss
    assert "λ_i of linear(k=0.002, b=1.0)" in text
