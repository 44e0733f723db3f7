import sys, time
import numpy as np, jax, jax.numpy as jnp
import mgpu_attn
from jax.experimental.pallas import mosaic_gpu as plgpu
B, L, H, D = int(sys.argv[1]) if len(sys.argv) > 1 else 3, 256, 2, 32
qkv = jax.random.normal(jax.random.key(0), (B, L, H, 3, D), jnp.float32).astype(jnp.bfloat16)
t = time.time()
from jdiff.models.mosaic_group_norm import interpret_params
params = interpret_params(detect_races=True) if "--races" in sys.argv else interpret_params()
qb = jax.random.normal(jax.random.key(1), (H * D,), jnp.float32).astype(jnp.bfloat16)
out = mgpu_attn.attention(qkv, qb, interpret=params, sm_count=2)
ref = mgpu_attn.reference(qkv, qb)
print(out.shape, float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32)))), time.time() - t)
