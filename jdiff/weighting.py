"""Per-timestep loss weights as functions of the signal-to-noise ratio SNR_t = ᾱ_t / (1 − ᾱ_t).

Every SNR-based weighting is *defined* as a weight w_ε on the ε-prediction MSE, the form in which its
paper and the official Debias code state it. For the other prediction targets the weight is converted
so that the objective is the same function of the ε error implied by the prediction. With x_t = α x₀ + σ ε
the implied errors satisfy ε̂ − ε = −(α/σ)(x̂₀ − x₀) = α (v̂ − v), hence

    ‖ε̂ − ε‖² = SNR · ‖x̂₀ − x₀‖² = SNR/(1 + SNR) · ‖v̂ − v‖²,

and a weighting reads w_ε on the ε-MSE, w_ε·SNR on the x₀-MSE and w_ε·SNR/(1 + SNR) on the v-MSE.

The exception is ``constant``: weight 1 on the MSE of whichever target the network predicts (Ho et al.
2020's L_simple for ε; the plain x₀- or v-MSE otherwise), the official code's unweighted loss for all three
targets. A constant weight on the ε-MSE would instead read SNR on the x₀-MSE and SNR/(1 + SNR) on the
v-MSE (``min_snr`` in the limit γ → ∞).

Weightings (w_ε, the weight on the ε-MSE):

``constant``  1 on the target's own MSE (not converted, see above).
``debias``    1/√SNR, unnormalised: Yu et al. (ECCV 2024), "Unmasking Bias in Diffusion Model Training"
              (arXiv 2310.08442), the debiased weight λ_t = 1/√SNR_t on the ε-MSE as the official code
              applies it. For x₀ it reads √SNR, for v √SNR/(1 + SNR). It spans 0.01 … 157 on the linear
              schedule and 0.0064 … 20,291 on the cosine one (T = 1000): see ``max_weight``.
``p2``        1/(k + SNR)^γ: Choi et al. 2022, "Perception Prioritized Training of Diffusion Models"
              (CVPR), λ'_t = λ_t/(k + SNR(t))^γ with λ_t = 1 for L_simple, i.e. on the ε-MSE as the
              official P2 and Debias code apply it. x₀: SNR/(k + SNR)^γ; v: SNR/((1 + SNR)(k + SNR)^γ).
              γ = 0 is ``constant`` for ε.
``min_snr``   min(SNR, γ)/SNR: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
              Strategy" (ICCV), w_t = min(SNR_t, γ) on the x₀-MSE, stated there for ε as min(SNR, γ)/SNR
              and for v as min(SNR, γ)/(SNR + 1) — exactly the conversions above.
``snr``       1/SNR, the official Debias code's "SNR weighting" for ε; it makes the ε loss the plain
              x₀-MSE, so for x₀ it reads 1 and for v 1/(1 + SNR).

How this differs from the official Debias code (commit e4cd260): its weight line multiplies the same array
into the MSE of whatever target ``model_mean_type`` selects, and its README states the weightings for
the noise-prediction mode. For ε every weighting here equals it. Running it with ``predict_xstart`` or
``predict_v`` while a weighting line is active applies the unconverted ε-form weight (e.g. 1/√SNR) to the
x₀ or v MSE, a different objective from the weighting's; jdiff converts instead. The code's unused
``x0_MinSNR`` array, min(SNR, 5), is this module's x₀ form of ``min_snr``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdiff.targets import check_target

WEIGHTINGS = ("constant", "debias", "p2", "min_snr", "snr")
WEIGHTING_PARAMETERS = ("p2_k", "p2_gamma", "min_snr_gamma", "max_weight")


def eps_weight(name: str, snr: jax.Array, *, p2_k: float = 1.0, p2_gamma: float = 1.0,
               min_snr_gamma: float = 5.0) -> jax.Array:
    """w_ε, the weight on the ε-MSE, of an SNR-based weighting (all names but ``constant``)."""
    if name == "debias":
        return 1.0 / jnp.sqrt(snr)
    if name == "p2":
        return (p2_k + snr) ** (-p2_gamma)
    if name == "min_snr":
        # The official code's arithmetic (γ/SNR where that is below 1, else 1), so its table is matched
        # to the last bit, and exactly 1 for SNR ≤ γ.
        return jnp.minimum(min_snr_gamma / snr, 1.0)
    if name == "snr":
        return 1.0 / snr
    raise ValueError(f"{name!r} has no ε-MSE form; choose one of {WEIGHTINGS[1:]}")


def check_weighting(name: str, *, p2_k: float = 1.0, p2_gamma: float = 1.0, min_snr_gamma: float = 5.0,
                    max_weight: float | None = None) -> str:
    """Raises ValueError for an unknown weighting name or an out-of-range parameter; returns the name."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {WEIGHTINGS}")
    if not p2_k >= 0:
        raise ValueError(f"p2_k must be >= 0 (P2's k, 1 in Choi et al. 2022), got {p2_k}")
    if not p2_gamma >= 0:
        raise ValueError(f"p2_gamma must be >= 0 (P2's γ, 0.5 or 1 in Choi et al. 2022), got {p2_gamma}")
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (Min-SNR's γ, 5 in Hang et al. 2023), "
                         f"got {min_snr_gamma}")
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"max_weight must be None (no clamp) or > 0, got {max_weight}")
    return name


def loss_weight(name: str, snr: jax.Array, target: str, *, p2_k: float = 1.0, p2_gamma: float = 1.0,
                min_snr_gamma: float = 5.0, max_weight: float | None = None) -> jax.Array:
    """The weight on the per-example MSE of ``target`` (``eps``, ``x0`` or ``v``) at the given SNR.

    ``snr`` is SNR_t = ᾱ_t/(1 − ᾱ_t) per example (e.g. ``schedule.snr[t]``); the result has its shape and
    dtype. See the module docstring for each weighting's formula, paper and per-target form. With
    ``max_weight`` the returned weight is clamped to at most that value (off by default; the official
    code never clamps): 1/√SNR reaches 2·10⁴ at t = T on the cosine schedule.
    """
    check_weighting(name, p2_k=p2_k, p2_gamma=p2_gamma, min_snr_gamma=min_snr_gamma, max_weight=max_weight)
    check_target(target)
    snr = jnp.asarray(snr)
    if name == "constant":
        weight = jnp.ones_like(snr)
    else:
        weight = eps_weight(name, snr, p2_k=p2_k, p2_gamma=p2_gamma, min_snr_gamma=min_snr_gamma)
        if target == "x0":
            weight = weight * snr
        elif target == "v":
            weight = weight * (snr / (1.0 + snr))
    if max_weight is not None:
        weight = jnp.minimum(weight, max_weight)
    return weight.astype(snr.dtype)
