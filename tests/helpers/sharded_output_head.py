"""Run with 4 CPU devices by tests/test_pallas_output_head.py: the fused output head (Pallas interpreter)
under jax.jit over a batch split on the mesh, its parameters replicated (the (C, 9F) taps matrix is the
first operand of rank 2 that jdiff's per-image rule replicates), against the unsharded call; prints a JSON
line with the difference, the output's sharding and whether the compiled program moves data between
devices."""

import json

import jax
import jax.numpy as jnp

from jdiff import sharding
from jdiff.models import pallas_output_head
from sharded_checks import collectives, max_diff


def head(x, gamma, beta, kernel, bias):
    return pallas_output_head.output_head(x, gamma, beta, kernel, bias, block_n=16, interpret=True)


assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh()
keys = jax.random.split(jax.random.key(0), 5)
x = (1.0 + jax.random.normal(keys[0], (8, 8, 8, 64))).astype(jnp.bfloat16)
params = (1.0 + 0.1 * jax.random.normal(keys[1], (64,)), 0.1 * jax.random.normal(keys[2], (64,)),
          0.05 * jax.random.normal(keys[3], (3, 3, 64, 6)), 0.1 * jax.random.normal(keys[4], (6,)))
reference = jax.jit(head)(x, *params)
by_batch = sharding.batch_sharding(mesh)
split = jax.jit(head, in_shardings=(by_batch,) + (sharding.replicated(mesh),) * 4, out_shardings=by_batch)
out = split(x, *params)
print(json.dumps(dict(
    max_diff=max_diff(out, reference),
    output_axis=str(out.sharding.spec[0]),
    collectives=collectives(split.lower(x, *params).compile().as_text()),
)))
