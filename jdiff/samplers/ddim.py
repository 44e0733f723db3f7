"""DDIM (Song et al. 2021, eq. 12) with any η, as guided-diffusion's ``ddim_sample``.

From respaced step i to i − 1, with x̂₀ Epsilon-Scaled and clipped (:func:`~jdiff.samplers.denoise.denoise`)
and ε re-derived from that x̂₀, ε = (x_i − α_i x̂₀)/σ_i, so that the direction term agrees with the
clipped x̂₀:

    x_{i−1} = α_{i−1} x̂₀ + √(σ_{i−1}² − σ_η²)·ε + σ_η z,
    σ_η² = η²·β̃_i = η² (1 − ᾱ_{i−1})/(1 − ᾱ_i)·(1 − ᾱ_i/ᾱ_{i−1}),

with α_{−1} = 1, σ_{−1} = 0 and no noise at i = 0. η = 0 is deterministic; η = 1 has the DDPM
fixed-small variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff.samplers.denoise import StepOutput, denoise, is_last, next_alpha_sigma, split_output
from jdiff.schedules import Schedule, extract


def ddim_step(schedule: Schedule, i: jax.Array, x: jax.Array, model_output: jax.Array,
              noise: jax.Array | None = None, *, eta: float | jax.Array = 0.0, target: str = "eps",
              variance: str = "fixed_small", clip_denoised: bool = True,
              eps_scale: jax.Array | float | None = None) -> StepOutput:
    """x_{i−1} from x_i and the network output at (x_i, timesteps[i]).

    ``noise`` (shape of x) is needed only when η ≠ 0; a Python ``eta == 0`` skips it altogether.
    ``variance`` only says whether the output carries learned-variance channels (DDIM ignores them).
    """
    mean_output, _ = split_output(model_output, x, variance)
    x0, eps_model = denoise(schedule, i, x, mean_output, target=target, clip_denoised=clip_denoised,
                            eps_scale=eps_scale)
    eps = ((extract(schedule.sqrt_recip_alphas_cumprod, i, x.ndim) * x - x0)
           / extract(schedule.sqrt_recipm1_alphas_cumprod, i, x.ndim))
    alpha_next, sigma_next = next_alpha_sigma(schedule, i, x.ndim)
    deterministic = isinstance(eta, (int, float)) and eta == 0
    if deterministic:
        x_prev = alpha_next * x0 + sigma_next * eps
    else:
        if noise is None:
            raise ValueError(f"DDIM with eta={eta} draws noise: pass the noise of this step")
        var_eta = jnp.asarray(eta, x.dtype) ** 2 * extract(schedule.posterior_variance, i, x.ndim)
        mean = alpha_next * x0 + jnp.sqrt(sigma_next ** 2 - var_eta) * eps
        x_prev = jnp.where(is_last(i, x.ndim), mean, mean + jnp.sqrt(var_eta) * noise.astype(x.dtype))
    return StepOutput(x=x_prev, x0=x0, eps=eps_model)
