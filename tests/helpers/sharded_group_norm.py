"""Run with 4 CPU devices by tests/test_pallas_group_norm.py: the GroupNorm kernel (Pallas interpreter) under
jax.jit over a batch split on the mesh, inside a lax.scan as in the sampler, against the unsharded call;
prints a JSON line with the differences and whether the compiled program moves data between devices."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jdiff import sharding
from jdiff.models.pallas_group_norm import normalise_affine_pallas


def steps(x, a, b):
    def body(h, _):
        return normalise_affine_pallas(h, a, b, silu=True, out_dtype=h.dtype, interpret=True), None
    return jax.lax.scan(body, x, None, length=2)[0]


assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh()
keys = jax.random.split(jax.random.key(0), 3)
x = (3.0 + jax.random.normal(keys[0], (8, 64, 96))).astype(jnp.bfloat16)   # C = 96: groups of 3 channels
a = 1.0 + 0.1 * jax.random.normal(keys[1], (8, 96))
b = 0.1 * jax.random.normal(keys[2], (8, 96))
reference = np.asarray(jax.jit(steps)(x, a, b), np.float32)

by_batch = sharding.batch_sharding(mesh)
split = jax.jit(steps, in_shardings=(by_batch, by_batch, by_batch), out_shardings=by_batch)
out = split(x, a, b)
hlo = split.lower(x, a, b).compile().as_text()
# x split along its channels: the rule must gather them (a group's statistics need all its channels)
by_channel = jax.jit(steps, in_shardings=(NamedSharding(mesh, P(None, None, "data")), None, None))
print(json.dumps(dict(
    batch_split_max_diff=float(np.max(np.abs(np.asarray(out, np.float32) - reference))),
    batch_split_output_axis=str(out.sharding.spec[0]),
    batch_split_collectives=[op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")
                             if op in hlo],
    channel_split_max_diff=float(np.max(np.abs(np.asarray(by_channel(x, a, b), np.float32) - reference))),
)))
