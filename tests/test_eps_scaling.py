"""Epsilon Scaling: the λ schedules against the official code's, and where and how every sampler applies λ."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import schedules, targets
from jdiff.samplers import SAMPLERS, EpsScaling, sample

REFS = np.load(pathlib.Path(__file__).parent / "data" / "official_refs.npz")
SHAPE = (2, 4, 4, 3)


def network(learned: bool = False):
    """A small non-elementwise ε-network (plus learned-range variance channels when ``learned``)."""
    def model_fn(x, t):
        t = t.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        eps = 0.8 * jnp.tanh(0.6 * x - 0.002 * t) + 0.1 * jnp.flip(x, axis=1)
        return jnp.concatenate([eps, jnp.tanh(x + 0.001 * t)], -1) if learned else eps
    return model_fn


def gaussian(shape, dtype) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype)


def run_options(sampler: str) -> dict:
    if sampler in ("heun", "euler"):
        return dict(schedule=schedules.make_schedule("cosine", 1000, None, jnp.float64), num_steps=5)
    return dict(schedule=schedules.make_schedule("cosine", 1000, "6", jnp.float64),
                eta=0.5 if sampler == "ddim" else 0.0)


def test_linear_schedules_match_the_official_code():
    case = next(c for c in json.loads(str(REFS["sample/cases_json"])) if c["es"] == "linear")
    official = REFS[case["key"] + "/lambda"]
    with jax.enable_x64(True):
        n, k = case["n"], case["eps_scaler"]
        mean_form = EpsScaling.linear_mean(k, float(case["lin_mean"])).values(n, jnp.float64)
        paper_form = EpsScaling.linear(k, case["lambda_first"]).values(n, jnp.float64)
        constant = EpsScaling.constant(1.017).values(4, jnp.float64)
    np.testing.assert_allclose(mean_form, official, rtol=1e-15)
    np.testing.assert_allclose(paper_form, official, rtol=1e-15)
    assert mean_form[0] == pytest.approx(case["lambda_first"], rel=1e-15)
    assert mean_form[-1] == pytest.approx(case["lambda_last"], rel=1e-15)
    assert np.mean(np.asarray(mean_form)) == pytest.approx(float(case["lin_mean"]), rel=1e-15)
    np.testing.assert_array_equal(constant, np.full(4, 1.017))
    np.testing.assert_array_equal(EpsScaling.linear(0.0, 1.0).values(4), np.ones(4))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_lambda_one_is_unscaled_and_lambda_acts_only_through_eps(sampler):
    """λ = 1 gives the unscaled sampler's numbers (to float64 rounding: with the elemental emitters of the
    suite's XLA flags on jaxlib 0.10, UniPC's two graphs contract their multiply-adds differently, 2e-15
    apart; bit for bit with XLA's default emitters); a constant λ equals the unscaled sampler on a network
    whose ε̂ (and nothing else: not the learned variance channels) is divided by λ."""
    lam = 1.02
    with jax.enable_x64(True):
        model = network(learned=True)
        channels = SHAPE[-1]

        def eps_over_lambda(x, t):
            out = model(x, t)
            return jnp.concatenate([out[..., :channels] / lam, out[..., channels:]], -1)

        options = dict(run_options(sampler), sampler=sampler, variance="learned_range",
                       clip_denoised=sampler not in ("heun", "euler"))

        @jax.jit
        def variants(bank):
            def run(fn, es):
                return sample(fn, shape_or_x=SHAPE, noise=bank, eps_scaling=es, **options)

            return (run(model, None), run(model, EpsScaling.constant(1.0)),
                    run(model, EpsScaling.constant(lam)), run(eps_over_lambda, None))

        bank = gaussian((7,) + SHAPE, jnp.float64)
        unscaled, one, scaled, divided = variants(bank)
    np.testing.assert_allclose(one, unscaled, rtol=0, atol=1e-13)
    assert not np.allclose(scaled, unscaled)
    np.testing.assert_allclose(scaled, divided, rtol=1e-12, atol=1e-12)


def test_lambda_is_indexed_by_the_respaced_step_and_scales_x0_at_every_step():
    """x̂₀ = clip(√(1/ᾱ_i) x − √(1/ᾱ_i − 1) ε̂/λ_i) with λ_i = k·i + b, i the respaced index (the official
    _predict_xstart_from_eps), checked at every step of a DDPM run, the last (i = 0) included."""
    k, b = 0.01, 1.004
    with jax.enable_x64(True):
        schedule = schedules.make_schedule("linear", 1000, "5,3", jnp.float64)
        n = schedule.num_steps
        bank = gaussian((n + 1,) + SHAPE, jnp.float64)
        x, trajectory = jax.jit(lambda bank: sample(network(), schedule, SHAPE, noise=bank,
                                                    eps_scaling=EpsScaling.linear(k, b),
                                                    record=("x", "x0", "eps")))(bank)
        inputs = np.concatenate([bank[:1], trajectory["x"][:-1]])
        i = np.arange(n - 1, -1, -1).reshape(-1, 1, 1, 1, 1)
        recip, recipm1 = (np.asarray(schedule.sqrt_recip_alphas_cumprod)[i],
                          np.asarray(schedule.sqrt_recipm1_alphas_cumprod)[i])
        want = np.clip(recip * inputs - recipm1 * trajectory["eps"] / (k * i + b), -1, 1)
    np.testing.assert_allclose(trajectory["x0"], want, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(x, trajectory["x"][-1])


@pytest.mark.parametrize("target", ["x0", "v"])
def test_x0_and_v_networks_are_scaled_through_their_implied_eps(target):
    with jax.enable_x64(True):
        full = schedules.make_schedule("linear", 1000, None, jnp.float64)
        eps_net = network()

        def converted(x, t):
            alpha = full.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
            sigma = full.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
            eps = eps_net(x, t)
            x0 = targets.to_x0("eps", eps, x, alpha, sigma)
            return targets.training_target(target, x0, eps, alpha, sigma)

        schedule = schedules.make_schedule("linear", 1000, "8", jnp.float64)
        bank = gaussian((9,) + SHAPE, jnp.float64)

        @jax.jit
        def variants(bank):
            def run(fn, tgt, es):
                return sample(fn, schedule, SHAPE, sampler="ddpm", target=tgt, noise=bank, eps_scaling=es)

            scaling = EpsScaling.linear(0.003, 1.01)
            return (run(eps_net, "eps", scaling), run(converted, target, scaling),
                    run(converted, target, None), run(converted, target, EpsScaling.constant(1.0)))

        want, got, unscaled, one = variants(bank)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # Exactly zero correction at λ = 1; only XLA's FMA contraction of the two graphs may differ.
    np.testing.assert_allclose(one, unscaled, rtol=1e-15, atol=1e-15)


def test_eps_scaling_is_a_jit_argument_and_is_validated():
    schedule = schedules.make_schedule("cosine", 1000, "4", jnp.float32)
    bank = gaussian((5,) + SHAPE, jnp.float32)
    traces = []

    @jax.jit
    def run(eps_scaling):
        traces.append(1)
        return sample(network(), schedule, SHAPE, sampler="ddim", noise=bank, eps_scaling=eps_scaling)

    a, b = run(EpsScaling.constant(1.0)), run(EpsScaling.constant(1.03))
    assert len(traces) == 1 and not np.allclose(a, b)
    with pytest.raises(ValueError, match="positive"):
        EpsScaling.constant(0.0)
    with pytest.raises(ValueError, match="positive"):
        EpsScaling.linear_mean(0.001, -1.0)
    with pytest.raises(ValueError, match="λ_i > 0"):
        sample(network(), schedule, SHAPE, noise=bank, eps_scaling=EpsScaling.linear(-0.5, 1.0))
