import time, jax, jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu
try:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
except ImportError:
    InterpretGPUParams = plgpu.InterpretGPUParams
import mgpu_gn, mgpu_gn3
k = jax.random.split(jax.random.key(0), 3)
for (B, N, C, cpp, cr, ctas, ring_bytes) in [(3, 256, 128, 64, 64, 2, 5 * 64 * 64 * 2), (2, 256, 256, 32, 128, 3, 4 * 128 * 64),
                                             (2, 64, 384, 48, 64, 4, 2 * 64 * 96)]:
    x = (jax.random.normal(k[0], (B, N, C)) * 2 + 3).astype(jnp.bfloat16)
    a = 1 + 0.1 * jax.random.normal(k[1], (B, C)); b = 0.1 * jax.random.normal(k[2], (B, C))
    t = time.time()
    y, mean, rstd = mgpu_gn3.forward(x, a, b, cpp=cpp, chunk_rows=cr, ctas=ctas, ring_bytes=ring_bytes,
                                     interpret=InterpretGPUParams(detect_races=True))
    ref = mgpu_gn.reference(x, a, b)
    xf = x.astype(jnp.float32).reshape(B, N, 32, C // 32)
    m = jnp.repeat(xf.mean(axis=(1, 3)), C // 32, 1)
    print(B, N, C, cpp, float(jnp.max(jnp.abs(y.astype(float) - ref.astype(float)))), float(jnp.abs(mean - m).max()), time.time() - t)
