"""Writes the figures of the docs that come from jdiff's own functions (no training):
``docs/figures/loss_weights.png``. Run ``python docs/make_figures.py`` from a checkout (the repository root
is put on the path) or where jdiff is installed."""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's jdiff, also when it is not installed

from jdiff import schedules, weighting  # noqa: E402


# Legend text per weighting, with the parameters loss_weight uses by default (those of configs/*.py).
LABELS = {
    "constant": "constant: 1",
    "debias": "debias: 1/√SNR",
    "p2": "p2: 1/(1 + SNR), k = γ = 1",
    "min_snr": "min_snr: min(SNR, 5)/SNR",
    "snr": "snr: 1/SNR",
}


def loss_weights(path: str, num_timesteps: int = 1000) -> None:
    """The weight on the ε-MSE of every weighting (``weighting.loss_weight(name, snr, "eps")`` with its
    default parameters) against t, for the linear and cosine schedules of ``num_timesteps`` steps."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    t = np.arange(num_timesteps)
    for ax, name in zip(axes, ("linear", "cosine")):
        snr = schedules.make_schedule(name, num_timesteps).snr
        for weight in weighting.WEIGHTINGS:
            # p2 and snr coincide where SNR >> 1 (small t): dashed so that both stay visible.
            style = "--" if weight == "snr" else "-"
            ax.plot(t, np.asarray(weighting.loss_weight(weight, snr, "eps")), style, label=LABELS[weight])
        ax.set(yscale="log", xlabel="timestep t", title=f"{name} schedule, T = {num_timesteps}")
    axes[0].set_ylabel("weight on the ε-MSE")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    loss_weights(os.path.join(HERE, "figures", "loss_weights.png"))
