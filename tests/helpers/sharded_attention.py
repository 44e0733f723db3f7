"""Run with 4 CPU devices by tests/test_pallas_attention.py: the short-sequence attention kernel (Pallas
interpreter) under jax.jit over a batch split on the mesh, and its gradients, against the unsharded calls;
prints a JSON line with the differences and whether the compiled programs move data between devices."""

import json

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jdiff import sharding
from jdiff.models import pallas_attention
from sharded_checks import collectives, max_diff


def attention(q, k, v):
    return pallas_attention.attention(q, k, v, interpret=True)


def gradients(q, k, v):
    def loss(*args):
        return jnp.sum(jnp.sin(attention(*args).astype(jnp.float32)))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh()
q, k, v = (jax.random.normal(key, (8, 16, 2, 16)).astype(jnp.bfloat16)
           for key in jax.random.split(jax.random.key(0), 3))
split = NamedSharding(mesh, P("data"))
sharded = [jax.device_put(a, split) for a in (q, k, v)]
result = {}
for name, fn in (("forward", attention), ("gradients", gradients)):
    compiled = jax.jit(fn).lower(*sharded).compile()
    got = compiled(*sharded)
    result[f"{name}_collectives"] = collectives(compiled.as_text())
    result[f"{name}_max_diff"] = max_diff(got, jax.jit(fn)(q, k, v))
    result[f"{name}_output_axis"] = jax.tree.leaves(got)[0].sharding.spec[0]
print(json.dumps(result))
