import jax, jax.numpy as jnp, mgpu_attn
qkv = jax.ShapeDtypeStruct((512, 256, 8, 3, 32), jnp.bfloat16); qb = jax.ShapeDtypeStruct((256,), jnp.bfloat16)
for kw in [dict(bias="kernel"), dict(bias="kernel", store="direct"), dict(bias="writeback", auto_barriers=True),
           dict(bias="kernel", pingpong=True), dict(bias="kernel", pingpong=True, store="direct"), dict(bias="none")]:
    try:
        jax.jit(lambda x, b: mgpu_attn.attention(x, b, sm_count=132, **kw)).trace(qkv, qb).lower(lowering_platforms=("cuda",))
        print("ok", kw)
    except Exception as e:
        print("FAIL", kw, repr(e)[:600])
