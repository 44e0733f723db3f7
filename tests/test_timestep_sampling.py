"""Uniform and loss-second-moment timestep sampling against a NumPy model of guided-diffusion's resampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import timestep_sampling as ts

# Jitted once per module: op-by-op dispatch would compile every primitive separately.
update = jax.jit(ts.update_loss_second_moment)
sample = jax.jit(ts.sample_timesteps, static_argnums=(2, 3))
probabilities = jax.jit(ts.timestep_probabilities)


class NumpyLossSecondMoment:
    """guided-diffusion's LossSecondMomentResampler semantics: a per-step list of the last H losses,
    appended one example at a time in batch order, shifting out the oldest once full."""

    def __init__(self, num_timesteps, history, uniform_prob):
        self.history = np.zeros((num_timesteps, history))
        self.counts = np.zeros(num_timesteps, int)
        self.uniform_prob = uniform_prob

    def warmed_up(self):
        return bool(np.all(self.counts == self.history.shape[1]))

    def probabilities(self):
        w = np.ones(len(self.counts))
        if self.warmed_up():
            w = np.sqrt(np.mean(self.history ** 2, axis=-1))
            w = w / w.sum() * (1 - self.uniform_prob) + self.uniform_prob / len(w)
        return w / w.sum()

    def update(self, t, losses):
        for step, loss in zip(t, losses):
            if self.counts[step] == self.history.shape[1]:
                self.history[step, :-1] = self.history[step, 1:]
                self.history[step, -1] = loss
            else:
                self.history[step, self.counts[step]] = loss
                self.counts[step] += 1


def test_probabilities_match_the_official_resampler_with_repeated_steps():
    T, H = 6, 3
    rng = np.random.default_rng(0)
    reference = NumpyLossSecondMoment(T, H, 0.05)
    with jax.enable_x64(True):
        state = ts.init_loss_second_moment(T, history=H, uniform_prob=0.05, dtype=jnp.float64)
        batches = [np.array([0, 1, 2, 3, 4, 5, 0, 0]), np.array([1] * 5 + [2, 3, 0]),  # 5 repeats > H
                   np.array([4, 4, 5, 5, 0, 1, 2, 4]), np.array([3, 3, 3, 3, 3, 3, 3, 3])]
        batches += [rng.integers(0, T, 8) for _ in range(6)]
        warm_seen = []
        for t in batches:
            losses = rng.exponential(1.0, len(t)) * (1 + t)
            reference.update(t, losses)
            state = update(state, jnp.asarray(t), jnp.asarray(losses))
            assert bool(ts.is_warmed_up(state)) == reference.warmed_up()
            warm_seen.append(reference.warmed_up())
            np.testing.assert_allclose(probabilities(state), reference.probabilities(), rtol=1e-13)
            # The same last-H losses per step, whatever the ring order.
            np.testing.assert_allclose(np.sort(np.asarray(state.history), axis=1),
                                       np.sort(reference.history, axis=1), rtol=0)
    assert warm_seen[:2] == [False, False] and warm_seen[-1]


def test_warm_up_samples_like_the_uniform_sampler_with_unit_weights():
    state = ts.init_loss_second_moment(50)
    state = update(state, jnp.arange(49), jnp.ones(49))  # one step never seen
    key = jax.random.key(3)
    t, w = sample(state, key, 64, 50)
    t_uniform, w_uniform = sample(None, key, 64, 50)
    np.testing.assert_array_equal(t, t_uniform)
    np.testing.assert_array_equal(w, np.ones(64))
    np.testing.assert_array_equal(w_uniform, np.ones(64))
    assert t.dtype == jnp.int32 and w.dtype == jnp.float32
    assert int(t.min()) >= 0 and int(t.max()) < 50


def test_importance_weights_average_to_one_and_follow_p():
    T, H = 20, 2
    state = ts.init_loss_second_moment(T, history=H)
    steps = jnp.repeat(jnp.arange(T), H)
    state = update(state, steps, (1.0 + steps) ** 2 / 10)
    assert bool(ts.is_warmed_up(state))
    p = np.asarray(probabilities(state), np.float64)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    expected_s = (1.0 + np.arange(T)) ** 2
    np.testing.assert_allclose(p, expected_s / expected_s.sum() * 0.999 + 0.001 / T, rtol=1e-5)
    t, w = sample(state, jax.random.key(0), 200_000, T)
    np.testing.assert_allclose(w, 1.0 / (T * p[np.asarray(t)]), rtol=1e-5)
    # E_p[1/(T p_t)] = 1, and the empirical frequencies follow p.
    np.testing.assert_allclose(float(jnp.mean(w)), 1.0, atol=0.01)
    np.testing.assert_allclose(np.bincount(np.asarray(t), minlength=T) / t.shape[0], p, atol=0.005)


def test_state_is_a_pytree_and_bad_arguments_raise():
    state = ts.init_loss_second_moment(8, history=4)
    leaves = jax.tree.leaves(state)
    assert [leaf.shape for leaf in leaves] == [(8, 4), (8,), (8,)]
    with pytest.raises(ValueError, match="init_loss_second_moment\\(10\\)"):
        ts.sample_timesteps(state, jax.random.key(0), 4, 10)
    with pytest.raises(ValueError, match="uniform_prob"):
        ts.init_loss_second_moment(8, uniform_prob=0.0)
    with pytest.raises(ValueError, match="shape"):
        ts.update_loss_second_moment(state, jnp.zeros(3, jnp.int32), jnp.zeros(4))
