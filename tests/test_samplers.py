"""Samplers against the official ADM-ES arrays, identities between samplers and loops, and the order of
the ODE solvers on Gaussian data, whose probability-flow ODE has a closed-form solution."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import schedules
from jdiff.samplers import (EpsScaling, History, UniPCState, ddim_step, ddpm_step, dpm_solver_pp_step,
                            edm_grid, sample, unipc_step)

REFS = np.load(pathlib.Path(__file__).parent / "data" / "official_refs.npz")
CASES = json.loads(str(REFS["sample/cases_json"]))
SHAPE = (4, 8, 8, 3)


def toy_model(learned: bool):
    """The refs' network (tests/data/README.md) in NHWC: the roll is along the width, axis 2."""
    def model_fn(x, t):
        t = t.astype(x.dtype).reshape((-1, 1, 1, 1))
        eps = 0.9 * jnp.tanh(0.7 * x + 0.01 * t) + 0.05 * jnp.roll(x, 1, axis=2)
        if not learned:
            return eps
        return jnp.concatenate([eps, jnp.tanh(0.5 * x - 0.3 + 0.0006 * t)], axis=-1)
    return model_fn


def noise_bank(rows: int, dtype) -> jax.Array:
    return jnp.asarray(np.transpose(REFS["noise_bank"][:rows].astype(np.float64), (0, 1, 3, 4, 2)), dtype)


def case_options(case: dict) -> dict:
    es = {"none": None, "const": lambda: EpsScaling.constant(case["eps_scaler"]),
          "linear": lambda: EpsScaling.linear_mean(case["eps_scaler"], float(case["lin_mean"]))}[case["es"]]
    return dict(sampler=case["kind"], variance=case["var"], clip_denoised=case["clip"],
                eta=case["eta"] or 0.0, eps_scaling=es and es())


