"""The training loss against the official Debias code's arrays, closed forms and independent computations."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jdiff import losses, schedules, targets, timestep_sampling, weighting

REFS = np.load(pathlib.Path(__file__).parent / "data" / "official_refs.npz")


def toy_model(learned: bool):
    """tests/data/README.md's toy network, in NHWC (the width axis is 2)."""
    def model_fn(x, t):
        t = t.astype(x.dtype)[:, None, None, None]
        eps = 0.9 * jnp.tanh(0.7 * x + 0.01 * t) + 0.05 * jnp.roll(x, 1, axis=2)
        if not learned:
            return eps
        return jnp.concatenate([eps, jnp.tanh(0.5 * x - 0.3 + 0.0006 * t)], axis=-1)
    return model_fn


def ref_inputs(dtype):
    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1), dtype)  # noqa: E731
    return nhwc(REFS["loss/x_start"]), jnp.asarray(REFS["loss/t"], jnp.int32), nhwc(REFS["loss/noise"])


CASES = [  # (ref key, schedule, variance, terms); both cases: debias weighting, ε target
    ("loss/linear/debias/fixed/eps", "linear", "fixed_large", ("loss",)),
    ("loss/cosine/debias/learned/eps", "cosine", "learned_range", ("loss", "mse", "vb")),
]


def evaluate(case, dtype, official_snr):
    key, schedule_name, variance, names = case
    schedule = schedules.make_schedule(schedule_name, 1000, dtype=dtype)
    if official_snr:
        # The official code forms SNR as 1/(1 − ᾱ) − 1, which cancels catastrophically where ᾱ → 0
        # (relative error eps/SNR, 1e-8 at t = 999 on the cosine schedule); jdiff's ᾱ/(1 − ᾱ) does not.
        ac = REFS[f"sched/{schedule_name}/alphas_cumprod"]
        schedule = schedule.replace(snr=jnp.asarray(1.0 / (1.0 - ac) - 1.0, dtype))
    fn = jax.jit(functools.partial(losses.diffusion_loss, toy_model(variance == "learned_range"),
                                   target="eps", variance=variance, weighting="debias",
                                   rescale_learned_sigmas=True))
    loss, terms = fn(schedule, *ref_inputs(dtype))
    got = dict(terms, loss=loss)
    return {name: (np.asarray(got[name]), REFS[f"{key}/{name}"]) for name in names}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_official_losses_float64(case):
    with jax.enable_x64(True):
        for name, (got, ref) in evaluate(case, jnp.float64, official_snr=True).items():
            np.testing.assert_allclose(got, ref, rtol=1e-10, err_msg=name)
        # With jdiff's own SNR the weight differs from theirs only by their cancellation error.
        for name, (got, ref) in evaluate(case, jnp.float64, official_snr=False).items():
            snr = np.asarray(schedules.make_schedule(case[1], 1000, dtype=jnp.float64).snr)[REFS["loss/t"]]
            assert np.all(np.abs(got - ref) / ref <= 1e-10 + 4 * np.finfo(np.float64).eps / snr), name


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_official_losses_float32(case):
    for name, (got, ref) in evaluate(case, jnp.float32, official_snr=False).items():
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-4, err_msg=name)


def test_discretized_gaussian_log_likelihood_against_the_exact_normal_cdf():
    bins = np.linspace(-1.0, 1.0, 256)
    x = np.repeat(bins[:, None], 4, axis=1)
    means = np.array([-0.9, -0.2, 0.3, 1.05])[None, :] * np.ones_like(x)
    log_scales = np.log(np.array([0.004, 0.02, 0.1, 0.5]))[None, :] * np.ones_like(x)
    with jax.enable_x64(True):
        log_p = np.asarray(losses.discretized_gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(means),
                                                                      jnp.asarray(log_scales)))
    scale = np.exp(log_scales)
    upper = np.where(x > 0.999, 1.0, stats.norm.cdf((x + 1 / 255 - means) / scale))
    lower = np.where(x < -0.999, 0.0, stats.norm.cdf((x - 1 / 255 - means) / scale))
    # Each bin's mass is a difference of two approximate Φ values, each within 1.8e-4 of the exact one.
    np.testing.assert_allclose(np.exp(log_p), upper - lower, atol=3.6e-4, rtol=0)
    # The bins partition the real line, so the masses sum to 1 (up to the 1e-12 floor).
    np.testing.assert_allclose(np.exp(log_p).sum(axis=0), 1.0, atol=1e-9)
    assert np.max(np.abs(losses.approx_standard_normal_cdf(np.linspace(-8, 8, 2001))
                         - stats.norm.cdf(np.linspace(-8, 8, 2001)))) < 1.8e-4


