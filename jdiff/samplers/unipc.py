"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and corrector (UniC) on data predictions, with
B(h) = h (the "bh1" variant), in the configuration the Debias code runs (``UniPC_uncond_loop``: data
prediction, multistep, order 3, lower order at the final steps, no corrector on the last step), here on
the respaced discrete grid with integer timesteps rather than a continuous-time interpolation.

From s to t with h = λ_t − λ_s and earlier points s_k with r_k = (λ_{s_k} − λ_s)/h,
D_k = (x̂₀_{s_k} − x̂₀_s)/r_k:

    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂₀_s − α_t B(h) Σ_k a_k D_k              (UniP-p)
    x_t^c = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂₀_s − α_t B(h) (Σ_k c_k D_k + c_p (x̂₀_t − x̂₀_s))   (UniC)

with B(h) = −h (bh1 in the data-prediction form), where a solves the leading (p−1)×(p−1) and c the p×p
block of Zhao et al.'s system R·ρ = g, R_{mn} = r_n^m (m = 0 … p−1, the nodes r_k then r = 1 for t),
g_m = (−h)·φ_{m+2}(−h)·(m+1)!/B(h) with φ_1(z) = (e^z − 1)/z and φ_{k+1}(z) = (φ_k(z) − 1/k!)/z,
except a = 1/2 for p = 2 and c = 1/2 for p = 1. x̂₀_t is the network
evaluated at the predicted x_t, so the corrector costs no extra evaluation: that same x̂₀_t starts the
next step. Order p ramps up from 1 while the history fills and comes down at the end (p ≤ i + 2 for the
step into i), and the step after i = 0 lands on the data and returns x̂₀_0 (see
:mod:`jdiff.samplers.multistep`); since that x̂₀_0 is taken at the predicted x_0, the step into i = 0
runs no corrector, as the official code's last step.

Epsilon Scaling and clipping act on x̂₀ as in :mod:`jdiff.samplers.dpm_solver`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jdiff.samplers.denoise import StepOutput, denoise, next_alpha_sigma, split_output
from jdiff.samplers.multistep import History, half_log_snr
from jdiff.schedules import Schedule

ORDERS = (1, 2, 3)


@struct.dataclass
class UniPCState:
    """The x̂₀ history (most recent first: x̂₀_{i+1}, x̂₀_{i+2}, …) and x at the previous point i + 1, which
    the corrector of the step into i restarts from."""

    history: History
    x_prev: jax.Array

    @classmethod
    def empty(cls, order: int, x: jax.Array) -> "UniPCState":
        return cls(history=History.empty(order, x), x_prev=jnp.zeros_like(x))


def _masked_solve(rks: jax.Array, g: jax.Array, k: jax.Array) -> jax.Array:
    """ρ solving Σ_n rks[n]^m ρ_n = g_m for m, n < k (ρ_n = 0 beyond): a fixed-size system whose
    leading k×k block is the order-k one, so a traced order needs no recompiling.

    The system is at most 3×3, so it is solved by Gaussian elimination unrolled at trace time: with
    distinct nodes the Vandermonde pivots r_n − r_m are nonzero, and XLA compiles this in a fraction of
    the time of a general LU solve.
    """
    size = rks.shape[0]
    active = jnp.arange(size) < k
    powers = rks[None, :] ** jnp.arange(size, dtype=rks.dtype)[:, None]
    rows = list(jnp.where(active[:, None] & active[None, :], powers, jnp.eye(size, dtype=rks.dtype)))
    rhs = list(jnp.where(active, g, 0))
    for col in range(size):
        for row in range(col + 1, size):
            factor = rows[row][col] / rows[col][col]
            rows[row] = rows[row] - factor * rows[col]
            rhs[row] = rhs[row] - factor * rhs[col]
    solution = [None] * size
    for row in reversed(range(size)):
        known = sum((rows[row][col] * solution[col] for col in range(row + 1, size)), jnp.zeros((), g.dtype))
        solution[row] = (rhs[row] - known) / rows[row][row]
    return jnp.stack(solution)


