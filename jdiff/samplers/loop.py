"""The public sampling entry point: any sampler of this package as one ``lax.scan`` over its steps.

Randomness is explicit and per example. Either ``keys``, one PRNG key per example (shape (B,)), from
which example b draws x_T ~ N(0, I) with ``fold_in(keys[b], 0)`` and the noise of respaced step i with
``fold_in(keys[b], N − i)`` (N = ``schedule.num_steps``; row j + 1 for the j-th step from the noisiest):
an image then depends only on its own key, whatever the batch it is in or the devices it runs on. Or
``noise``, an array (N + 1, *shape) laid out the same way (row 0 = x_T, row N − i = step i), as the
official code's draws. Deterministic samplers draw only x_T (which EDM's samplers scale to σ_max·z).

The network is called once per scan iteration (one call site, so it is compiled once), as
``model_fn(x, t)`` with x of the requested shape (NHWC for images) in the schedule's dtype and t the int32
vector (B,) of ORIGINAL timesteps ``schedule.timesteps[i]``; it may return float32 or bfloat16 — every
update is computed in the schedule's dtype (float32, or float64 under ``jax_enable_x64``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdiff import targets
from jdiff.samplers import ddim, ddpm, dpm_solver, edm, unipc
from jdiff.samplers.denoise import StepOutput, check_variance
from jdiff.samplers.eps_scaling import EpsScaling
from jdiff.samplers.multistep import History
from jdiff.schedules import Schedule

SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp", "unipc", "heun", "euler")
RECORDS = ("x", "x0", "eps")
DEFAULT_ORDERS = {"dpm_solver_pp": 2, "unipc": 3}
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def sample(model_fn: ModelFn, schedule: Schedule, shape_or_x: Sequence[int] | jax.Array, *,
           sampler: str = "ddpm", target: str = "eps", variance: str = "fixed_small",
           clip_denoised: bool = True, eta: float = 0.0, eps_scaling: EpsScaling | None = None,
           keys: jax.Array | None = None, noise: jax.Array | None = None, start_index: int | None = None,
           num_steps: int | None = None, order: int | None = None, record: Sequence[str] = ()
           ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Samples from ``model_fn`` with the chosen sampler; returns x₀ (and the trajectory if ``record``).

    Args:
      model_fn: ``(x, t) -> output``, t the (B,) int32 original timesteps; the output is ε, x₀ or v
        (``target``), with 2·C channels on the last axis when ``variance="learned_range"``.
      schedule: the respaced sampling schedule (:func:`jdiff.schedules.make_schedule`); for ``heun`` and
        ``euler``, the un-respaced one, whose σ's the EDM grid is rounded to.
      shape_or_x: the batch shape (B, ...) to start from x_T ~ N(0, I), or an x to start from at
        respaced index ``start_index`` (default: the noisiest), e.g. real images noised with q(x_i | x₀).
      sampler: ``ddpm`` (ancestral), ``ddim`` (any ``eta``), ``dpm_solver_pp`` (2M), ``unipc`` (order 3),
        ``heun`` or ``euler`` (EDM's, on ``num_steps`` noise levels; ``start_index`` counts its grid
        points the same way, i = n − 1 the noisiest).
      variance: ``fixed_small``, ``fixed_large`` or ``learned_range``; DDPM samples with it, the others
        only drop the learned-variance channels.
      clip_denoised: clip x̂₀ to [−1, 1] before each update (EDM's own sampler does not clip).
      eps_scaling: λ schedule of Epsilon Scaling (None: no scaling; ``EpsScaling.constant(1.0)`` gives
        the same bits for an ε-network, see :mod:`jdiff.samplers.denoise`).
      keys / noise: the randomness (see the module docstring); exactly one is needed unless the run is
        deterministic and starts from a given x.
      order: solver order for ``dpm_solver_pp`` (1 or 2, default 2) and ``unipc`` (1–3, default 3).
      record: any of ``"x"`` (x after each step, in the VP scaling of the network input; for UniPC the
        predicted point of the next evaluation), ``"x0"`` (the x̂₀ each step used, scaled and clipped) and
        ``"eps"`` (the network's ε̂, unscaled; for Heun at the step's first evaluation). Each comes back
        stacked over the steps run, (steps, *shape); nothing is kept when ``record`` is empty.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    targets.check_target(target)
    check_variance(variance)
    record = tuple(record)
    if any(name not in RECORDS for name in record):
        raise ValueError(f"record names must be among {RECORDS}, got {record}")
    eta = float(eta)  # static: η = 0 compiles a DDIM that draws no noise at all
    if sampler != "ddim" and eta != 0:
        raise ValueError(f"eta applies to sampler='ddim' only (got eta={eta} with sampler={sampler!r})")
    if not 0 <= eta <= 1:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    if order is not None and sampler not in DEFAULT_ORDERS:
        raise ValueError(f"order applies to {tuple(DEFAULT_ORDERS)} only, not sampler={sampler!r}")
    order = DEFAULT_ORDERS.get(sampler) if order is None else order
    edm_sampler = sampler in ("heun", "euler")
    if edm_sampler and num_steps is None:
        raise ValueError(f"sampler={sampler!r} runs on EDM's σ grid: pass num_steps (the number of noise "
                         "levels n; Heun evaluates the network 2n − 1 times) with the un-respaced schedule")
    if not edm_sampler and num_steps is not None:
        raise ValueError(f"num_steps applies to the EDM samplers ('heun', 'euler'); sampler={sampler!r} "
                         "takes its steps from the respaced schedule")
    steps = num_steps if edm_sampler else schedule.num_steps

    x = None if _is_shape(shape_or_x) else jnp.asarray(shape_or_x)
    shape = tuple(int(s) for s in shape_or_x) if x is None else x.shape
    if start_index is not None and x is None:
        raise ValueError("start_index needs the x to start from: pass it as shape_or_x")
    start = steps - 1 if start_index is None else int(start_index)
    if not 0 <= start < steps:
        raise ValueError(f"start_index must be in [0, {steps - 1}], got {start_index}")
    if eps_scaling is not None:
        eps_scaling.check(steps)

    stochastic = sampler == "ddpm" or (sampler == "ddim" and eta != 0)
    draw = _noise_source(keys, noise, shape, schedule.betas.dtype,
                         rows=steps + 1 if stochastic else 1, needed=stochastic or x is None)
    options = dict(target=target, variance=variance, clip_denoised=clip_denoised)
    if edm_sampler:
        return _sample_edm(model_fn, schedule, shape, x, draw, steps, start, sampler == "heun",
                           eps_scaling, record, options)
    return _sample_discrete(model_fn, schedule, shape, x, draw, stochastic, start, sampler, eta, order,
                            eps_scaling, record, options)


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(s, (int, np.integer)) for s in value)


def _noise_source(keys: jax.Array | None, noise: jax.Array | None, shape: tuple[int, ...], dtype: jnp.dtype,
                  rows: int, needed: bool) -> Callable[[jax.Array], jax.Array] | None:
    """``row -> noise`` of that row for the whole batch, from per-example keys or a noise bank."""
    if keys is not None and noise is not None:
        raise ValueError("pass either keys (one PRNG key per example) or noise (an explicit bank), not both")
    if keys is not None:
        if keys.shape[0] != shape[0]:
            raise ValueError(f"keys must hold one PRNG key per example: got {keys.shape[0]} keys for a batch "
                             f"of {shape[0]}")

        def from_keys(row):
            def one(key):
                return jax.random.normal(jax.random.fold_in(key, row), shape[1:], dtype)

            return jax.vmap(one)(keys)

        return from_keys
    if noise is not None:
        if noise.shape[1:] != shape or noise.shape[0] < rows:
            raise ValueError(f"noise must have shape ({rows}, *{shape}) (row 0 = x_T, row N − i = step i), "
                             f"got {noise.shape}")
        return lambda row: lax.dynamic_index_in_dim(noise, row, keepdims=False).astype(dtype)
    if needed:
        raise ValueError("this run draws noise: pass keys (one PRNG key per example) or noise "
                         "(an explicit (N + 1, *shape) bank)")
    return None


def _sample_discrete(model_fn, schedule, shape, x, draw, stochastic, start, sampler, eta, order, eps_scaling,
                     record, options):
    dtype = schedule.betas.dtype
    num_steps = schedule.num_steps
    x = draw(0) if x is None else x.astype(dtype)
    indices = jnp.arange(start, -1, -1, dtype=jnp.int32)
    lams = None if eps_scaling is None else eps_scaling.at(indices, num_steps, dtype)

    def advance(i, x, output, z, lam, state) -> tuple[StepOutput, Any]:
        if sampler == "ddpm":
            return ddpm.ddpm_step(schedule, i, x, output, z, eps_scale=lam, **options), state
        if sampler == "ddim":
            return ddim.ddim_step(schedule, i, x, output, z, eta=eta, eps_scale=lam, **options), state
        if sampler == "dpm_solver_pp":
            return dpm_solver.dpm_solver_pp_step(schedule, i, x, output, state, order=order, eps_scale=lam,
                                                 **options)
        return unipc.unipc_step(schedule, i, x, output, state, order=order, eps_scale=lam, **options)

    if sampler == "dpm_solver_pp":
        state = History.empty(1, x)
    elif sampler == "unipc":
        state = unipc.UniPCState.empty(order, x)
    else:
        state = None

    def body(carry, inputs):
        x, state = carry
        i, lam = inputs
        output = model_fn(x, jnp.full((shape[0],), schedule.timesteps[i], jnp.int32))
        z = draw(num_steps - i) if stochastic else None
        step, state = advance(i, x, output, z, lam, state)
        return (step.x, state), {name: getattr(step, name) for name in record}

    (x, _), trajectory = lax.scan(body, (x, state), (indices, lams))
    return (x, trajectory) if record else x


def _sample_edm(model_fn, schedule, shape, x, draw, num_steps, start, heun, eps_scaling, record, options):
    dtype = schedule.betas.dtype
    grid = edm.edm_grid(schedule, num_steps)
    sigmas = jnp.concatenate([schedule.sqrt_recipm1_alphas_cumprod[grid], jnp.zeros((1,), dtype)])
    alphas = jnp.concatenate([schedule.sqrt_alphas_cumprod[grid], jnp.ones((1,), dtype)])
    first = num_steps - 1 - start
    # Heun's two evaluations of a step are consecutive scan iterations, so that the network has a single
    # call site (compiled once) and the last step, which ends at σ = 0, costs one evaluation.
    plan = edm.evaluation_plan(num_steps, heun, first)
    # x lives in EDM's variable x_vp/α; from noise it starts as σ_0·z, EDM's latents·σ_max.
    x = draw(0) * sigmas[first] if x is None else x.astype(dtype) / alphas[first]
    lams = (None if eps_scaling is None else
            eps_scaling.at(num_steps - 1 - plan["step"], num_steps, dtype))
    inputs = dict(point=grid[plan["point"]], sigma=sigmas[plan["step"]],
                  sigma_next=sigmas[plan["step"] + 1], alpha_next=alphas[plan["step"] + 1],
                  correction=jnp.asarray(plan["correction"]), completes=jnp.asarray(plan["completes"]),
                  lam=lams)

    def body(carry, inp):
        x_base, d_base, x_eval = carry
        index = inp["point"]
        output = model_fn(schedule.sqrt_alphas_cumprod[index] * x_eval,
                          jnp.full((shape[0],), schedule.timesteps[index], jnp.int32))
        d, x0, eps = edm.edm_derivative(schedule, index, x_eval, output, eps_scale=inp["lam"], **options)
        euler = edm.edm_step(x_base, inp["sigma"], inp["sigma_next"], d)
        heun_x = edm.edm_step(x_base, inp["sigma"], inp["sigma_next"], d_base, d)
        x_step = jnp.where(inp["correction"], heun_x, euler)
        # A Heun step's first evaluation keeps x_k as the base and its d for the correction.
        carry = (jnp.where(inp["completes"], x_step, x_base), d, x_step)
        rows = dict(x=inp["alpha_next"] * x_step, x0=x0, eps=eps)
        return carry, {name: rows[name] for name in record}

    (x, _, _), rows = lax.scan(body, (x, jnp.zeros(shape, dtype), x), inputs)
    if not record:
        return x
    # One trajectory row per EDM step: x where the step completes, x̂₀ and ε̂ at its first evaluation.
    pick = dict(x=np.flatnonzero(plan["completes"]), x0=np.flatnonzero(~plan["correction"]),
                eps=np.flatnonzero(~plan["correction"]))
    return x, {name: rows[name][pick[name]] for name in record}
