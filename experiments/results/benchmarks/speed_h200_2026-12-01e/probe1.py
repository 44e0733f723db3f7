"""Time the Mosaic GPU GroupNorm probe against jdiff's Triton kernel, batch 512, bf16, scale-shift + SiLU."""
import json, os, sys, time, traceback
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
import mgpu_gn
from jdiff.models import pallas_group_norm

OUT = os.environ.get("OUT", "/tmp")
B = 512
REPS = 20
NAME = "probe1.json"
results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "rows": []}


def timed(fn, x):
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, REPS, lambda i, v: fn(v), x))
    loop(x).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter(); loop(x).block_until_ready(); times.append((time.perf_counter() - t) / REPS)
    return float(np.median(times)) * 1e6


def record(**row):
    results["rows"].append(row); print(row, flush=True)
    json.dump(results, open(os.path.join(OUT, NAME), "w"), indent=1)


def main():
    shapes = [(1024, 128), (1024, 256), (1024, 384), (256, 256), (256, 512), (256, 384), (64, 256)]
    variants = {128: [(32, c) for c in (1, 2, 4, 8)] + [(64, c) for c in (1, 2, 4, 8)],
                256: [(32, c) for c in (2, 4, 8)] + [(64, c) for c in (1, 2, 4, 8)],
                384: [(24, c) for c in (2, 4)] + [(48, c) for c in (1, 2, 4, 8)] + [(96, c) for c in (2, 4)],
                512: [(32, c) for c in (2, 4)] + [(64, c) for c in (1, 2, 4)] + [(128, c) for c in (1, 2)]}
    key = jax.random.split(jax.random.key(0), 3)
    for n, c in shapes:
        x = (jax.random.normal(key[0], (B, n, c)) * 2 + 3).astype(jnp.bfloat16)
        a = 1 + 0.1 * jax.random.normal(key[1], (B, c)); b = 0.1 * jax.random.normal(key[2], (B, c))
        ref = mgpu_gn.reference(x, a, b).astype(jnp.float32)
        triton = lambda v: pallas_group_norm.forward(v, a, b, silu=True, out_dtype=jnp.bfloat16)[0]
        y = triton(x)
        record(n=n, c=c, impl="triton", us=timed(triton, x),
               err=float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref))))
        for cpp, chunks in variants[c]:
            if n * cpp * 2 > 200 * 1024 or n % (chunks * 64):
                continue
            try:
                fn = lambda v: mgpu_gn.forward(v, a, b, cpp=cpp, chunks=chunks)[0]
                y, mean, rstd = mgpu_gn.forward(x, a, b, cpp=cpp, chunks=chunks)
                err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)))
                record(n=n, c=c, impl="mgpu", cpp=cpp, chunks=chunks, us=timed(fn, x), err=err)
            except Exception as e:
                record(n=n, c=c, impl="mgpu", cpp=cpp, chunks=chunks, error=traceback.format_exc()[-1500:])


if __name__ == "__main__":
    main()
