"""Run with 4 CPU devices by tests/test_pallas_group_norm.py: the GroupNorm kernels (Pallas interpreter) under
jax.jit over a batch split on the mesh — the forward inside a lax.scan as in the sampler, and the forward
and backward (with dropout) under jax.grad as in a train step, with a, b per image (B, C) and shared (C,),
and the forward with an input shift (C,), and in the grouped tile layout (C = 128) —
against the unsharded calls; prints a JSON line with the
differences and whether the compiled programs move data between devices."""

import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jdiff import sharding
from jdiff.models import pallas_group_norm
from jdiff.models.group_norm import EPS, NUM_GROUPS, dropout_seeds, normalise_affine
from sharded_checks import collectives, max_diff


def steps(x, a, b, shift=None):
    def body(h, _):
        return pallas_group_norm.forward(h, a, b, silu=True, out_dtype=h.dtype, interpret=True,
                                         shift=shift)[0], None
    return jax.lax.scan(body, x, None, length=2)[0]


def gradients(x, a, b):
    """(dx, da, db) of a loss of the kernels' output with dropout (seeded kernels, as in training); only the
    batch-summed da, db need a collective."""
    seeds = dropout_seeds(jax.random.key(5), x.shape[0], x.shape[2])

    def loss(x, a, b):
        y = normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, "pallas_interpret", 0.3,
                             seeds)
        return jnp.sum(jnp.sin(y))
    dx, da, db = jax.grad(loss, argnums=(0, 1, 2))(x, a, b)
    return dx, *(g.sum(0) if g.ndim == 2 else g for g in (da, db))  # shared (C,) a, b: summed already


assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh()
keys = jax.random.split(jax.random.key(0), 3)
x = (3.0 + jax.random.normal(keys[0], (8, 64, 96))).astype(jnp.bfloat16)   # C = 96: groups of 3 channels
a = 1.0 + 0.1 * jax.random.normal(keys[1], (8, 96))
b = 0.1 * jax.random.normal(keys[2], (8, 96))
reference = jax.jit(steps)(x, a, b)
reference_grads = jax.jit(gradients)(x, a, b)

by_batch = sharding.batch_sharding(mesh)
split = jax.jit(steps, in_shardings=(by_batch, by_batch, by_batch), out_shardings=by_batch)
out = split(x, a, b)
split_grads = jax.jit(gradients, in_shardings=(by_batch, by_batch, by_batch))
grads = split_grads(x, a, b)
# x split along its channels: the rule must gather them (a group's statistics need all its channels)
by_channel = jax.jit(steps, in_shardings=(NamedSharding(mesh, P(None, None, "data")), None, None))
# a and b shared by the images, (C,), replicated
shared = jax.jit(steps, in_shardings=(by_batch, None, None), out_shardings=by_batch)
shared_grads = jax.jit(gradients, in_shardings=(by_batch, None, None))
# an input shift c (C,), replicated
shifted = jax.jit(steps, in_shardings=(by_batch, by_batch, by_batch, None), out_shardings=by_batch)
c = 0.5 * jax.random.normal(keys[2], (96,))
# groups of 4 channels: 'auto' takes the grouped tile layout
x4, a4, b4 = (jnp.tile(v, 4 // 3 + 1)[..., :128] for v in (x, a, b))
grouped = jax.jit(steps, in_shardings=(by_batch, by_batch, by_batch), out_shardings=by_batch)
print(json.dumps(dict(
    grouped_max_diff=max_diff(grouped(x4, a4, b4), jax.jit(steps)(x4, a4, b4)),
    grouped_collectives=collectives(grouped.lower(x4, a4, b4).compile().as_text()),
    shifted_max_diff=max_diff(shifted(x, a, b, c), jax.jit(steps)(x, a, b, c)),
    shifted_collectives=collectives(shifted.lower(x, a, b, c).compile().as_text()),
    shared_max_diff=max_diff(shared(x, a[0], b[0]), jax.jit(steps)(x, a[0], b[0])),
    shared_collectives=collectives(shared.lower(x, a[0], b[0]).compile().as_text()),
    shared_gradients_max_diff=max_diff(shared_grads(x, a[0], b[0]), jax.jit(gradients)(x, a[0], b[0])),
    shared_gradients_collectives=collectives(shared_grads.lower(x, a[0], b[0]).compile().as_text()),
    batch_split_max_diff=max_diff(out, reference),
    batch_split_output_axis=str(out.sharding.spec[0]),
    batch_split_collectives=collectives(split.lower(x, a, b).compile().as_text()),
    channel_split_max_diff=max_diff(by_channel(x, a, b), reference),
    gradients_max_diff=max_diff(grads, reference_grads),
    gradients_dx_axis=str(grads[0].sharding.spec[0]),
    gradients_collectives=collectives(split_grads.lower(x, a, b).compile().as_text()),
)))
