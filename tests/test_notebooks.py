"""The notebooks: committed exactly as ``notebooks/make_notebooks.py`` writes them, and both run end to end
with ``BUDGET = "small"`` (a cell injected after the ``parameters`` cell, papermill's convention), from a
temporary working directory so that nothing lands in the repository."""

import hashlib
import json
import math
import os
import re
import runpy

import nbformat
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
# run_path, not import: an import would write notebooks/__pycache__ into the repository.
make_notebooks = runpy.run_path(os.path.join(NOTEBOOKS, "make_notebooks.py"))


@pytest.mark.parametrize("name", sorted(make_notebooks["NOTEBOOKS"]))
def test_committed_notebook_is_what_the_script_writes(name):
    with open(os.path.join(NOTEBOOKS, name)) as f:
        committed = json.load(f)
    expected = json.loads(nbformat.writes(make_notebooks["build"](make_notebooks["NOTEBOOKS"][name])))
    assert committed == expected, f"notebooks/{name} differs: run python notebooks/make_notebooks.py"


def test_each_notebook_has_one_parameters_cell_with_a_budget():
    for cells in make_notebooks["NOTEBOOKS"].values():
        notebook = make_notebooks["build"](cells)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0].cell_type == "code"
        assert 'BUDGET = "full"' in tagged[0].source and "CHECKOUT = None" in tagged[0].source
        # The parameters come before the install cell, which reads CHECKOUT and REPO_URL.
        install = next(i for i, c in enumerate(notebook.cells) if "def find_checkout" in c.source)
        assert notebook.cells.index(tagged[0]) < install


def snapshot(folder: str) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its contents."""
    out = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                out[os.path.join(directory, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def execute(name: str, overrides: str, cwd) -> nbformat.NotebookNode:
    """Runs the committed notebook in ``cwd`` with ``overrides`` after its parameters cell (and this
    checkout as CHECKOUT); returns it with its outputs. Checks that notebooks/ is left as it was."""
    from nbclient import NotebookClient

    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(f"{overrides}\nCHECKOUT = {REPO!r}"))
    before = snapshot(NOTEBOOKS)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    assert snapshot(NOTEBOOKS) == before
    return notebook


def stream_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def cell_with(notebook: nbformat.NotebookNode, code: str) -> nbformat.NotebookNode:
    """The one code cell whose source contains ``code``."""
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and code in c.source]
    return cell


def has_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.slow
def test_quickstart_runs_with_the_small_budget(tmp_path):
    workdir = tmp_path / "work"
    notebook = execute("quickstart.ipynb", f'BUDGET = "small"\nWORKDIR = {str(workdir)!r}', tmp_path)
    assert f"jdiff from {REPO}" in stream_text(cell_with(notebook, "def find_checkout"))

    # Training: 20 steps, the loss logged at 10 and 20 and plotted, one checkpoint.
    train_cell = cell_with(notebook, "train.train_and_evaluate(config, WORKDIR)")
    assert "finished" in stream_text(train_cell) and has_image(train_cell)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20"]
    with open(workdir / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    losses = {m["step"]: m["loss"] for m in logged if "loss" in m}
    assert sorted(losses) == [10, 20] and all(math.isfinite(v) and v > 0 for v in losses.values())

    # λ search: the printed best is the report's best and the smallest of the printed scores.
    search_text = stream_text(cell_with(notebook, "lambda_search.search_lambda("))
    scores = {float(lam): float(score) for lam, score in re.findall(r"λ = ([\d.]+): Σδ_t = ([\d.e+-]+)",
                                                                    search_text)}
    assert sorted(scores) == [0.98, 1.01, 1.04]          # 3 points, 1 round over (0.98, 1.04)
    best = float(re.search(r"best λ = ([\d.]+)", search_text).group(1))
    assert best == min(scores, key=scores.get)
    (report,) = [f for f in os.listdir(workdir / "lambda_search") if f.endswith(".json")]
    with open(workdir / "lambda_search" / report) as f:
        assert json.load(f)["best"]["params"]["b"] == pytest.approx(best, abs=5e-5)

    # Two grids of the same noise, shown; they differ exactly when λ ≠ 1.
    grid_cell = cell_with(notebook, "grids = {")
    assert has_image(grid_cell)
    difference = float(re.search(r"mean \|difference\| per pixel: ([\d.]+)", stream_text(grid_cell)).group(1))
    assert (difference > 0) == (best != 1.0)

    # δ_t without and with ES: the printed sums are those of the JSON written next to the plot.
    delta_cell = cell_with(notebook, "exposure_bias.exposure_bias_for_checkpoint(")
    assert has_image(delta_cell)
    printed = dict(re.findall(r"(\S+(?: \S+)?): Σδ_t = ([\d.e+-]+) \(jdiff's\)", stream_text(delta_cell)))
    (result_file,) = [f for f in os.listdir(workdir / "exposure_bias") if f.endswith(".json")]
    with open(workdir / "exposure_bias" / result_file) as f:
        results = json.load(f)["results"]
    assert set(results) == {"no ES", f"ES λ={best:.4g}"} == set(printed)
    for label, result in results.items():
        assert len(result["delta"]) == 10                 # 10 sampling steps
        assert float(printed[label]) == pytest.approx(result["delta_sum"], rel=1e-3)
        assert result["lambdas"] == pytest.approx([1.0 if label == "no ES" else best] * 10)


@pytest.mark.slow
def test_library_notebook_runs_with_the_small_budget(tmp_path):
    notebook = execute("library.ipynb", 'BUDGET = "small"', tmp_path)
    assert len(os.listdir(tmp_path)) == 0                 # the library notebook writes no files
    for code in ("ax.plot(np.arange(T), np.asarray(train_schedule.snr)", "for name in weighting.WEIGHTINGS:",
                 "for row, sampler in zip(axes"):
        assert has_image(cell_with(notebook, code))

    # The respaced chain: 20 original timesteps, from 999 down.
    timesteps = [int(v) for v in re.search(r"original timesteps \[([\d\s]+)\]", "".join(
        stream_text(c) for c in notebook.cells if c.cell_type == "code")).group(1).split()]
    assert len(timesteps) == 20 and timesteps == sorted(timesteps) and timesteps[-1] == 999

    # 50 Adam steps on the Debias-weighted loss already lower it.
    line = stream_text(cell_with(notebook, "def train_step("))
    first, last = (float(v) for v in re.search(r": ([\d.]+) -> ([\d.]+)", line).groups())
    assert last < first

    # Six sample sets (DDPM, DPM-Solver++ × three λ), each scored by its distance to the centres.
    sample_text = "".join(o.get("text", "") for o in cell_with(notebook, "def draw_samples(").outputs
                          if o.get("output_type") == "stream")
    lambdas = re.search(r"λ_i of linear\(k=0.002, b=1.0\) on 20 steps, i = 0 \(least noisy\) first: "
                        r"\[([^\]]+)\]", sample_text)
    np.testing.assert_allclose([float(v) for v in lambdas.group(1).split()], 1.0 + 0.002 * np.arange(20),
                               atol=1e-4)
    distances = re.findall(r"(ddpm|dpm_solver_pp), λ = ([\d.]+) *: "
                           r"mean distance to the nearest centre ([\d.]+)", sample_text)
    assert [(s, float(lam)) for s, lam, _ in distances] == [
        (s, lam) for s in ("ddpm", "dpm_solver_pp") for lam in (1.0, 1.01, 1.03)]
    # Samples lie in the clipping box [-1, 1]², whose farthest points from every centre are its
    # corners (0.814 away).
    assert all(0 < float(d) < 0.815 for _, _, d in distances)
