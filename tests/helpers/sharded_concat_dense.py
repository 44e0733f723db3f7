"""Run with 4 CPU devices by tests/test_pallas_concat_dense.py: the concatenation-free product
(jdiff.models.pallas_concat_dense, Pallas interpreter) and the GroupNorm forward reading the same two parts
(jdiff.models.pallas_group_norm) under jax.jit over a batch split on the mesh, their parameters
replicated, against the unsharded calls (the product's default block_m is then each device's: 32 of its
2·16 positions, 128 unsharded); prints a JSON line with the differences, the outputs' shardings
and whether the compiled programs move data between devices."""

import json

import jax
import jax.numpy as jnp

from jdiff import sharding
from jdiff.models import pallas_concat_dense, pallas_group_norm
from sharded_checks import collectives, max_diff


def product(h, s, kernel, bias):
    return pallas_concat_dense.concat_dense((h, s), kernel, bias, interpret=True)


def norm(h, s, a, b):
    return pallas_group_norm.forward((h, s), a, b, silu=True, out_dtype=jnp.bfloat16, interpret=True)


assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh()
keys = jax.random.split(jax.random.key(0), 6)
h = (1.0 + jax.random.normal(keys[0], (8, 16, 64))).astype(jnp.bfloat16)
s = jax.random.normal(keys[1], (8, 16, 64)).astype(jnp.bfloat16)
kernel, bias = 0.1 * jax.random.normal(keys[2], (128, 32)), 0.1 * jax.random.normal(keys[3], (32,))
a, b = 1.0 + 0.1 * jax.random.normal(keys[4], (128,)), 0.1 * jax.random.normal(keys[5], (128,))
by_batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
split_product = jax.jit(product, in_shardings=(by_batch, by_batch, replicated, replicated),
                        out_shardings=by_batch)
split_norm = jax.jit(norm, in_shardings=(by_batch, by_batch, replicated, replicated))
y, normed = split_product(h, s, kernel, bias), split_norm(h, s, a, b)
print(json.dumps(dict(
    product_max_diff=max_diff(y, jax.jit(product)(h, s, kernel, bias)),
    product_output_axis=str(y.sharding.spec[0]),
    product_collectives=collectives(split_product.lower(h, s, kernel, bias).compile().as_text()),
    norm_max_diff=max_diff(normed, jax.jit(norm)(h, s, a, b)),
    norm_output_axis=str(normed[0].sharding.spec[0]),
    norm_collectives=collectives(split_norm.lower(h, s, a, b).compile().as_text()),
)))
