"""Batch-split SPMD rules for jdiff's Pallas kernels.

A Pallas call is a custom call, opaque to XLA's SPMD partitioner: over a batch sharded on a mesh the
partitioner would gather the batch onto every device and repeat the whole computation there.
:func:`partitioned_per_image` gives such a call a rule under which every device runs it on its own images,
without collectives, for kernels whose outputs for an image depend only on that image's inputs.
"""

from __future__ import annotations

from typing import Any, Callable

from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P


def split_along_batch(sharding: Any, ndim: int) -> NamedSharding:
    """A sharding that splits an operand's first (batch) axis as ``sharding`` splits the first operand's,
    and keeps the other axes whole."""
    if not isinstance(sharding, NamedSharding):
        raise ValueError(f"jdiff's Pallas kernels can only be partitioned over a named mesh; the input is "
                         f"sharded as {sharding}: use jax.sharding.NamedSharding, or set "
                         f"model.norm_implementation and model.attention_implementation to 'xla'")
    spec = tuple(sharding.spec)
    return NamedSharding(sharding.mesh, P(spec[0] if spec else None, *([None] * (ndim - 1))))


def partitioned_per_image(call: Callable[..., Any], sharding_rule: str) -> Callable[..., Any]:
    """``call(*arrays, settings)`` with an SPMD rule: over a batch (the first operand's first axis) split on
    a mesh, every device calls it on its own images; operands whose first factor is not ``b`` (shared by
    the images) are replicated. ``sharding_rule`` is Shardy's (JAX's default partitioner), with ``b`` the
    batch factor; every other factor is kept whole. The inference from the first operand's sharding serves
    GSPMD."""
    operand_rules, result_rules = (side.split(",") for side in sharding_rule.split("->"))
    arity = len(operand_rules)
    factors = sharding_rule.replace("->", " ").replace(",", " ").split()
    whole = tuple(f for f in dict.fromkeys(factors) if f != "b")  # in the rule's order, as Shardy needs

    def batch_split(x_sharding, shapes, rules):  # a tuple of shapes, or one (a call with a single output)
        if not isinstance(shapes, (tuple, list)):
            return batch_split(x_sharding, (shapes,), rules)[0]
        return tuple(split_along_batch(x_sharding, len(s.shape)) if rule.split()[0] == "b"
                     else NamedSharding(x_sharding.mesh, P()) for s, rule in zip(shapes, rules))

    def partition(settings, mesh, arg_shapes, result_shape):
        x = arg_shapes[0].sharding
        return (mesh, lambda *operands: call(*operands, settings), batch_split(x, result_shape, result_rules),
                batch_split(x, arg_shapes, operand_rules))

    def infer_sharding(settings, mesh, arg_shapes, result_shape):
        return batch_split(arg_shapes[0].sharding, result_shape, result_rules)

    partitioned = custom_partitioning(call, static_argnums=(arity,))
    partitioned.def_partition(partition, infer_sharding_from_operands=infer_sharding,
                              sharding_rule=sharding_rule, need_replication_factors=whole)
    return partitioned
