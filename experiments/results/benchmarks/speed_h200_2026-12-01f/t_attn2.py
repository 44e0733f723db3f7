import sys, time, itertools
import numpy as np, jax, jax.numpy as jnp
import mgpu_attn
from jax.experimental.pallas import mosaic_gpu as plgpu
B, L, H, D = 3, 256, 2, 32
qkv = jax.random.normal(jax.random.key(0), (B, L, H, 3, D), jnp.float32).astype(jnp.bfloat16)
qb = jax.random.normal(jax.random.key(1), (H * D,), jnp.float32).astype(jnp.bfloat16)
ref = mgpu_attn.reference(qkv, qb).astype(jnp.float32)
for kw in [dict(bias="kernel"), dict(bias="kernel", store="direct"), dict(bias="writeback", auto_barriers=True),
           dict(bias="kernel", pingpong=True), dict(bias="kernel", pingpong=True, store="direct")]:
    t = time.time()
    races = "--races" in sys.argv
    params = plgpu.InterpretGPUParams(detect_races=races)
    out = mgpu_attn.attention(qkv, qb, interpret=params, sm_count=2, **kw)
    extra = ""
    if races:
        from jax._src.pallas.mosaic_gpu.interpret import race_detection_state as r
        extra = f" races={r.races_found if hasattr(r, 'races_found') else '?'}"
    print(kw, float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))), float(jnp.max(jnp.abs(ref))), round(time.time() - t, 1), extra, flush=True)
q = qkv[:, :, :, 0] + qb.reshape(H, D)
out = mgpu_attn.attention(qkv.at[:, :, :, 0].set(q), qb, interpret=plgpu.InterpretGPUParams(), sm_count=2, bias="none")
print("none", float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))))
