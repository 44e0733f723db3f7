"""x̂₀ and ε̂ from one network output, with Epsilon Scaling and clipping: the one place every sampler
forms its clean-data estimate.

With α = √ᾱ_i and σ = √(1 − ᾱ_i) at respaced step i, a network output of any target gives
ε̂ = to_eps(output) and x̂₀ = to_x0(output) (:mod:`jdiff.targets`). Epsilon Scaling (Ning et al. 2024)
forms x̂₀ from ε̂/λ instead:

    x̂₀(λ) = (x − σ ε̂/λ)/α            (an ε-network: the official ADM-ES ``_predict_xstart_from_eps``)
          = x̂₀ + √(1/ᾱ − 1)·(1 − 1/λ)·ε̂   (x₀- and v-networks, through the ε̂ they imply; the official
                                           code scales only ε-networks).

With an ε-network, λ = 1 gives the unscaled sampler's numbers: ε̂/1 = ε̂ exactly and the graph is
otherwise the same, so bit for bit where XLA contracts the two graphs' multiply-adds into FMAs alike (its
default CPU code generation did for every sampler in the tests), else to rounding (UniPC differed by
~1e-14 relative with XLA's older CPU emitters, ``--xla_cpu_use_fusion_emitters=false``). With x₀- and
v-networks the correction is exactly zero at λ = 1, but the unscaled sampler uses the network's x̂₀
directly and XLA contracts the surrounding multiply-adds into FMAs differently in the two graphs, so they
agree to rounding (~1e-16 relative) rather than bit for bit. Clipping to [−1, 1] comes after.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jdiff import targets
from jdiff.schedules import Schedule, extract

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


@struct.dataclass
class StepOutput:
    """One sampler step: the next x, the x̂₀ the step used (after Epsilon Scaling and clipping) and the
    network's ε̂ (implied by its output, before the division by λ)."""

    x: jax.Array
    x0: jax.Array
    eps: jax.Array


def check_variance(variance: str) -> str:
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    return variance


def split_output(model_output: jax.Array, x: jax.Array, variance: str) -> tuple[jax.Array, jax.Array | None]:
    """The mean part of a network output and, for ``learned_range``, its variance channels, cast to the
    dtype of x (the schedule's). A learned-variance network (guided-diffusion ``learn_sigma``) outputs
    2·C channels on the last (NHWC channel) axis: the first C are the mean target, the last C the
    interpolation values v ∈ [−1, 1]."""
    check_variance(variance)
    channels = x.shape[-1]
    if variance == "learned_range":
        if model_output.shape != x.shape[:-1] + (2 * channels,):
            raise ValueError(f"variance='learned_range' needs a network output of shape "
                             f"{x.shape[:-1] + (2 * channels,)} (mean and variance channels on the last "
                             f"axis), got {model_output.shape}; use a fixed variance for a network "
                             "without learned variance")
        return (model_output[..., :channels].astype(x.dtype), model_output[..., channels:].astype(x.dtype))
    if model_output.shape != x.shape:
        hint = (" (it looks like a learned-variance network: use variance='learned_range')"
                if model_output.shape == x.shape[:-1] + (2 * channels,) else "")
        raise ValueError(f"the network output has shape {model_output.shape}, expected {x.shape} like x "
                         f"for variance={variance!r}{hint}")
    return model_output.astype(x.dtype), None


def denoise(schedule: Schedule, i: jax.Array, x: jax.Array, output: jax.Array, *, target: str = "eps",
            clip_denoised: bool = True, eps_scale: jax.Array | float | None = None
            ) -> tuple[jax.Array, jax.Array]:
    """(x̂₀, ε̂) at respaced step ``i`` (scalar, or one index per example) from the mean part of a
    network output (see :func:`split_output`). x̂₀ is Epsilon-Scaled by ``eps_scale`` = λ_i (scalar or
    one per example; None: no scaling) and then clipped to [−1, 1] if ``clip_denoised``; ε̂ is the
    network's, unscaled."""
    targets.check_target(target)
    alpha = extract(schedule.sqrt_alphas_cumprod, i, x.ndim)
    sigma = extract(schedule.sqrt_one_minus_alphas_cumprod, i, x.ndim)
    eps = targets.to_eps(target, output, x, alpha, sigma)
    if eps_scale is not None:
        lam = jnp.asarray(eps_scale, x.dtype)
        lam = lam.reshape(lam.shape + (1,) * (x.ndim - lam.ndim))
    if target == "eps":
        x0 = targets.to_x0("eps", eps if eps_scale is None else eps / lam, x, alpha, sigma)
    else:
        x0 = targets.to_x0(target, output, x, alpha, sigma)
        if eps_scale is not None:
            x0 = x0 + extract(schedule.sqrt_recipm1_alphas_cumprod, i, x.ndim) * (1 - 1 / lam) * eps
    if clip_denoised:
        x0 = jnp.clip(x0, -1, 1)
    return x0, eps


def is_last(i: jax.Array, ndim: int) -> jax.Array:
    """i == 0 (the step that lands on the data) shaped to broadcast against a rank-``ndim`` array."""
    i = jnp.asarray(i)
    return (i == 0).reshape(i.shape + (1,) * (ndim - i.ndim))


def next_alpha_sigma(schedule: Schedule, i: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
    """α and σ of the point a step from i lands on: those of step i − 1, and (1, 0) after i = 0 (the
    data). Read from the √ tables rather than as √(1 − ᾱ_prev), which loses σ near ᾱ = 1 in float32."""
    prev = jnp.maximum(jnp.asarray(i) - 1, 0)
    last = is_last(i, ndim)
    dtype = schedule.betas.dtype
    alpha = jnp.where(last, jnp.ones((), dtype), extract(schedule.sqrt_alphas_cumprod, prev, ndim))
    sigma = jnp.where(last, jnp.zeros((), dtype), extract(schedule.sqrt_one_minus_alphas_cumprod, prev, ndim))
    return alpha, sigma
