"""A diffusion model of Gaussian data whose exposure bias is known in closed form.

Data x₀ ~ N(0, s²) independently per pixel. The exact ε-prediction at x_t = α x₀ + σ ε is
E[ε | x_t] = σ x_t / (α² s² + σ²); the toy network returns c times it (c > 1 over-predicts the noise, the
bias Epsilon Scaling with λ = c undoes exactly for an ε-network). Without clipping every DDPM step is
linear in x, x_{i−1} = A_i x_i + √Σ_i z, so the joint Gaussian of (x₀, x̂) along the chain, and with it both
variance errors of :mod:`jdiff.evaluation.exposure_bias`, follow from a two-number recursion.
"""

import jax.numpy as jnp
import numpy as np

from jdiff import schedules


def oracle_apply_fn(s: float, schedule_name: str = "cosine", num_timesteps: int = 1000):
    """``apply_fn(c, x, t, labels) = c·E[ε | x_t]`` for N(0, s²) data, t the original timestep; c is the
    'variables' argument, so one compiled program serves every bias."""
    table = jnp.asarray(np.cumprod(1.0 - schedules.beta_schedule(schedule_name, num_timesteps)), jnp.float32)

    def apply_fn(c, x, t, labels):
        del labels
        ac = table[t].reshape((-1,) + (1,) * (x.ndim - 1))
        return c * jnp.sqrt(1.0 - ac) * x / (ac * s * s + 1.0 - ac)

    return apply_fn


def closed_form(num_steps: int, s: float, c: float, lam: float, variance: str = "fixed_small",
                schedule_name: str = "cosine") -> dict[str, np.ndarray]:
    """Per DDPM step (noisiest first, no clipping, respacing ``num_steps`` of 1000): the authors'
    β̂ = std(x̂ − α x₀) and δ_paired, jdiff's std(x̂) against std(x) of training and δ, in float64."""
    kept = schedules.space_timesteps(1000, str(num_steps))
    betas = schedules.respaced_betas(schedules.beta_schedule(schedule_name, 1000), kept)
    ac = np.cumprod(1.0 - betas)
    prev = np.concatenate([[1.0], ac[:-1]])
    coef1, coef2 = betas * np.sqrt(prev) / (1 - ac), (1 - prev) * np.sqrt(1 - betas) / (1 - ac)
    posterior = betas * (1 - prev) / (1 - ac)
    step_variance = {"fixed_small": np.concatenate([posterior[1:2], posterior[1:]]),
                     "fixed_large": np.concatenate([posterior[1:2], betas[1:]])}[variance]
    alpha, sigma = np.sqrt(ac), np.sqrt(1 - ac)
    var_x, cov = alpha[-1] ** 2 * s * s + sigma[-1] ** 2, alpha[-1] * s * s  # x_T from q(x_T | x₀)
    rows = []
    for i in range(num_steps - 1, -1, -1):
        eps_gain = c * sigma[i] / (alpha[i] ** 2 * s * s + sigma[i] ** 2)
        gain = coef1[i] * (1 - sigma[i] * eps_gain / lam) / alpha[i] + coef2[i]
        var_x = gain * gain * var_x + (step_variance[i] if i > 0 else 0.0)
        cov = gain * cov
        a, sg = (alpha[i - 1], sigma[i - 1]) if i > 0 else (1.0, 0.0)
        paired = np.sqrt(var_x - 2 * a * cov + a * a * s * s)
        rows.append((sg, paired, np.sqrt(var_x), np.sqrt(a * a * s * s + sg * sg)))
    sigma_t, paired, sample, reference = np.array(rows).T
    return dict(sigma=sigma_t, paired_std=paired, delta_paired=(paired - sigma_t) ** 2, sample_std=sample,
                reference_std=reference, delta=(sample - reference) ** 2)
