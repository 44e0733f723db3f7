"""DPM-Solver++ (2M), the multistep second-order data-prediction solver (Lu et al. 2022, Algorithm 2).

From point s = i to t = i − 1 of the respaced grid, with h = λ_t − λ_s, the previous point u = i + 1 and
r = (λ_s − λ_u)/h:

    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) D,   D = x̂₀_s + (x̂₀_s − x̂₀_u)/(2r)   (first order: D = x̂₀_s),

the first step (no history) is first order, i.e. DDIM, and the step after i = 0 lands on the data
(σ = 0, h = ∞) and returns x̂₀_0 (see :mod:`jdiff.samplers.multistep`). x̂₀ is the data prediction with
Epsilon Scaling and clipping of :func:`~jdiff.samplers.denoise.denoise`: Epsilon Scaling acts on the ε̂
the solver turns into x̂₀, and ``clip_denoised`` clips that x̂₀ (the solver's "correcting x₀" hook).

The Debias code's ``dpm_solver_uncond_loop`` runs the DPM-Solver package's multistep order-2 solver in its
noise-prediction form ("dpmsolver") on a time-uniform grid of a continuous-time interpolation of the
schedule, feeding the network fractional timesteps; this module is the data-prediction (++) form of the
same two-step scheme, on the respaced discrete grid with integer timesteps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff.samplers.denoise import StepOutput, denoise, next_alpha_sigma, split_output
from jdiff.samplers.multistep import History, half_log_snr
from jdiff.schedules import Schedule

ORDERS = (1, 2)


def dpm_solver_pp_step(schedule: Schedule, i: jax.Array, x: jax.Array, model_output: jax.Array,
                       history: History, *, order: int = 2, target: str = "eps",
                       variance: str = "fixed_small", clip_denoised: bool = True,
                       eps_scale: jax.Array | float | None = None) -> tuple[StepOutput, History]:
    """x_{i−1} from x_i, the network output at (x_i, timesteps[i]) and the history of earlier x̂₀
    (``History.empty(1, x)`` before the first step). ``i`` is a scalar respaced index; ``order`` 1 is
    DDIM (η = 0), 2 is DPM-Solver++(2M)."""
    if order not in ORDERS:
        raise ValueError(f"DPM-Solver++ order must be one of {ORDERS}, got {order}")
    mean_output, _ = split_output(model_output, x, variance)
    x0, eps = denoise(schedule, i, x, mean_output, target=target, clip_denoised=clip_denoised,
                      eps_scale=eps_scale)
    last = i == 0
    lam_s = half_log_snr(schedule, i)
    alpha_t, sigma_t = next_alpha_sigma(schedule, i, 0)
    sigma_s = schedule.sqrt_one_minus_alphas_cumprod[i]
    h = jnp.where(last, 1, half_log_snr(schedule, jnp.maximum(i - 1, 0)) - lam_s)
    second = (order == 2) & (history.count >= 1) & ~last
    r = jnp.where(second, (lam_s - history.lam[0]) / h, 1)
    data = x0 + jnp.where(second, 1 / (2 * r), 0) * (x0 - history.x0[0])
    x_next = (sigma_t / sigma_s) * x - alpha_t * jnp.expm1(-h) * data
    return (StepOutput(x=jnp.where(last, x0, x_next), x0=x0, eps=eps), history.push(x0, lam_s))