def run_case(case: dict, dtype) -> np.ndarray:
    schedule = schedules.make_schedule(case["schedule"], 1000, case["resp"], dtype)
    run = jax.jit(lambda bank: sample(toy_model(case["var"] == "learned_range"), schedule, SHAPE, noise=bank,
                                      record=("x",), **case_options(case)))
    x, trajectory = run(noise_bank(case["n"] + 1, dtype))
    n = case["n"]
    return np.stack([trajectory["x"][0], trajectory["x"][n // 2 - 1], x])


def official_xs(case: dict) -> np.ndarray:
    return np.transpose(REFS[case["key"] + "/xs"], (0, 1, 3, 4, 2))


def relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_official_samples_float64(case):
    with jax.enable_x64(True):
        got = run_case(case, jnp.float64)
    assert relative_error(got, official_xs(case)) < 1e-10


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_official_samples_float32(case):
    got = run_case(case, jnp.float32)
    assert got.dtype == np.float32
    assert relative_error(got, official_xs(case)) < 1e-4


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver_pp", "unipc"])
def test_scanned_loop_equals_a_python_loop_of_single_steps(sampler):
    with jax.enable_x64(True):
        schedule = schedules.make_schedule("cosine", 1000, "8", jnp.float64)
        bank = noise_bank(9, jnp.float64)
        model = toy_model(True)
        options = dict(variance="learned_range", eps_scale=1.01)
        step_fn = jax.jit({
            "ddpm": lambda i, x, out, z, s: (ddpm_step(schedule, i, x, out, z, **options), s),
            "ddim": lambda i, x, out, z, s: (ddim_step(schedule, i, x, out, z, eta=0.5, **options), s),
            "dpm_solver_pp": lambda i, x, out, z, s: dpm_solver_pp_step(schedule, i, x, out, s, **options),
            "unipc": lambda i, x, out, z, s: unipc_step(schedule, i, x, out, s, **options)}[sampler])
        x = bank[0]
        state = {"dpm_solver_pp": History.empty(1, x), "unipc": UniPCState.empty(3, x)}.get(sampler)
        for i in range(7, -1, -1):
            output = model(x, jnp.full((4,), schedule.timesteps[i], jnp.int32))
            step, state = step_fn(jnp.int32(i), x, output, bank[8 - i], state)
            x = step.x
        scanned = jax.jit(lambda bank: sample(
            model, schedule, SHAPE, sampler=sampler, variance="learned_range",
            eta=0.5 if sampler == "ddim" else 0.0, eps_scaling=EpsScaling.constant(1.01), noise=bank))(bank)
        np.testing.assert_allclose(scanned, x, rtol=0, atol=1e-12)


def test_ddim_eta0_is_deterministic_and_dpm_solver_order1_is_ddim():
    with jax.enable_x64(True):
        schedule = schedules.make_schedule("linear", 1000, "ddim20", jnp.float64)
        model = toy_model(False)

        @jax.jit
        def variants(x_start, bank, keys):
            ddim = functools.partial(sample, model, schedule, x_start, sampler="ddim")
            return (ddim(), ddim(noise=bank), ddim(noise=-bank), ddim(keys=keys),
                    sample(model, schedule, x_start, sampler="dpm_solver_pp", order=1))

        bank = noise_bank(21, jnp.float64)
        baseline, *same, dpm1 = variants(bank[0], bank, jax.random.split(jax.random.key(3), 4))
        for other in same:
            np.testing.assert_array_equal(other, baseline)
        np.testing.assert_allclose(dpm1, baseline, rtol=0, atol=1e-12)


def test_per_example_keys_make_images_independent_of_the_batch():
    """Each image depends on its own key only, not on its place in the batch or its neighbours."""
    schedule = schedules.make_schedule("cosine", 1000, "10", jnp.float32)
    keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.key(7), n))(jnp.arange(4))
    run = jax.jit(lambda k: sample(toy_model(True), schedule, SHAPE, keys=k, variance="learned_range"))
    whole, shuffled = run(keys), run(keys[jnp.array([2, 3, 1, 0])])
    np.testing.assert_array_equal(whole[2:], shuffled[:2])
    np.testing.assert_array_equal(whole[:2], shuffled[3:1:-1])
    assert not np.allclose(whole[0], whole[1])


def test_starting_mid_chain_continues_a_full_run():
    """The exposure-bias use: start from x at respaced index i with the same noise rows."""
    schedule = schedules.make_schedule("cosine", 1000, "10", jnp.float32)
    bank = noise_bank(11, jnp.float32)
    run = functools.partial(sample, toy_model(True), schedule, sampler="ddpm", variance="learned_range",
                            noise=bank, record=("x", "x0", "eps"))
    x, trajectory = run(SHAPE)
    assert {k: v.shape for k, v in trajectory.items()} == {k: (10,) + SHAPE for k in ("x", "x0", "eps")}
    # After 4 steps the chain is at respaced index 5.
    x_tail, tail = run(trajectory["x"][3], start_index=5)
    np.testing.assert_array_equal(x_tail, x)
    np.testing.assert_array_equal(tail["x0"], trajectory["x0"][4:])


def test_bfloat16_network_output():
    schedule = schedules.make_schedule("cosine", 1000, "10", jnp.float32)
    model = toy_model(True)

    def bf16_model(x, t):
        return model(x.astype(jnp.bfloat16), t).astype(jnp.bfloat16)

    @jax.jit
    def both(bank):
        run = functools.partial(sample, schedule=schedule, shape_or_x=SHAPE, sampler="unipc",
                                variance="learned_range", noise=bank, eps_scaling=EpsScaling.constant(1.01))
        return run(bf16_model), run(model)

    low, high = both(noise_bank(11, jnp.float32))
    assert low.dtype == jnp.float32 and np.all(np.isfinite(low))
    np.testing.assert_allclose(low, high, atol=0.1)


# Gaussian data x₀ ~ N(μ, diag s²) has the exact ε-prediction E[ε | x_t] = σ (x − αμ)/(α²s² + σ²), and its
# probability-flow ODE keeps z = (x − αμ)/√(α²s² + σ²) constant, which gives the exact solution.
MU = jnp.array([0.3, -0.5, 0.1, 0.7])
STD = jnp.array([0.5, 0.2, 0.8, 0.3])


def gaussian_oracle(full):
    def model_fn(x, t):
        alpha = full.sqrt_alphas_cumprod[t][:, None]
        sigma = full.sqrt_one_minus_alphas_cumprod[t][:, None]
        return sigma * (x - alpha * MU) / (alpha ** 2 * STD ** 2 + sigma ** 2)
    return model_fn


def exact_flow(x, schedule, start, end):
    def scale(i):
        alpha, sigma = schedule.sqrt_alphas_cumprod[i], schedule.sqrt_one_minus_alphas_cumprod[i]
        return alpha, jnp.sqrt(alpha ** 2 * STD ** 2 + sigma ** 2)
    (a0, s0), (a1, s1) = scale(start), scale(end)
    return a1 * MU + (x - a0 * MU) / s0 * s1


def convergence_orders(errors):
    errors = np.asarray(errors)
    return np.log2(errors[:-1] / errors[1:])


@pytest.mark.parametrize("sampler, min_order, max_error", [
    ("ddim", 0.95, 0.02), ("dpm_solver_pp", 1.6, 0.008), ("unipc", 2.3, 0.007)])
def test_ode_solvers_converge_with_their_order_on_gaussian_data(sampler, min_order, max_error):
    """x at the last grid point (i = 0) against the exact ODE solution from i = N − 1, on respacings of
    the same endpoints; the grid is time-uniform, with large λ steps near the data, so the order shows at
    fine resolutions only (UniPC's last steps are of lower order: about 2.7 rather than 3)."""
    with jax.enable_x64(True):
        model = gaussian_oracle(schedules.make_schedule("linear", 1000, None, jnp.float64))
        x_start = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
        errors = []
        for n in (80, 160):
            schedule = schedules.make_schedule("linear", 1000, str(n), jnp.float64)
            _, trajectory = jax.jit(lambda x: sample(model, schedule, x, sampler=sampler, clip_denoised=False,
                                                     record=("x",)))(x_start)
            errors.append(float(jnp.abs(trajectory["x"][-2] - exact_flow(x_start, schedule, n - 1, 0)).max()))
    assert convergence_orders(errors)[-1] > min_order, errors
    assert errors[-1] < max_error, errors


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2)])
def test_edm_samplers_converge_with_their_order_on_gaussian_data(sampler, order):
    with jax.enable_x64(True):
        full = schedules.make_schedule("linear", 1000, None, jnp.float64)
        model = gaussian_oracle(full)
        x_start = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
        errors = []
        for n in (12, 24):
            grid = edm_grid(full, n)
            _, trajectory = jax.jit(lambda x: sample(model, full, x, sampler=sampler, num_steps=n,
                                                     clip_denoised=False, record=("x",)))(x_start)
            exact = exact_flow(x_start, full, grid[0], grid[-1])
            errors.append(float(jnp.abs(trajectory["x"][-2] - exact).max()))
    assert np.all(convergence_orders(errors) > order - 0.1), errors


