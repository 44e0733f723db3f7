"""Epsilon Scaling (Ning et al., ICLR 2024): the λ schedule that divides the predicted noise at sampling.

At respaced step i (i = 0 the last, least noisy step) the sampler uses ε̂/λ_i instead of ε̂ where it forms
its clean-data estimate (see :func:`jdiff.samplers.denoise.denoise`). The paper uses a constant λ or the
linear form λ_i = k·i + b; the official ADM-ES code writes the linear form around a fixed mean λ̄ instead,
b = λ̄ − k·(N − 1)/2 over the N respaced steps. λ is always indexed by the respaced step i, never by the
original timestep, so the same λ schedule means the same thing for every respacing of a given length.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

ANCHORS = ("first", "mean")


@struct.dataclass
class EpsScaling:
    """λ_i = k·i + b (``anchor="first"``: b is λ at i = 0) or λ_i = (λ̄ − k·(N−1)/2) + k·i
    (``anchor="mean"``: ``b`` holds the mean λ̄ over the N steps, the official code's form).

    ``k`` and ``b`` are pytree leaves (floats or scalar arrays), so an ``EpsScaling`` can be passed into
    ``jax.jit`` and swept without recompiling; ``anchor`` is static. Build it with :meth:`constant`,
    :meth:`linear` or :meth:`linear_mean`.
    """

    k: float | jax.Array
    b: float | jax.Array
    anchor: str = struct.field(pytree_node=False, default="first")

    @classmethod
    def constant(cls, b: float) -> "EpsScaling":
        """λ_i = b at every step (the paper's uniform schedule; b = 1 is no scaling)."""
        _check_positive("b", b)
        return cls(k=0.0, b=b, anchor="first")

    @classmethod
    def linear(cls, k: float, b: float) -> "EpsScaling":
        """λ_i = k·i + b, the paper's tables' (k, b): b is λ at the last, least noisy step i = 0."""
        _check_positive("b", b)
        return cls(k=k, b=b, anchor="first")

    @classmethod
    def linear_mean(cls, k: float, mean: float) -> "EpsScaling":
        """λ_i = start + k·i with start = mean − k·(N − 1)/2, so that λ averages to ``mean`` over the N
        respaced steps (the official ADM-ES code's linear schedule, e.g. mean = 1.011)."""
        _check_positive("mean", mean)
        return cls(k=k, b=mean, anchor="mean")

    def at(self, i: jax.Array | int, num_steps: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """λ_i for respaced step index ``i`` of a chain of ``num_steps`` steps, in ``dtype``."""
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown EpsScaling anchor {self.anchor!r}; choose one of {ANCHORS}")
        k = jnp.asarray(self.k, dtype)
        b = jnp.asarray(self.b, dtype)
        if self.anchor == "mean":
            b = b - k * ((num_steps - 1) / 2)
        return b + jnp.asarray(i, dtype) * k

    def values(self, num_steps: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """λ_0 … λ_{N−1} (index i = 0 the least noisy step)."""
        return self.at(jnp.arange(num_steps), num_steps, dtype)

    def check(self, num_steps: int) -> None:
        """Raises ValueError if some λ_i is not positive (only when k and b are concrete numbers)."""
        try:
            values = np.asarray(self.values(num_steps, jnp.float32))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return
        if not np.all(values > 0):
            raise ValueError(f"Epsilon Scaling needs λ_i > 0 at every step, but {self} gives λ from "
                             f"{values.min():g} to {values.max():g} over {num_steps} steps; "
                             "choose a smaller |k| or a larger b")


def _check_positive(name: str, value: float | jax.Array) -> None:
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"EpsScaling {name} must be positive (λ divides ε̂), got {value}")
