"""The diffusion training loss: weighted MSE on ε, x₀ or v, plus ADM's hybrid VLB term for a learned variance.

For clean images x₀ (NHWC), respaced step indices t and noise ε (Ho et al. 2020, eq. 4 and Alg. 1):

    x_t  = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
    mse  = w(SNR_t) · mean over pixels of (target − network output)²          (jdiff.weighting)
    loss = mse                   for a fixed variance (``fixed_small`` / ``fixed_large``)
    loss = mse + vb · T/1000     for ``learned_range`` (Nichol & Dhariwal 2021, §3.1, L_hybrid; the factor
                                 is guided-diffusion's RESCALED_MSE, 1 without ``rescale_learned_sigmas``)

where vb is L_t of the variational bound in bits per dim, computed on a stop-gradient copy of the mean
output so that it trains only the variance (Nichol & Dhariwal 2021, §3.1):
    L_{t>0} = KL(q(x_{t−1} | x_t, x₀) ‖ p(x_{t−1} | x_t)),   L_0 = −log p(x₀ | x₁) (discretized Gaussian).

The weight multiplies the MSE only, never the VLB term, as in the official Debias code. Every pixel mean
runs over all non-batch axes, as guided-diffusion's ``mean_flat``. The network is a closure
``model_fn(x_t, timesteps) -> output`` receiving the ORIGINAL int32 timestep of each example
(``schedule.timesteps[t]``), so the loss knows nothing of Flax, parameters, dropout keys or labels.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jdiff import targets, timestep_sampling
from jdiff import weighting as weighting_lib
from jdiff.schedules import Schedule, extract

VARIANCES = ("fixed_small", "fixed_large", "learned_range")

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def mean_flat(x: jax.Array) -> jax.Array:
    """The mean over every axis but the first (per-example mean over pixels and channels)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats:
    ½ (logvar2 − logvar1 + e^(logvar1 − logvar2) + (mean1 − mean2)² e^(−logvar2) − 1)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the approximation of Ho et al.'s and guided-diffusion's
    decoder (absolute error below 2·10⁻⁴); kept so that bits per dim match theirs."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """log P(x) per element, in nats, for N(means, e^(2 log_scales)) discretized to 256 bins on [−1, 1]
    (Ho et al. 2020, eq. 13): the mass of [x − 1/255, x + 1/255], with the first and last bins extended
    to −∞ and +∞. x must be 8-bit data rescaled to [−1, 1]; probabilities are floored at 10⁻¹²."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def learned_range_log_variance(schedule: Schedule, t: jax.Array, values: jax.Array) -> jax.Array:
    """log Σ_θ = f log β_t + (1 − f) log β̃_t with f = (values + 1)/2 (Nichol & Dhariwal 2021, eq. 15):
    the network's variance channels ``values`` ∈ [−1, 1] interpolate between the posterior variance β̃
    (clipped at t = 0 as guided-diffusion) and β, in log space."""
    frac = (values + 1.0) / 2.0
    max_log = extract(schedule.log_betas, t, values.ndim)
    min_log = extract(schedule.posterior_log_variance_clipped, t, values.ndim)
    return frac * max_log + (1.0 - frac) * min_log


def vb_term_bpd(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, x0_pred: jax.Array,
                log_variance: jax.Array) -> jax.Array:
    """L_t of the variational bound per example, in bits per dim, for p(x_{t−1} | x_t) with mean
    μ̃(x̂₀, x_t) (the posterior mean at the predicted x₀, Ho et al. 2020, eq. 7) and the given log variance:
    KL(q(x_{t−1} | x_t, x₀) ‖ p) for t > 0 and the decoder NLL −log p(x₀ | x₁) at t = 0 (respaced index)."""
    coef1 = extract(schedule.posterior_mean_coef1, t, x0.ndim)
    coef2 = extract(schedule.posterior_mean_coef2, t, x0.ndim)
    true_mean = coef1 * x0 + coef2 * x_t
    true_log_variance = extract(schedule.posterior_log_variance_clipped, t, x0.ndim)
    mean = coef1 * x0_pred + coef2 * x_t
    kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
    log_likelihood = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance)
    decoder_nll = -mean_flat(log_likelihood) / math.log(2.0)
    return jnp.where(t == 0, decoder_nll, kl)


