"""What the multistep ODE solvers (DPM-Solver++, UniPC) share: the half-log-SNR time variable of the
respaced grid and the history of past data predictions.

The solvers integrate the probability-flow ODE in λ = log(α/σ) (Lu et al. 2022), over the points of the
respaced schedule i = N−1, …, 0, and then land on the data (σ = 0, λ = ∞) with a first-order step that
returns x̂₀ at i = 0, as DDIM's last step does. So they use the same N network evaluations as DDIM on the
same respacing, and every sampler of :func:`jdiff.samplers.sample` ends on the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jdiff.schedules import Schedule


def half_log_snr(schedule: Schedule, i: jax.Array) -> jax.Array:
    """λ_i = log(α_i/σ_i) = ½ log SNR_i at respaced step i."""
    return 0.5 * jnp.log(schedule.snr[i])


@struct.dataclass
class History:
    """The last ``size`` data predictions x̂₀ and their λ, most recent first, and how many were pushed
    (a solver uses min(count, size) of them)."""

    x0: jax.Array       # (size, *x.shape)
    lam: jax.Array      # (size,)
    count: jax.Array    # int32 scalar

    @classmethod
    def empty(cls, size: int, x: jax.Array) -> "History":
        return cls(x0=jnp.zeros((size,) + x.shape, x.dtype), lam=jnp.zeros((size,), x.dtype),
                   count=jnp.zeros((), jnp.int32))

    def push(self, x0: jax.Array, lam: jax.Array) -> "History":
        return History(x0=jnp.concatenate([x0[None], self.x0[:-1]]),
                       lam=jnp.concatenate([jnp.reshape(lam, (1,)).astype(self.lam.dtype), self.lam[:-1]]),
                       count=self.count + 1)