def edm_es_reference(model_fn, schedule, x_start, num_steps, heun, lam):
    """EDM-ES's ``edm_sampler`` (no churn) written out in NumPy on a VP ε-network: D(x; σ) = x − σ ε̂ with
    ε̂ at x/√(1 + σ²) and the timestep of σ; x_start is the VP x at the first noise level."""
    table = np.asarray(schedule.sqrt_recipm1_alphas_cumprod)
    grid = np.asarray(edm_grid(schedule, num_steps))
    sigmas = np.append(table[grid], 0.0)

    def denoiser(x, k):
        eps = np.asarray(model_fn(jnp.asarray(x / np.sqrt(1 + sigmas[k] ** 2)),
                                  jnp.full((x.shape[0],), schedule.timesteps[grid[k]], jnp.int32)))
        return x - sigmas[k] * eps

    x_next = np.asarray(x_start) * np.sqrt(1 + sigmas[0] ** 2)
    for k in range(num_steps):
        x_hat, t_hat, t_next = x_next, sigmas[k], sigmas[k + 1]
        pred_eps = (x_hat - denoiser(x_hat, k)) / t_hat / lam
        d_cur = (x_hat - (x_hat - pred_eps * t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if heun and k < num_steps - 1:
            pred_eps = (x_next - denoiser(x_next, k + 1)) / t_next / lam
            d_prime = (x_next - (x_next - pred_eps * t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_edm_samplers_match_the_edm_es_algorithm(sampler):
    with jax.enable_x64(True):
        full = schedules.make_schedule("cosine", 1000, None, jnp.float64)
        model = toy_model(False)
        x_start = noise_bank(1, jnp.float64)[0]
        got = jax.jit(lambda x: sample(model, full, x, sampler=sampler, num_steps=7, clip_denoised=False,
                                       eps_scaling=EpsScaling.constant(1.006)))(x_start)
        want = edm_es_reference(model, full, x_start, 7, sampler == "heun", 1.006)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_edm_grid_follows_the_rho_schedule_within_the_vp_range():
    full = schedules.make_schedule("linear", 1000, None, jnp.float32)
    sigma = np.asarray(full.sqrt_recipm1_alphas_cumprod)[np.asarray(edm_grid(full, 18))]
    # σ_max = min(80, σ_999 ≈ 157) and σ_min = max(0.002, σ_0 = 0.01), each rounded to the table.
    assert abs(sigma[0] - 80) / 80 < 0.01
    assert sigma[-1] == pytest.approx(float(full.sqrt_recipm1_alphas_cumprod[0]))
    ramp = (80 ** (1 / 7) + np.arange(18) / 17 * (sigma[-1] ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigma, ramp, rtol=0.05)
    with pytest.raises(ValueError, match="distinct steps"):
        edm_grid(schedules.make_schedule("linear", 1000, "30", jnp.float32), 18)


def test_invalid_options_raise_clear_errors():
    schedule = schedules.make_schedule("cosine", 1000, "10", jnp.float32)
    bank = noise_bank(11, jnp.float32)
    run = functools.partial(sample, toy_model(False), schedule, SHAPE, noise=bank)
    with pytest.raises(ValueError, match="ddpm.*ddim.*dpm_solver_pp.*unipc.*heun.*euler"):
        run(sampler="plms")
    with pytest.raises(ValueError, match="learned_range.*shape"):
        run(variance="learned_range")
    with pytest.raises(ValueError, match="learned-variance network"):
        sample(toy_model(True), schedule, SHAPE, noise=bank)
    with pytest.raises(ValueError, match="fixed_small.*fixed_large.*learned_range"):
        run(variance="learned")
    with pytest.raises(ValueError, match="eta applies"):
        run(sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="num_steps"):
        run(sampler="heun")
    with pytest.raises(ValueError, match="order"):
        run(sampler="ddim", order=2)
    with pytest.raises(ValueError, match="start_index"):
        run(start_index=3)
    with pytest.raises(ValueError, match="record"):
        run(record=("x_prev",))
    with pytest.raises(ValueError, match="pass keys"):
        sample(toy_model(False), schedule, SHAPE)
    with pytest.raises(ValueError, match="noise must have shape"):
        run(noise=bank[:10])
    with pytest.raises(ValueError, match="one PRNG key per example"):
        sample(toy_model(False), schedule, SHAPE, keys=jax.random.key(0)[None])


def test_split_weight_computation_hoists_the_weight_only_equations():
    """The weight-only equations (conversions, slices, a product of weights, a nested jit of weights) move
    to the weights; broadcasts, reversals, constants and everything that reads x stay in the body; the body
    computes fn's bits from the weights, also under jit."""
    from jdiff.samplers import split_weight_computation

    rng = np.random.default_rng(0)
    params = {name: jnp.asarray(rng.normal(size=shape), jnp.float32)
              for name, shape in (("w", (3, 4)), ("b", (4,)), ("g", (4,)), ("k", (3, 3)), ("unused", (2,)))}
    params["count"] = jnp.arange(4, dtype=jnp.int32)

    def fn(p, x):
        w = p["w"].astype(jnp.bfloat16)[:, :2]                            # convert, slice: hoisted
        h = x.astype(jnp.bfloat16) @ w + p["b"][:2].astype(jnp.bfloat16)  # the bias's broadcast: kept
        h = h.astype(jnp.float32) * p["g"][:2]
        h = h + jax.jit(lambda k: (k @ k.T).sum(0))(p["k"])[:2]           # a nested jit of weights
        h = h + jnp.flip(p["k"], 0)[0, :2] + jnp.ones(2) * 3.0            # rev: kept; constants: kept
        return h + p["count"][:2].astype(jnp.float32)

    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    weights, body = split_weight_computation(fn, params, jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert sorted((w.shape, str(w.dtype)) for w in weights) == sorted([
        ((3, 2), "bfloat16"), ((2,), "bfloat16"), ((2,), "float32"), ((2,), "float32"), ((3, 3), "float32"),
        ((2,), "float32")])  # w, b, g and count slices, k for the reversal, the nested jit's result
    body_eqns = jax.make_jaxpr(body)(weights, x).jaxpr.eqns
    body_primitives = [e.primitive.name for e in body_eqns]
    assert body_primitives.count("dot_general") == 1 and body_primitives.count("convert_element_type") == 2
    assert [e.params["name"] for e in body_eqns if "jaxpr" in e.params] == ["_flip"]  # jnp.flip: a jit of rev
    expected = np.asarray(jax.jit(fn)(params, x))
    np.testing.assert_array_equal(np.asarray(jax.jit(body)(weights, x)), expected)

    def in_jit(p, x):
        weights, body = split_weight_computation(fn, p, x)
        return body(weights, x)
    np.testing.assert_array_equal(np.asarray(jax.jit(in_jit)(params, x)), expected)