def check_loss_settings(target: str, variance: str, weighting_name: str,
                        weighting_kwargs: Mapping[str, Any]) -> None:
    """Raises ValueError naming the valid choices for an unknown target, variance or weighting."""
    targets.check_target(target)
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    unknown = set(weighting_kwargs) - set(weighting_lib.WEIGHTING_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown weighting_kwargs {sorted(unknown)}; valid keys are "
                         f"{weighting_lib.WEIGHTING_PARAMETERS}")
    weighting_lib.check_weighting(weighting_name, **weighting_kwargs)


def diffusion_loss(model_fn: ModelFn, schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, *,
                   target: str = "eps", variance: str = "fixed_small", weighting: str = "constant",
                   rescale_learned_sigmas: bool = True,
                   weighting_kwargs: Mapping[str, Any] | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The per-example training loss for explicit steps ``t`` (respaced indices, shape (B,)) and ``noise``.

    ``x0`` and ``noise`` are (B, H, W, C); the network output is (B, H, W, C), or (B, H, W, 2C) with
    ``variance="learned_range"`` (mean channels first, variance channels the second half of the last
    axis). ``weighting`` and ``weighting_kwargs`` (p2_k, p2_gamma, min_snr_gamma, max_weight) select
    the weight, see :func:`jdiff.weighting.loss_weight`. ``rescale_learned_sigmas`` multiplies vb by
    T/1000 (T = ``schedule.num_steps``) and only concerns a learned variance, whose decoder term at t = 0
    assumes x0 is 8-bit data scaled to [−1, 1].

    Returns ``(loss, terms)``: the (B,) loss and the (B,) terms ``mse`` (weighted) and, for a learned
    variance, ``vb`` (bits per dim, rescaled as it enters the loss).
    """
    weighting_kwargs = dict(weighting_kwargs or {})
    check_loss_settings(target, variance, weighting, weighting_kwargs)
    if x0.ndim < 2 or noise.shape != x0.shape or t.shape != x0.shape[:1]:
        raise ValueError(f"expected x0 and noise of one shape (B, ...) and t of shape (B,), got x0 "
                         f"{x0.shape}, noise {noise.shape}, t {t.shape}")
    alpha = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim)
    sigma = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    x_t = alpha * x0 + sigma * noise
    output = model_fn(x_t, schedule.timesteps[t])
    learned = variance == "learned_range"
    expected = x0.shape[:-1] + (2 * x0.shape[-1] if learned else x0.shape[-1],)
    if output.shape != expected:
        raise ValueError(f"model output has shape {output.shape}, expected {expected} for variance "
                         f"{variance!r} (NHWC; a learned variance doubles the channels)")
    if learned:
        output, variance_values = jnp.split(output, 2, axis=-1)

    weight = weighting_lib.loss_weight(weighting, schedule.snr[t], target, **weighting_kwargs)
    regression_target = targets.training_target(target, x0, noise, alpha, sigma)
    terms = {"mse": weight * mean_flat((regression_target - output) ** 2)}
    loss = terms["mse"]
    if learned:
        # The VLB trains only the variance: the mean enters through a stop-gradient copy.
        x0_pred = targets.to_x0(target, jax.lax.stop_gradient(output), x_t, alpha, sigma)
        log_variance = learned_range_log_variance(schedule, t, variance_values)
        vb = vb_term_bpd(schedule, x0, x_t, t, x0_pred, log_variance)
        if rescale_learned_sigmas:
            vb = vb * (schedule.num_steps / 1000.0)
        terms["vb"] = vb
        loss = loss + vb
    return loss, terms


def training_loss(model_fn: ModelFn, schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                  sampler_state: timestep_sampling.LossSecondMomentState | None = None,
                  **loss_kwargs: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Draws t (uniform, or importance-sampled from ``sampler_state``) and ε from ``key`` and evaluates
    :func:`diffusion_loss` (keyword arguments as there) on the batch ``x0``.

    Returns ``(objective, metrics)``: the (B,) objective ``importance · loss``, whose mean is the
    training loss (unbiased for the uniform-t loss), and metrics of shape (B,): ``loss`` (before the
    importance weight, what :func:`jdiff.timestep_sampling.update_loss_second_moment` takes), ``mse``,
    ``vb`` for a learned variance, ``t`` (respaced indices, e.g. for the loss per quarter of t) and
    ``importance``.
    """
    key_t, key_noise = jax.random.split(key)
    t, importance = timestep_sampling.sample_timesteps(sampler_state, key_t, x0.shape[0], schedule.num_steps)
    noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
    loss, terms = diffusion_loss(model_fn, schedule, x0, t, noise, **loss_kwargs)
    return importance * loss, dict(terms, loss=loss, t=t, importance=importance)