def test_normal_kl_against_numerical_integration():
    grid = np.linspace(-12.0, 12.0, 400_001)
    with jax.enable_x64(True):
        for m1, v1, m2, v2 in [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 0.01, 0.9, 0.02)]:
            integrand = stats.norm.pdf(grid, m1, np.sqrt(v1)) * (stats.norm.logpdf(grid, m1, np.sqrt(v1))
                                                                 - stats.norm.logpdf(grid, m2, np.sqrt(v2)))
            expected = np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(grid))  # trapezoid rule
            got = float(losses.normal_kl(jnp.float64(m1), jnp.log(v1), jnp.float64(m2), jnp.log(v2)))
            np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-12)


def test_vb_trains_only_the_variance_and_mse_only_the_mean():
    schedule = schedules.make_schedule("cosine", 50)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(np.round(rng.uniform(-1, 1, (4, 4, 4, 2)) * 127.5) / 127.5, jnp.float32)
    noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    t = jnp.array([0, 1, 20, 49], jnp.int32)

    def terms(params):
        def model_fn(x, timesteps):
            return jnp.concatenate([params["mean"] * jnp.tanh(x), params["var"] * jnp.tanh(x + 0.1)], -1)
        loss, terms = losses.diffusion_loss(model_fn, schedule, x0, t, noise, variance="learned_range",
                                            weighting="debias")
        return dict(terms, loss=loss)

    params = dict(mean=jnp.float32(0.8), var=jnp.float32(0.3))
    grads = jax.jit(lambda p: {k: jax.grad(lambda q: jnp.sum(terms(q)[k]))(p)
                               for k in ("mse", "vb", "loss")})(params)
    assert float(grads["vb"]["mean"]) == 0.0 and float(grads["vb"]["var"]) != 0.0
    assert float(grads["mse"]["var"]) == 0.0 and float(grads["mse"]["mean"]) != 0.0
    np.testing.assert_allclose(grads["loss"]["mean"], grads["mse"]["mean"], rtol=1e-6)


def test_every_combination_runs_and_targets_agree_through_the_implied_eps():
    """One ε-predicting network re-expressed as an x₀- and a v-predicting one gives the same mse for every
    SNR-based weighting and the same vb (which depends only on x̂₀); ``constant`` is each target's own MSE."""
    with jax.enable_x64(True):
        schedule = schedules.make_schedule("linear", 100, dtype=jnp.float64)
        rng = np.random.default_rng(1)
        x0 = jnp.asarray(np.round(rng.uniform(-1, 1, (6, 4, 4, 1)) * 127.5) / 127.5)
        noise = jnp.asarray(rng.standard_normal(x0.shape))
        t = jnp.array([0, 1, 10, 50, 90, 99], jnp.int32)

        def network(target, learned):
            def model_fn(x, timesteps):  # no respacing: the original timestep is the index
                alpha = schedule.sqrt_alphas_cumprod[timesteps][:, None, None, None]
                sigma = schedule.sqrt_one_minus_alphas_cumprod[timesteps][:, None, None, None]
                eps_hat = jnp.tanh(0.8 * x + 0.1)
                x0_hat = targets.to_x0("eps", eps_hat, x, alpha, sigma)
                out = {"eps": eps_hat, "x0": x0_hat, "v": alpha * eps_hat - sigma * x0_hat}[target]
                return jnp.concatenate([out, jnp.tanh(x)], -1) if learned else out
            return model_fn

        @jax.jit
        def all_combinations(x0, t, noise):
            results = {}
            for variance in losses.VARIANCES:
                for name in weighting.WEIGHTINGS:
                    for target in targets.TARGETS:
                        model_fn = network(target, variance == "learned_range")
                        loss, terms = losses.diffusion_loss(
                            model_fn, schedule, x0, t, noise, target=target, variance=variance,
                            weighting=name, weighting_kwargs=dict(p2_gamma=0.5))
                        results[variance, name, target] = dict(terms, loss=loss)
            return results

        results = all_combinations(x0, t, noise)
    for (variance, name, target), terms in results.items():
        for value in terms.values():
            assert value.shape == (6,) and bool(jnp.all(jnp.isfinite(value)))
        assert ("vb" in terms) == (variance == "learned_range")
        reference = results[variance, name, "eps"]
        if name != "constant":
            np.testing.assert_allclose(terms["mse"], reference["mse"], rtol=1e-9)
        if variance == "learned_range":
            np.testing.assert_allclose(terms["vb"], reference["vb"], rtol=1e-9)
    # A fixed variance does not enter the loss.
    np.testing.assert_array_equal(results["fixed_small", "debias", "v"]["loss"],
                                  results["fixed_large", "debias", "v"]["loss"])


