"""Loss weightings against the official Debias code's tables, closed forms and the target equivalence."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import schedules, targets, weighting

REFS = np.load(pathlib.Path(__file__).parent / "data" / "official_refs.npz")


def official_snr(schedule_name: str) -> np.ndarray:
    """SNR as the official code forms it, 1/(1 − ᾱ) − 1, from the official ᾱ."""
    return 1.0 / (1.0 - REFS[f"sched/{schedule_name}/alphas_cumprod"]) - 1.0


def make_snr(schedule_name: str) -> jax.Array:
    return schedules.make_schedule(schedule_name, 1000, dtype=jnp.float64).snr


@pytest.mark.parametrize("ref_key, schedule_name, name, kwargs", [
    ("weights/linear/debias", "linear", "debias", {}),
    ("weights/cosine/debias", "cosine", "debias", {}),
    ("weights/linear/p2_g1_k1", "linear", "p2", dict(p2_k=1.0, p2_gamma=1.0)),
    ("weights/linear/minsnr5", "linear", "min_snr", dict(min_snr_gamma=5.0)),
])
def test_official_weight_tables(ref_key, schedule_name, name, kwargs):
    ref = REFS[ref_key]
    with jax.enable_x64(True):
        # Fed the official SNR, the weight is the official table.
        w = np.asarray(weighting.loss_weight(name, jnp.asarray(official_snr(schedule_name)), "eps", **kwargs))
        np.testing.assert_allclose(w, ref, rtol=1e-12, atol=0)
        # From jdiff's SNR = ᾱ/(1 − ᾱ) it differs only by the official form's cancellation at small SNR:
        # 1/(1 − ᾱ) − 1 has an absolute rounding error of about one ulp of 1, i.e. a relative one of eps/SNR.
        snr = make_snr(schedule_name)
        w = np.asarray(weighting.loss_weight(name, snr, "eps", **kwargs))
        bound = 1e-12 + 4 * np.finfo(np.float64).eps / np.asarray(snr)
        assert np.all(np.abs(w - ref) / ref <= bound)


SNRS = np.array([1e-8, 0.01, 0.5, 1.0, 4.99, 5.0, 5.01, 30.0, 1e4])


def closed_form(name: str, snr: np.ndarray, target: str, k=1.0, g=1.0, gamma=5.0) -> np.ndarray:
    forms = {
        ("constant", "eps"): np.ones_like(snr), ("constant", "x0"): np.ones_like(snr),
        ("constant", "v"): np.ones_like(snr),
        ("debias", "eps"): 1 / np.sqrt(snr), ("debias", "x0"): np.sqrt(snr),
        ("debias", "v"): np.sqrt(snr) / (1 + snr),
        ("p2", "eps"): 1 / (k + snr) ** g, ("p2", "x0"): snr / (k + snr) ** g,
        ("p2", "v"): snr / ((1 + snr) * (k + snr) ** g),
        ("min_snr", "eps"): np.minimum(snr, gamma) / snr, ("min_snr", "x0"): np.minimum(snr, gamma),
        ("min_snr", "v"): np.minimum(snr, gamma) / (snr + 1),
        ("snr", "eps"): 1 / snr, ("snr", "x0"): np.ones_like(snr), ("snr", "v"): 1 / (1 + snr),
    }
    return forms[name, target]


@pytest.mark.parametrize("name", weighting.WEIGHTINGS)
@pytest.mark.parametrize("target", targets.TARGETS)
def test_closed_forms(name, target):
    with jax.enable_x64(True):
        w = weighting.loss_weight(name, jnp.asarray(SNRS), target, p2_k=0.7, p2_gamma=0.5, min_snr_gamma=3.0)
        np.testing.assert_allclose(w, closed_form(name, SNRS, target, k=0.7, g=0.5, gamma=3.0), rtol=1e-14)


@pytest.mark.parametrize("name", weighting.WEIGHTINGS[1:])
def test_same_objective_of_the_implied_eps_error_for_every_target(name):
    """w_ε‖ε̂ − ε‖² = w_x0‖x̂₀ − x₀‖² = w_v‖v̂ − v‖² for one prediction expressed in the three targets."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        snr = make_snr("cosine")[jnp.array([0, 3, 200, 500, 900, 999])]
        alpha = jnp.sqrt(snr / (1 + snr))[:, None]
        sigma = jnp.sqrt(1 / (1 + snr))[:, None]
        x0, eps, eps_hat = (jnp.asarray(rng.standard_normal((6, 5))) for _ in range(3))
        x_t = alpha * x0 + sigma * eps
        x0_hat = targets.to_x0("eps", eps_hat, x_t, alpha, sigma)
        predictions = dict(eps=eps_hat, x0=x0_hat, v=alpha * eps_hat - sigma * x0_hat)
        objectives = {}
        for target, prediction in predictions.items():
            true = targets.training_target(target, x0, eps, alpha, sigma)
            squared_error = jnp.sum((prediction - true) ** 2, axis=-1)
            objectives[target] = weighting.loss_weight(name, snr, target) * squared_error
        np.testing.assert_allclose(objectives["x0"], objectives["eps"], rtol=1e-9)
        np.testing.assert_allclose(objectives["v"], objectives["eps"], rtol=1e-9)


def test_max_weight_clamps_the_returned_weight():
    snr = jnp.asarray(SNRS, jnp.float32)
    w = weighting.loss_weight("debias", snr, "eps", max_weight=10.0)
    np.testing.assert_allclose(w, np.minimum(1 / np.sqrt(SNRS), 10.0), rtol=1e-6)
    assert w.dtype == jnp.float32
    w = weighting.loss_weight("debias", snr, "x0", max_weight=10.0)
    np.testing.assert_allclose(w, np.minimum(np.sqrt(SNRS), 10.0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="truncated_snr"), "choose one of"),
    (dict(name="p2", p2_k=-1.0), "p2_k"),
    (dict(name="p2", p2_gamma=-0.5), "p2_gamma"),
    (dict(name="min_snr", min_snr_gamma=0.0), "min_snr_gamma"),
    (dict(name="debias", max_weight=0.0), "max_weight"),
    (dict(name="debias", target="score"), "choose one of"),
])
def test_bad_arguments_raise(kwargs, match):
    kwargs = dict(dict(snr=jnp.ones(2), target="eps"), **kwargs)
    with pytest.raises(ValueError, match=match):
        weighting.loss_weight(**kwargs)
