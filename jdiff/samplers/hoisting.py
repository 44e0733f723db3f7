"""A network's weight-only computation, done once before a sampling loop instead of at every step.

A sampler calls the network at every step of a ``lax.scan``, with the same weights. Part of what the network
computes depends on the weights alone: the conversions of float32 master weights to a bfloat16 compute
dtype, the slices of a fused q|k|v kernel and bias, the 4×4 kernel of an upsampling transposed convolution,
a bias shifted by a product of weights. XLA does not move such loop-invariant work out of the loop body, so
it runs at every step, and where it sits between a product and its bias it also keeps XLA from fusing the
bias into the product (a bias sliced and converted inside the loop is added by a pass of its own over the
product's output). :func:`split_weight_computation` cuts the network's jaxpr in two: the equations whose
inputs are all weights (or constants) and at least one weight, evaluated once, and the rest, evaluated at
every step from their results.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.extend.core import Literal, Var, jaxprs_in_params

# Weight-only operations left in the loop body:
# - broadcast_in_dim: a broadcast costs nothing where XLA fuses it into its consumer, and hoisted it would
#   be a materialised (and possibly activation-sized) array read at every step;
# - rev: XLA runs a convolution of a dilated input as cuDNN's backward-data kernel only when its kernel is
#   an explicit spatial reversal in the same computation (layers.upsample_conv); a pre-reversed kernel
#   makes it write out the dilated input instead.
KEPT_IN_BODY = frozenset({"broadcast_in_dim", "rev"})


def _keeps_in_body(eqn: Any) -> bool:
    """Whether ``eqn`` is, or contains in a nested jaxpr (``jnp.flip`` is a jit of ``rev``), an operation of
    :data:`KEPT_IN_BODY`."""
    return eqn.primitive.name in KEPT_IN_BODY or any(
        _keeps_in_body(inner) for jaxpr in jaxprs_in_params(eqn.params) for inner in jaxpr.eqns)


def _evaluate(eqns: Sequence[Any], env: dict) -> None:
    """Evaluates ``eqns`` in order, reading their inputs from ``env`` and writing their outputs to it, each
    under its equation's name scope (so that profiles and HLO keep the network's layer names)."""
    for eqn in eqns:
        values = [v.val if isinstance(v, Literal) else env[v] for v in eqn.invars]
        name = str(eqn.source_info.name_stack)
        with jax.named_scope(name) if name else contextlib.nullcontext(), eqn.ctx.manager:
            out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
        for var, value in zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]):
            env[var] = value


def split_weight_computation(fn: Callable[..., Any], params: Any,
                             *args: Any) -> tuple[list[jax.Array], Callable[..., Any]]:
    """``(weights, body)`` with ``body(weights, *args) == fn(params, *args)``, where ``weights`` holds the
    values of ``fn``'s weight-only computation that the rest of ``fn`` reads (including leaves of ``params``
    that it reads as they are) and ``body`` computes the rest.

    ``args`` are ``fn``'s other arguments (arrays or ``jax.ShapeDtypeStruct``: only their shapes and dtypes
    matter). Computing ``weights`` once and calling ``body`` at every step of a loop moves the weight-only
    work out of the loop; both evaluate the same operations on the same values, so the results are the same
    bits. Only ``fn``'s top-level equations are split: a nested function (a custom derivative, an inner
    jit) is hoisted whole when all its inputs are weights, else it stays whole in ``body``. Equations with
    effects, and those of (or containing) :data:`KEPT_IN_BODY`, stay in ``body``; so does anything
    computed from constants alone."""
    leaves, tree = jax.tree.flatten(params)
    closed, out_shapes = jax.make_jaxpr(lambda ls, *rest: fn(jax.tree.unflatten(tree, ls), *rest),
                                        return_shape=True)(leaves, *args)
    jaxpr = closed.jaxpr
    weight_inputs = jaxpr.invars[:len(leaves)]
    constants = set(jaxpr.constvars)
    from_weights = set(weight_inputs)  # values computed from weights (and constants) only
    hoisted, kept = [], []
    for eqn in jaxpr.eqns:
        inputs = [v for v in eqn.invars if isinstance(v, Var)]
        if (not eqn.effects and not _keeps_in_body(eqn)
                and all(v in from_weights or v in constants for v in inputs)
                and any(v in from_weights for v in inputs)):
            hoisted.append(eqn)
            from_weights.update(eqn.outvars)
        else:
            kept.append(eqn)
    read_later = [v for eqn in kept for v in eqn.invars] + list(jaxpr.outvars)
    boundary = list(dict.fromkeys(v for v in read_later if isinstance(v, Var) and v in from_weights))

    def weight_values(leaves: list[jax.Array]) -> list[jax.Array]:
        env = dict(zip(jaxpr.constvars, closed.consts)) | dict(zip(weight_inputs, leaves))
        _evaluate(hoisted, env)
        return [env[v] for v in boundary]

    def body(weights: Sequence[jax.Array], *rest: Any) -> Any:
        env = (dict(zip(jaxpr.constvars, closed.consts)) | dict(zip(boundary, weights))
               | dict(zip(jaxpr.invars[len(leaves):], jax.tree.leaves(rest))))
        _evaluate(kept, env)
        outs = [v.val if isinstance(v, Literal) else env[v] for v in jaxpr.outvars]
        return jax.tree.unflatten(jax.tree.structure(out_shapes), outs)

    return weight_values(leaves), body


def model_fn_with_hoisted_weights(apply: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any,
                                  shape: Sequence[int], dtype: Any) -> Callable[[jax.Array, jax.Array], Any]:
    """``model_fn(x, t) = apply(params, x, t)`` for :func:`jdiff.samplers.sample`, with the weight-only part
    of ``apply`` (:func:`split_weight_computation`) computed here, once, rather than at every step; x has
    ``shape`` (B, ...) and ``dtype`` (the schedule's), t is (B,) int32, as the samplers call it."""
    weights, body = split_weight_computation(apply, params, jax.ShapeDtypeStruct(tuple(shape), dtype),
                                             jax.ShapeDtypeStruct((shape[0],), jnp.int32))
    return lambda x, t: body(weights, x, t)
