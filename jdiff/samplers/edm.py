"""The EDM sampler (Karras et al. 2022, Algorithm 1: Heun, or its Euler half) run on a discrete VP
ε-, x₀- or v-network, with Epsilon Scaling as in EDM-ES.

EDM integrates dx/dσ = (x − D(x; σ))/σ in the variance-exploding variable x = x_vp/α with σ = √(1/ᾱ − 1),
on the grid σ_k = (σ_max^{1/ρ} + k/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, k = 0 … n−1, then σ_n = 0,
with ρ = 7 and σ_min = max(0.002, σ of the least noisy step), σ_max = min(80, σ of the noisiest step).

A guided-diffusion network knows only its discrete timesteps, so each σ_k is rounded to the nearest σ of
the schedule, and the network receives that step's original integer timestep, as EDM's ``iDDPMPrecond``
does for the discrete ADM models (EDM's ``VPPrecond`` instead feeds a continuous t to a network trained
on continuous t). Pass the un-respaced schedule so that the rounding is fine; a grid that rounds two σ_k
to the same step raises. The network sees x_vp = α x and its ε̂ gives D = x̂₀ (denoise's Epsilon Scaling
and optional clipping included; EDM itself does not clip, so use ``clip_denoised=False`` to reproduce it).

Epsilon Scaling (EDM-ES ``edm_sampler``): ε̂ = (x − D)/σ is divided by λ at the Euler step and at the
correction step, i.e. d = ε̂/λ at both evaluations of a step. λ is indexed like the respaced samplers',
i = n − 1 − k (i = 0 the last step, from σ_min to 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.samplers.denoise import denoise, split_output
from jdiff.schedules import Schedule, extract

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


def edm_grid(schedule: Schedule, num_steps: int, *, sigma_min: float = SIGMA_MIN,
             sigma_max: float = SIGMA_MAX, rho: float = RHO) -> jax.Array:
    """The respaced indices (into ``schedule``) of EDM's n = ``num_steps`` noise levels, noisiest first:
    each σ_k of the ρ-grid rounded to the nearest σ = √(1/ᾱ − 1) of the schedule."""
    if num_steps < 2:
        raise ValueError(f"the EDM grid needs num_steps >= 2, got {num_steps}")
    table = schedule.sqrt_recipm1_alphas_cumprod
    low = jnp.maximum(sigma_min, table[0])
    high = jnp.minimum(sigma_max, table[-1])
    ramp = jnp.arange(num_steps, dtype=table.dtype) / (num_steps - 1)
    sigmas = (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    indices = jnp.argmin(jnp.abs(sigmas[:, None] - table[None, :]), axis=1).astype(jnp.int32)
    try:
        concrete = np.asarray(indices)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return indices
    if np.any(np.diff(concrete) == 0):
        raise ValueError(f"{num_steps} EDM noise levels round to only {len(np.unique(concrete))} distinct "
                         f"steps of this {schedule.num_steps}-step schedule; pass the un-respaced schedule "
                         "or fewer steps")
    return indices


def edm_derivative(schedule: Schedule, index: jax.Array, x: jax.Array, model_output: jax.Array, *,
                   target: str = "eps", variance: str = "fixed_small", clip_denoised: bool = False,
                   eps_scale: jax.Array | float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(d, D, ε̂): d = (x − D)/σ at the schedule step ``index`` (σ = √(1/ᾱ − 1) there) for the EDM-space
    x and the network output at (α·x, timesteps[index]); D = x̂₀ after Epsilon Scaling (d = ε̂/λ without
    clipping) and ε̂ the network's, unscaled."""
    alpha = extract(schedule.sqrt_alphas_cumprod, index, x.ndim)
    x_vp = alpha * x
    mean_output, _ = split_output(model_output, x_vp, variance)
    x0, eps = denoise(schedule, index, x_vp, mean_output, target=target, clip_denoised=clip_denoised,
                      eps_scale=eps_scale)
    sigma = extract(schedule.sqrt_recipm1_alphas_cumprod, index, x.ndim)
    return (x - x0) / sigma, x0, eps


def edm_step(x: jax.Array, sigma: jax.Array, sigma_next: jax.Array, d: jax.Array,
             d_next: jax.Array | None = None) -> jax.Array:
    """Euler, x + (σ_next − σ)·d, or with the derivative d_next at the Euler point, Heun's
    x + (σ_next − σ)·(d + d_next)/2 (Karras et al. Algorithm 1, lines 5 and 8)."""
    slope = d if d_next is None else 0.5 * d + 0.5 * d_next
    return x + (sigma_next - sigma) * slope


def evaluation_plan(num_steps: int, heun: bool, start_step: int = 0) -> dict[str, np.ndarray]:
    """The network evaluations of the sampler from grid point ``start_step``, in order, as static
    arrays: ``step`` k, ``point`` (k, or k + 1 for a Heun correction), ``correction`` (the second
    evaluation of a Heun step) and ``completes`` (the evaluation that finishes step k). Heun corrects
    every step but the last (which ends at σ = 0): 2(n − k₀) − 1 evaluations."""
    step, correction = [], []
    for k in range(start_step, num_steps):
        step.append(k)
        correction.append(False)
        if heun and k < num_steps - 1:
            step.append(k)
            correction.append(True)
    step, correction = np.array(step, np.int32), np.array(correction, bool)
    last = step == num_steps - 1
    return dict(step=step, point=step + correction, correction=correction,
                completes=correction | last | (not heun))
