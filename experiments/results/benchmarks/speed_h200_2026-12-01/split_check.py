import jax, jax.numpy as jnp
from jdiff.models import pallas_group_norm as pg
from jdiff.models.group_norm import dropout_seeds
for shape in [(512, 1024, 128), (512, 1024, 384), (128, 1024, 256)]:
    x = (1 + 2 * jax.random.normal(jax.random.key(0), shape)).astype(jnp.bfloat16)
    a = 1 + 0.1 * jax.random.normal(jax.random.key(1), (shape[0], shape[2]))
    b = 0.1 * jax.random.normal(jax.random.key(2), a.shape)
    s = dropout_seeds(jax.random.key(3), shape[0], shape[2])
    for kw in ({}, dict(dropout=0.3, seeds=s)):
        y, m, r = jax.jit(lambda x: pg.forward(x, a, b, silu=True, out_dtype=jnp.float32, **kw))(x)
        y1, m1, r1 = jax.jit(lambda x: pg.forward(x, a, b, silu=True, out_dtype=jnp.float32, block_n=16, **kw))(x)
        print(shape, bool(kw), "max|dy|", float(jnp.max(jnp.abs(y - y1))), "max|dmean|", float(jnp.max(jnp.abs(m - m1))),
              "max rstd rel", float(jnp.max(jnp.abs(r / r1 - 1))), flush=True)
