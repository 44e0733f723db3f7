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


def from_qkv(qkv, q_bias):
    return pallas_attention.attention_from_qkv(qkv, q_bias, heads=2, new_order=False, interpret=True)


def gradients_of(fn):
    def gradients(*args):
        def loss(*args):
            return jnp.sum(jnp.sin(fn(*args).astype(jnp.float32)))
        return jax.grad(loss, argnums=tuple(range(len(args))))(*args)
    return gradients


assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh()
q, k, v = (jax.random.normal(key, (8, 16, 2, 16)).astype(jnp.bfloat16)
           for key in jax.random.split(jax.random.key(0), 3))
qkv = jax.random.normal(jax.random.key(1), (8, 16, 3 * 32)).astype(jnp.bfloat16)
q_bias = jax.random.normal(jax.random.key(2), (32,)).astype(jnp.bfloat16)
split, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
result = {}
for name, fn, args, shardings in (("forward", attention, (q, k, v), (split,) * 3),
                                  ("gradients", gradients_of(attention), (q, k, v), (split,) * 3),
                                  ("fused_forward", from_qkv, (qkv, q_bias), (split, replicated)),
                                  ("fused_gradients", gradients_of(from_qkv), (qkv, q_bias),
                                   (split, replicated))):
    sharded = [jax.device_put(a, s) for a, s in zip(args, shardings)]
    compiled = jax.jit(fn).lower(*sharded).compile()
    got = compiled(*sharded)
    result[f"{name}_collectives"] = collectives(compiled.as_text())
    want = jax.jit(fn)(*args)
    if name == "fused_gradients":  # b_q's gradient is a sum over the images: all-reduced in bf16 when split
        for leaf, g, w in zip(("qkv", "bias"), got, want):
            result[f"{leaf}_gradient_relative_diff"] = max_diff(g, w) / max_diff(w, 0 * w)
    result[f"{name}_max_diff"] = max_diff(got, want)
    result[f"{name}_relative_diff"] = max_diff(got, want) / max_diff(want, jax.tree.map(jnp.zeros_like, want))
    result[f"{name}_output_axis"] = jax.tree.leaves(got)[0].sharding.spec[0]
print(json.dumps(result))
