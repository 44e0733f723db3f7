"""Twenty-second session: is the Mosaic GPU concat_dense slow to compile or stuck at the decoder's 16×16 shape
(batch 512, 256 + 256 → 256)? Prints the seconds to compile one call, to run it, and to run 20 chained
calls, and its largest difference from XLA's product (float32)."""
import sys
import time

import jax
import jax.numpy as jnp

from jdiff.models import pallas_concat_dense as pcd

n, ch, f = (int(a) for a in sys.argv[1:4])
k = jax.random.split(jax.random.key(0), 4)
h = jax.random.normal(k[0], (512, n, ch), jnp.bfloat16)
s = jax.random.normal(k[1], (512, n, ch), jnp.bfloat16)
w = (jax.random.normal(k[2], (2 * ch, f)) / (2 * ch) ** 0.5).astype(jnp.bfloat16)
c = jax.random.normal(k[3], (f,))
t = time.perf_counter()
one = jax.jit(lambda h, s, w, c: pcd.concat_dense((h, s), w, c, implementation="mosaic"))
compiled = one.lower(h, s, w, c).compile()
print(f"compile {time.perf_counter() - t:.1f} s", flush=True)
t = time.perf_counter()
y = jax.block_until_ready(compiled(h, s, w, c))
print(f"first run {time.perf_counter() - t:.3f} s", flush=True)
reference = jnp.concatenate([h, s], -1).astype(jnp.float32) @ w.astype(jnp.float32) + c
print(f"max diff {float(jnp.abs(y.astype(jnp.float32) - reference).max()):.4f}", flush=True)
for name, impl in (("mosaic", "mosaic"), ("triton", "triton")):
    def chain(h, s, w, c, impl=impl):
        for _ in range(20):
            h = pcd.concat_dense((h, s), w, c, implementation=impl)
        return h
    t = time.perf_counter()
    chained = jax.jit(chain).lower(h, s, w, c).compile()
    print(f"{name} chain compile {time.perf_counter() - t:.1f} s", flush=True)
    jax.block_until_ready(chained(h, s, w, c))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(chained(h, s, w, c))
        times.append((time.perf_counter() - t) / 20 * 1e6)
    print(f"{name} {n} {ch}+{ch}->{f}: {sorted(times)[2]:.1f} us per call", flush=True)
