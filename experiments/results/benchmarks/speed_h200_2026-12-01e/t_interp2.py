import time, jax, jax.numpy as jnp, numpy as np
import mgpu_gn, mgpu_gn2
from jax.experimental.pallas import mosaic_gpu as plgpu
k = jax.random.split(jax.random.key(0), 3)
for (B, N, C, cpp, chunks) in [(2, 256, 128, 64, 2), (2, 256, 512, 64, 4), (1, 128, 128, 32, 1)]:
    x = (jax.random.normal(k[0], (B, N, C)) * 2 + 3).astype(jnp.bfloat16)
    a = 1 + 0.1 * jax.random.normal(k[1], (B, C)); b = 0.1 * jax.random.normal(k[2], (B, C))
    t = time.time()
    y, mean, rstd = mgpu_gn2.forward(x, a, b, cpp=cpp, wgs=chunks, interpret=plgpu.InterpretGPUParams())
    ref = mgpu_gn.reference(x, a, b)
    print(B, N, C, cpp, chunks, float(jnp.max(jnp.abs(y.astype(float) - ref.astype(float)))), time.time() - t)
