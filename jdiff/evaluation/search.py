"""Coarse-to-fine grid search for the Epsilon Scaling constants.

Epsilon Scaling (Ning et al. 2024) divides the predicted noise by λ_i at respaced step i, with λ constant
(λ = b) or linear (λ_i = k·i + b, i = 0 the least noisy step); the paper picks b, or (k, b), by searching
for the lowest FID on a few thousand samples, or for the smallest summed exposure bias Σ_t δ_t. The
search here is generic: ``score(params) -> float`` (lower is better) is the caller's, ``params`` a dict of
named floats. The optimum may lie below 1 (EDM-ES uses λ = 0.9983 at 21 NFE), so bounds are free.

Each round evaluates a Cartesian grid of ``num_points`` values per parameter, then shrinks every range to
one grid step either side of the best point so far (clipped to the bounds) and repeats, so the step
shrinks by (n − 1)/2 per round (halves with n = 5). For a unimodal objective the minimiser stays within
one step of the best grid point, so the result is within one last-round step of it (half a step for a
symmetric objective such as a parabola). Points already evaluated are not evaluated again.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Mapping

import numpy as np

ScoreFn = Callable[[dict[str, float]], float]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One call of the score function: the round it belongs to, the parameters, the score."""

    round: int
    params: dict[str, float]
    score: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Every evaluation, in the order made, and the best (lowest score; the first of equal scores)."""

    names: tuple[str, ...]
    evaluations: tuple[Evaluation, ...]

    @property
    def best(self) -> Evaluation:
        return min(self.evaluations, key=lambda e: e.score)

    def table(self) -> dict[str, np.ndarray]:
        """Columns ``round``, one per parameter, and ``score``, one row per evaluation."""
        columns: dict[str, np.ndarray] = {"round": np.array([e.round for e in self.evaluations])}
        for name in self.names:
            columns[name] = np.array([e.params[name] for e in self.evaluations])
        columns["score"] = np.array([e.score for e in self.evaluations])
        return columns


def _check_bounds(bounds: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    if not bounds:
        raise ValueError("bounds must name at least one parameter, e.g. {'b': (0.995, 1.03)}")
    checked = {}
    for name, pair in bounds.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"bounds[{name!r}] must be a (low, high) pair, got {pair!r}")
        low, high = float(pair[0]), float(pair[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"bounds[{name!r}] = {pair!r} must be finite with low < high")
        checked[name] = (low, high)
    return checked


def grid_search(score: ScoreFn, bounds: Mapping[str, tuple[float, float]], *, num_points: int = 5,
                rounds: int = 4) -> SearchResult:
    """Minimises ``score`` over the box ``bounds`` ({name: (low, high)}) by coarse-to-fine grids.

    Examples: constant ES, ``grid_search(fid_of, {"b": (0.995, 1.03)})``; linear ES,
    ``grid_search(fid_of, {"k": (0.0, 0.004), "b": (0.995, 1.01)})``. Each round costs up to
    ``num_points ** len(bounds)`` evaluations. A non-finite score raises ValueError naming the point."""
    box = _check_bounds(bounds)
    if num_points < 3:
        raise ValueError(f"num_points={num_points} must be at least 3 (the grid needs neighbours to "
                         "zoom into)")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")
    names = tuple(box)
    ranges = dict(box)
    evaluations: list[Evaluation] = []
    seen: set[tuple[float, ...]] = set()
    for round_index in range(rounds):
        axes = [np.linspace(*ranges[name], num_points) for name in names]
        for point in itertools.product(*axes):
            key = tuple(np.round(point, 12))
            if key in seen:
                continue
            seen.add(key)
            params = {name: float(value) for name, value in zip(names, point)}
            value = float(score(params))
            if not math.isfinite(value):
                raise ValueError(f"score({params}) = {value}: the score function must return a finite number")
            evaluations.append(Evaluation(round_index, params, value))
        best = min(evaluations, key=lambda e: e.score).params
        for name, axis in zip(names, axes):
            step = axis[1] - axis[0]
            low, high = box[name]
            ranges[name] = (max(low, best[name] - step), min(high, best[name] + step))
    return SearchResult(names, tuple(evaluations))


def plot_search(result: SearchResult, ax: Any = None) -> Any:
    """Score against the parameter (one parameter: points coloured by round), or the evaluated points in
    the plane of the first two parameters coloured by score; the best point starred. Returns the
    matplotlib Axes (matplotlib is imported here, only when plotting)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_search needs matplotlib (pip install matplotlib)") from e
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    table, best = result.table(), result.best
    if len(result.names) == 1:
        (name,) = result.names
        points = ax.scatter(table[name], table["score"], c=table["round"], cmap="viridis", s=18)
        ax.plot(best.params[name], best.score, "r*", markersize=12,
                label=f"best {name}={best.params[name]:.5g}")
        ax.set_xlabel(name)
        ax.set_ylabel("score")
        ax.figure.colorbar(points, ax=ax, label="round")
    else:
        x, y = result.names[:2]
        points = ax.scatter(table[x], table[y], c=table["score"], cmap="viridis", s=18)
        ax.plot(best.params[x], best.params[y], "r*", markersize=12,
                label=f"best {x}={best.params[x]:.5g}, {y}={best.params[y]:.5g}")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.figure.colorbar(points, ax=ax, label="score")
    ax.legend(loc="best", fontsize="small")
    return ax
