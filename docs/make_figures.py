"""Writes the figures of the docs that come from jdiff's own functions (no training):
``docs/figures/loss_weights.png``. Run ``python docs/make_figures.py`` where jdiff is installed (``pip install -e .``)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jdiff import schedules, weighting  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def loss_weights(path: str, num_timesteps: int = 1000) -> None:
    """The weight on the ε-MSE of every weighting against t, for the linear and cosine schedules."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    t = np.arange(num_timesteps)
    for ax, name in zip(axes, ("linear", "cosine")):
        snr = schedules.make_schedule(name, num_timesteps).snr
        for weight in weighting.WEIGHTINGS:
            ax.plot(t, np.asarray(weighting.loss_weight(weight, snr, "eps")), label=weight)
        ax.set(yscale="log", xlabel="timestep t", title=f"{name} schedule, T = {num_timesteps}")
    axes[0].set_ylabel("weight on the ε-MSE")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    loss_weights(os.path.join(HERE, "figures", "loss_weights.png"))