def unipc_update(x_s: jax.Array, x0_s: jax.Array, x0_earlier: jax.Array, lam_s: jax.Array,
                 lam_earlier: jax.Array, lam_t: jax.Array, alpha_t: jax.Array, sigma_t: jax.Array,
                 sigma_s: jax.Array, order: jax.Array, max_order: int,
                 x0_t: jax.Array | None = None) -> jax.Array:
    """One UniP step from s to t (``x0_t`` None) or its UniC correction (``x0_t`` = x̂₀ at the predicted
    x_t), of effective ``order`` ≤ ``max_order``; ``x0_earlier``/``lam_earlier`` hold the earlier points
    (most recent first, at least ``max_order − 1`` of them; those beyond ``order − 1`` are ignored)."""
    h = lam_t - lam_s
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    b_h = hh
    x_t = (sigma_t / sigma_s) * x_s - alpha_t * h_phi_1 * x0_s
    slots = max_order - 1
    if slots == 0:
        if x0_t is None:
            return x_t
        return x_t - alpha_t * b_h * 0.5 * (x0_t - x0_s)

    # g_m = (−h)·φ_{m+2}(−h)·(m+1)!/B(h), m = 0 … max_order − 1, by the recursion of the φ's.
    g, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for m in range(1, max_order + 1):
        g.append(h_phi_k * factorial / b_h)
        factorial *= m + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    g = jnp.stack(g)

    slot = jnp.arange(slots)
    in_use = slot < order - 1
    rks = jnp.where(in_use, (lam_earlier[:slots] - lam_s) / h, 1)
    diffs = (x0_earlier[:slots] - x0_s[None]) / rks.reshape((slots,) + (1,) * x_s.ndim)
    if x0_t is None:
        rhos = jnp.where(order == 2, jnp.where(slot == 0, 0.5, 0.0).astype(g.dtype),
                         _masked_solve(rks, g[:slots], order - 1))
        residual = jnp.tensordot(jnp.where(in_use, rhos, 0), diffs, axes=1)
        return x_t - alpha_t * b_h * residual
    # The corrector's nodes are the earlier points' r_k followed by r = 1 for t itself.
    rks_c = jnp.where(jnp.arange(max_order) == order - 1, 1,
                      jnp.concatenate([rks, jnp.ones((1,), rks.dtype)]))
    rhos_c = jnp.where(order == 1, jnp.where(jnp.arange(max_order) == 0, 0.5, 0.0).astype(g.dtype),
                       _masked_solve(rks_c, g, order))
    residual = jnp.tensordot(jnp.where(in_use, rhos_c[:slots], 0), diffs, axes=1)
    return x_t - alpha_t * b_h * (residual + rhos_c[order - 1] * (x0_t - x0_s))


def unipc_step(schedule: Schedule, i: jax.Array, x: jax.Array, model_output: jax.Array, state: UniPCState, *,
               order: int = 3, target: str = "eps", variance: str = "fixed_small", clip_denoised: bool = True,
               eps_scale: jax.Array | float | None = None) -> tuple[StepOutput, UniPCState]:
    """Corrects x_i (the predictor's value, at which the network was evaluated) with the new x̂₀_i, then
    predicts x_{i−1}; ``i`` is a scalar respaced index, ``state`` starts as ``UniPCState.empty(order, x)``.
    The returned StepOutput's x is the predicted x_{i−1}, the point of the next network evaluation."""
    if order not in ORDERS:
        raise ValueError(f"UniPC order must be one of {ORDERS}, got {order}")
    mean_output, _ = split_output(model_output, x, variance)
    x0, eps = denoise(schedule, i, x, mean_output, target=target, clip_denoised=clip_denoised,
                      eps_scale=eps_scale)
    history = state.history
    lam_i = half_log_snr(schedule, i)
    alpha_i = schedule.sqrt_alphas_cumprod[i]
    sigma_i = schedule.sqrt_one_minus_alphas_cumprod[i]
    num_steps = schedule.betas.shape[0]
    above = jnp.minimum(i + 1, num_steps - 1)

    corrected = unipc_update(
        state.x_prev, history.x0[0], history.x0[1:], history.lam[0], history.lam[1:], lam_i, alpha_i, sigma_i,
        schedule.sqrt_one_minus_alphas_cumprod[above], jnp.minimum(jnp.minimum(order, history.count), i + 2),
        order, x0_t=x0)
    x = jnp.where((history.count >= 1) & (i > 0), corrected, x)

    alpha_t, sigma_t = next_alpha_sigma(schedule, i, 0)
    lam_t = half_log_snr(schedule, jnp.maximum(i - 1, 0))
    # After i = 0 the step lands on the data and returns x̂₀_0; a dummy λ_t keeps the unused branch finite.
    predicted = unipc_update(
        x, x0, history.x0, lam_i, history.lam, jnp.where(i == 0, lam_i + 1, lam_t), alpha_t, sigma_t, sigma_i,
        jnp.minimum(jnp.minimum(order, history.count + 1), i + 1), order)
    x_next = jnp.where(i == 0, x0, predicted)
    return (StepOutput(x=x_next, x0=x0, eps=eps),
            UniPCState(history=history.push(x0, lam_i), x_prev=x))
