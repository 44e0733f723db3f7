"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with guided-diffusion's variance choices.

One step from respaced step i draws x_{i−1} = μ̃(x̂₀, x_i) + exp(½ log Σ_i)·z, z ~ N(0, I), no noise at
i = 0, where μ̃ = c1_i x̂₀ + c2_i x_i is the posterior mean of q(x_{i−1} | x_i, x₀) (Ho et al. eq. 7) and
x̂₀ is Epsilon-Scaled and clipped by :func:`~jdiff.samplers.denoise.denoise`. The log variance is

  fixed_small:   log β̃_i (with log β̃_0 replaced by log β̃_1, guided-diffusion's "clipped" table);
  fixed_large:   log of append(β̃_1, β_1 … β_{N−1}), i.e. β_i except β̃_1 at i = 0;
  learned_range: v' log β_i + (1 − v') log β̃_i(clipped), v' = (v + 1)/2 from the network's variance
                 channels (Nichol & Dhariwal 2021, eq. 15).

Epsilon Scaling changes only x̂₀; the variance is untouched (as in the official ADM-ES code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff.samplers.denoise import StepOutput, check_variance, denoise, is_last, split_output
from jdiff.schedules import Schedule, extract


def log_variance(schedule: Schedule, i: jax.Array, variance: str, var_values: jax.Array | None,
                 ndim: int) -> jax.Array:
    """log Σ_i of the reverse step for the given variance type (see the module docstring)."""
    check_variance(variance)
    clipped = extract(schedule.posterior_log_variance_clipped, i, ndim)
    if variance == "fixed_small":
        return clipped
    log_betas = extract(schedule.log_betas, i, ndim)
    if variance == "fixed_large":
        # posterior_log_variance_clipped[0] is log β̃_1, the value fixed_large uses at i = 0.
        return jnp.where(is_last(i, ndim), clipped, log_betas)
    frac = (var_values + 1) / 2
    return frac * log_betas + (1 - frac) * clipped


def ddpm_step(schedule: Schedule, i: jax.Array, x: jax.Array, model_output: jax.Array, noise: jax.Array, *,
              target: str = "eps", variance: str = "fixed_small", clip_denoised: bool = True,
              eps_scale: jax.Array | float | None = None) -> StepOutput:
    """x_{i−1} from x_i, the network output at (x_i, timesteps[i]) and the noise z of this step.

    ``i`` is the respaced step index (a scalar or one per example); ``noise`` has the shape of x and is
    ignored at i = 0; ``eps_scale`` is λ_i (None: no Epsilon Scaling).
    """
    mean_output, var_values = split_output(model_output, x, variance)
    x0, eps = denoise(schedule, i, x, mean_output, target=target, clip_denoised=clip_denoised,
                      eps_scale=eps_scale)
    mean = (extract(schedule.posterior_mean_coef1, i, x.ndim) * x0
            + extract(schedule.posterior_mean_coef2, i, x.ndim) * x)
    std = jnp.exp(0.5 * log_variance(schedule, i, variance, var_values, x.ndim))
    x_prev = jnp.where(is_last(i, x.ndim), mean, mean + std * noise.astype(x.dtype))
    return StepOutput(x=x_prev, x0=x0, eps=eps)