def test_the_network_receives_original_timesteps_and_vb_is_rescaled_by_T_over_1000():
    schedule = schedules.make_schedule("linear", 1000, respacing="10")
    x0 = jnp.zeros((3, 2, 2, 1))
    t = jnp.array([0, 4, 9], jnp.int32)

    def model_fn(x, timesteps):
        return jnp.zeros_like(x) + timesteps.astype(x.dtype)[:, None, None, None]

    _, terms = jax.jit(losses.diffusion_loss, static_argnums=0)(model_fn, schedule, x0, t, x0)
    np.testing.assert_array_equal(terms["mse"], np.asarray(schedule.timesteps[t], np.float32) ** 2)

    @jax.jit
    def vb(schedule):
        learned = lambda x, timesteps: jnp.zeros(x.shape[:-1] + (2,))  # noqa: E731
        return [losses.diffusion_loss(learned, schedule, x0 + 0.5, t, x0 + 0.1, variance="learned_range",
                                      rescale_learned_sigmas=rescale)[1]["vb"] for rescale in (True, False)]
    rescaled, plain = vb(schedule)
    np.testing.assert_allclose(rescaled, plain * 10 / 1000, rtol=1e-6)


def test_training_loss_draws_t_and_noise_from_the_key():
    schedule = schedules.make_schedule("cosine", 20)
    x0 = jnp.zeros((8, 2, 2, 1))
    run = jax.jit(lambda key, state: losses.training_loss(toy_model(False), schedule, x0, key,
                                                          sampler_state=state, weighting="p2"))
    objective, metrics = run(jax.random.key(0), None)
    again, _ = run(jax.random.key(0), None)
    np.testing.assert_array_equal(objective, again)
    np.testing.assert_array_equal(metrics["importance"], np.ones(8))
    np.testing.assert_array_equal(objective, metrics["mse"])
    t_uniform, _ = jax.jit(timestep_sampling.sample_timesteps, static_argnums=(0, 2, 3))(
        None, jax.random.split(jax.random.key(0))[0], 8, 20)
    np.testing.assert_array_equal(metrics["t"], t_uniform)

    state = timestep_sampling.init_loss_second_moment(20, history=1)
    state = jax.jit(timestep_sampling.update_loss_second_moment)(state, jnp.arange(20), jnp.arange(1.0, 21.0))
    objective, metrics = run(jax.random.key(0), state)
    np.testing.assert_allclose(objective, metrics["importance"] * metrics["loss"], rtol=1e-6)
    assert not np.allclose(metrics["importance"], 1.0)


@pytest.mark.parametrize("kwargs, output_channels, match", [
    (dict(variance="learned"), 1, "choose one of"),
    (dict(target="score"), 1, "choose one of"),
    (dict(weighting="min_snr", weighting_kwargs=dict(gamma=5.0)), 1, "valid keys"),
    (dict(variance="learned_range"), 1, "expected"),
    (dict(variance="fixed_small"), 2, "expected"),
])
def test_bad_settings_raise(kwargs, output_channels, match):
    schedule = schedules.make_schedule("cosine", 10)
    x0 = jnp.zeros((2, 2, 2, 1))
    model_fn = lambda x, timesteps: jnp.zeros(x.shape[:-1] + (output_channels,))  # noqa: E731
    with pytest.raises(ValueError, match=match):
        losses.diffusion_loss(model_fn, schedule, x0, jnp.zeros(2, jnp.int32), x0, **kwargs)
