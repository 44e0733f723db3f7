import sys, jax, jax.numpy as jnp
sys.argv += []
import mgpu_attn
for B, L in ((512, 256), (4, 256)):
    qkv = jax.ShapeDtypeStruct((B, L, 8, 3, 32), jnp.bfloat16)
    f = jax.jit(lambda x, b: mgpu_attn.attention(x, b, sm_count=132))
    try:
        txt = f.trace(qkv, jax.ShapeDtypeStruct((256,), jnp.bfloat16)).lower(lowering_platforms=("cuda",)).as_text()
        print("lowered", B, L, len(txt))
    except Exception as e:
        import traceback; traceback.print_exc()
