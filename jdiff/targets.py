"""What the network predicts: ε, x₀ or v, and exact conversions between them.

With x_t = α x₀ + σ ε, α = √ᾱ_t and σ = √(1 − ᾱ_t) (so α² + σ² = 1):
  ε-target:  x̂₀ = (x_t − σ ε̂)/α = √(1/ᾱ) x_t − √(1/ᾱ − 1) ε̂              (Ho et al. 2020, eq. 15)
  v-target:  v = α ε − σ x₀,  x̂₀ = α x_t − σ v̂,  ε̂ = σ x_t + α v̂         (Salimans & Ho 2022, §4)
Every function takes α and σ already broadcast to the shape of x_t (see :func:`jdiff.schedules.extract`).
"""

from __future__ import annotations

import jax

TARGETS = ("eps", "x0", "v")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown prediction target {target!r}; choose one of {TARGETS}")
    return target


def training_target(target: str, x0: jax.Array, eps: jax.Array, alpha: jax.Array,
                    sigma: jax.Array) -> jax.Array:
    """The regression target of the network for clean data x₀ and noise ε."""
    check_target(target)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    return alpha * eps - sigma * x0


def to_x0(target: str, output: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """x̂₀ implied by the network output of the given target."""
    check_target(target)
    if target == "eps":
        return (x_t - sigma * output) / alpha
    if target == "x0":
        return output
    return alpha * x_t - sigma * output


def to_eps(target: str, output: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    """ε̂ implied by the network output of the given target."""
    check_target(target)
    if target == "eps":
        return output
    if target == "x0":
        return (x_t - alpha * output) / sigma
    return sigma * x_t + alpha * output
