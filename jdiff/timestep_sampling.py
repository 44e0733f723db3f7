"""Timestep samplers for training: uniform t, and ADM's loss-second-moment importance sampler.

The importance sampler (Nichol & Dhariwal 2021, §3.3: L = E_{t∼p}[L_t/p_t] with p_t ∝ √E[L_t²];
guided-diffusion's ``LossSecondMomentResampler``) estimates E[L_t²] from the last H = 10 losses seen at
each t, mixes p with the uniform distribution (weight ``uniform_prob`` = 0.001), and weights each
example by 1/(T p_t) so that the weighted loss is an unbiased estimate of the uniform-t loss. Until every
t has H losses (warm-up) it samples uniformly with weight 1.

Its history is a :class:`LossSecondMomentState`, part of the train state (so a resumed run continues
it exactly), and :func:`update_loss_second_moment` is a pure, jittable function of the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LossSecondMomentState:
    """The last H losses at each of the T steps, as a ring buffer per step.

    ``history[t]`` holds the losses of step t at slots 0 … H−1 in ring order: the next loss goes to slot
    ``cursor[t]``, overwriting the oldest once ``filled[t]`` = H. Only the set of the last H losses enters
    the probabilities, so the ring order is not the chronological order guided-diffusion keeps.
    """

    history: jax.Array  # (T, H) float
    cursor: jax.Array   # (T,) int32, slot of the next loss
    filled: jax.Array   # (T,) int32, losses stored so far, at most H
    uniform_prob: float = struct.field(pytree_node=False, default=0.001)

    @property
    def num_timesteps(self) -> int:
        return self.history.shape[0]

    @property
    def history_per_term(self) -> int:
        return self.history.shape[1]


def init_loss_second_moment(num_timesteps: int, history: int = 10, uniform_prob: float = 0.001,
                            dtype: jnp.dtype = jnp.float32) -> LossSecondMomentState:
    """An empty history of ``history`` losses per step (guided-diffusion: 10, uniform_prob 0.001)."""
    if num_timesteps < 1 or history < 1:
        raise ValueError(f"num_timesteps and history must be positive, got {num_timesteps} and {history}")
    if not 0.0 < uniform_prob <= 1.0:
        raise ValueError(f"uniform_prob must be in (0, 1] (guided-diffusion uses 0.001), got {uniform_prob}")
    return LossSecondMomentState(history=jnp.zeros((num_timesteps, history), dtype),
                                 cursor=jnp.zeros((num_timesteps,), jnp.int32),
                                 filled=jnp.zeros((num_timesteps,), jnp.int32),
                                 uniform_prob=uniform_prob)


def is_warmed_up(state: LossSecondMomentState) -> jax.Array:
    """True once every step has ``history_per_term`` losses."""
    return jnp.all(state.filled == state.history_per_term)


def timestep_probabilities(state: LossSecondMomentState) -> jax.Array:
    """p_t = (1 − u) s_t/Σ s + u/T with s_t = √(mean of the stored L_t²) once warmed up, else 1/T."""
    num_timesteps = state.num_timesteps
    second_moment = jnp.sqrt(jnp.mean(state.history ** 2, axis=-1))
    learned = (second_moment / jnp.sum(second_moment) * (1.0 - state.uniform_prob)
               + state.uniform_prob / num_timesteps)
    return jnp.where(is_warmed_up(state), learned, 1.0 / num_timesteps)


def sample_timesteps(state: LossSecondMomentState | None, key: jax.Array, batch_size: int,
                     num_timesteps: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` steps t ∈ [0, T) (int32) and their importance weights 1/(T p_t) (float32).

    ``state=None`` is the uniform sampler (weights 1). During the importance sampler's warm-up the draw
    is the uniform sampler's for the same key, with weights exactly 1.
    """
    uniform_t = jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
    if state is None:
        return uniform_t, jnp.ones((batch_size,), jnp.float32)
    if state.num_timesteps != num_timesteps:
        raise ValueError(f"the sampler state covers {state.num_timesteps} steps but the schedule has "
                         f"{num_timesteps}; initialise it with init_loss_second_moment({num_timesteps})")
    p = timestep_probabilities(state)
    warm = is_warmed_up(state)
    importance_t = jax.random.choice(key, num_timesteps, (batch_size,), p=p).astype(jnp.int32)
    t = jnp.where(warm, importance_t, uniform_t)
    weights = jnp.where(warm, 1.0 / (num_timesteps * p[t]), 1.0)
    return t, weights.astype(jnp.float32)


def update_loss_second_moment(state: LossSecondMomentState, t: jax.Array,
                              losses: jax.Array) -> LossSecondMomentState:
    """Appends the per-example ``losses`` (unweighted by importance) of the global batch at steps ``t``.

    Equivalent to guided-diffusion's per-example loop in batch order: when a step occurs k times in the
    batch its losses are appended in batch order, and if k > H only the last H survive. Each example's
    slot is ``cursor + (its rank among earlier examples of the same step)``, found with a B × B
    comparison, so the update is one scatter without duplicate writes (deterministic on any device).
    """
    if t.shape != losses.shape or t.ndim != 1:
        raise ValueError(f"t and losses must both have shape (B,), got {t.shape} and {losses.shape}")
    num_timesteps, history = state.history.shape
    t = t.astype(jnp.int32)
    same = t[:, None] == t[None, :]
    rank = jnp.sum(jnp.tril(same, k=-1), axis=1)
    repeats = jnp.sum(same, axis=1)
    slot = (state.cursor[t] + rank) % history
    # Losses pushed out by later ones of the same batch are sent out of bounds and dropped.
    row = jnp.where(rank >= repeats - history, t, num_timesteps)
    new_history = state.history.at[row, slot].set(losses.astype(state.history.dtype), mode="drop")
    counts = jnp.zeros((num_timesteps,), jnp.int32).at[t].add(1)
    return state.replace(history=new_history, cursor=(state.cursor + counts) % history,
                         filled=jnp.minimum(state.filled + counts, history))
