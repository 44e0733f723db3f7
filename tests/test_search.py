"""The coarse-to-fine λ search on synthetic objectives with known minimisers."""

import importlib.util

import numpy as np
import pytest

from jdiff.evaluation import search


def last_step(low, high, num_points, rounds):
    return (high - low) / (num_points - 1) / ((num_points - 1) / 2) ** (rounds - 1)


def test_finds_parabola_minimum_above_one():
    calls = []

    def score(params):
        calls.append(params["b"])
        return (params["b"] - 1.0173) ** 2

    result = search.grid_search(score, {"b": (0.99, 1.03)}, num_points=5, rounds=6)
    # Symmetric objective: the best grid point is the nearest, within half the last step.
    assert abs(result.best.params["b"] - 1.0173) <= 0.5 * last_step(0.99, 1.03, 5, 6) + 1e-12
    assert abs(result.best.params["b"] - 1.0173) <= 2e-4
    assert len(calls) == len(set(np.round(calls, 12))) == len(result.evaluations)
    assert len(calls) < 5 * 6  # the zoomed grids reuse the centre point


def test_finds_minimum_below_one_with_an_asymmetric_objective():
    """EDM-ES's 0.9983: λ < 1 is allowed, and a skewed unimodal objective is found within one last step."""
    def score(params):
        x = params["b"] - 0.9983
        return np.exp(40.0 * x) - 40.0 * x

    result = search.grid_search(score, {"b": (0.98, 1.02)}, num_points=7, rounds=5)
    assert abs(result.best.params["b"] - 0.9983) <= last_step(0.98, 1.02, 7, 5)
    assert result.best.params["b"] < 1.0


def test_two_dimensional_linear_form():
    """(k, b) of λ_i = k·i + b, with a correlated (rotated) quadratic bowl at (0.0025, 1.0)."""
    def score(params):
        u = (params["k"] - 0.0025) / 0.001
        v = (params["b"] - 1.0) / 0.004
        return u * u + v * v + 0.8 * u * v

    result = search.grid_search(score, {"k": (0.0, 0.005), "b": (0.99, 1.01)}, num_points=5, rounds=7)
    assert result.best.params["k"] == pytest.approx(0.0025, abs=2e-5)
    assert result.best.params["b"] == pytest.approx(1.0, abs=1e-4)
    table = result.table()
    assert set(table) == {"round", "k", "b", "score"}
    assert len(table["score"]) == len(result.evaluations) and table["round"].max() == 6
    assert table["score"].min() == result.best.score


def test_respects_bounds():
    seen = []

    def score(params):
        seen.append(params["b"])
        return (params["b"] - 1.05) ** 2

    result = search.grid_search(score, {"b": (0.99, 1.03)}, rounds=4)
    assert result.best.params["b"] == 1.03
    assert min(seen) >= 0.99 and max(seen) <= 1.03
    # The zoomed ranges stay inside: later rounds sample only [1.03 - step, 1.03].
    later = [e.params["b"] for e in result.evaluations if e.round > 0]
    assert min(later) >= 1.03 - 0.01 - 1e-12


def test_bad_ranges_and_scores_raise():
    def f(p):
        return 0.0

    for bounds in [{}, {"b": (1.02, 1.0)}, {"b": (1.0, 1.0)}, {"b": (0.99, float("nan"))}, {"b": (1.0,)},
                   {"b": 1.0}]:
        with pytest.raises(ValueError, match="bounds"):
            search.grid_search(f, bounds)
    with pytest.raises(ValueError, match="num_points"):
        search.grid_search(f, {"b": (0.99, 1.03)}, num_points=2)
    with pytest.raises(ValueError, match="rounds"):
        search.grid_search(f, {"b": (0.99, 1.03)}, rounds=0)
    with pytest.raises(ValueError, match="finite"):
        search.grid_search(lambda p: float("nan") if p["b"] > 1.0 else 1.0, {"b": (0.99, 1.03)})


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot_one_and_two_parameters(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    one = search.grid_search(lambda p: (p["b"] - 1.01) ** 2, {"b": (0.99, 1.03)}, rounds=2)
    two = search.grid_search(lambda p: p["k"] ** 2 + (p["b"] - 1) ** 2, {"k": (0, 0.01), "b": (0.99, 1.01)},
                             rounds=2)
    for result, xlabel in [(one, "b"), (two, "k")]:
        ax = search.plot_search(result)
        assert ax.get_xlabel() == xlabel
        ax.figure.savefig(tmp_path / f"{xlabel}.png")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib installed")
def test_plot_without_matplotlib_says_what_to_install():
    result = search.grid_search(lambda p: p["b"], {"b": (0.99, 1.03)}, rounds=1)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        search.plot_search(result)
