"""Probe (twenty-first session, last call): is jax's own Hopper matmul in Pallas's Mosaic GPU backend
(jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu, jax 0.11) as fast as XLA's product at the UNet's 1×1
product shapes, so that concat_dense (and the attention residual) could be built on it instead of Pallas
Triton's jnp.dot? µs per call (median of 5 windows of 20 calls, each call reading its own input),
batch 512, bf16: a (B·N, K) × (K, F) product, with and without a residual c (B·N, F) added in its epilogue,
against XLA's a @ w (+ c)."""
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, "experiments")
import benchmark  # noqa: E402
from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm  # noqa: E402

CALLS = 20
SHAPES = [(512 * 256, 256, 256), (512 * 1024, 256, 128)]  # 16×16 attention output; 32×32 decoder skip


def timed(results, out, name, f, inputs, reference=None, **extra):
    row = dict(name=name, **extra)
    try:
        g = jax.jit(lambda xs, *rest: [f(x, *rest) for x in xs])
        ys = jax.block_until_ready(g(*inputs))
        windows = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(g(*inputs))
            windows.append((time.perf_counter() - t0) / CALLS * 1e6)
        row.update(us=statistics.median(windows))
        if reference is not None:
            diff = ys[0].astype(jnp.float32) - reference.astype(jnp.float32)
            row.update(max_diff=float(jnp.abs(diff).max()))
        first = ys[0]
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        row["error"] = repr(e)[:300]
        first = None
    results["rows"].append(row)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    json.dump(results, open(out, "w"), indent=2)
    return first


def main(out):
    results = dict(environment=benchmark.environment(), calls=CALLS, rows=[])
    for m, k, n in SHAPES:
        keys = jax.random.split(jax.random.key(m + n), 3)
        xs = [jax.random.normal(jax.random.fold_in(keys[0], i), (m, k), jnp.bfloat16) for i in range(CALLS)]
        w = (jax.random.normal(keys[1], (k, n)) / np.sqrt(k)).astype(jnp.bfloat16)
        c = jax.random.normal(keys[2], (m, n), jnp.bfloat16)
        shape = dict(m=m, k=k, n=n)
        plain = timed(results, out, "xla a @ w", lambda x, w: x @ w, (xs, w), **shape)
        summed = timed(results, out, "xla a @ w + c", lambda x, w, c: x @ w + c, (xs, w, c), **shape)
        for tile_n, wg in ((64, hm.MatmulDimension.N), (128, hm.MatmulDimension.N),
                           (128, hm.MatmulDimension.M)):
            config = hm.TuningConfig(tile_m=128, tile_n=tile_n, tile_k=64, max_concurrent_steps=4,
                                     wg_dimension=wg)
            setting = dict(tile_m=128, tile_n=tile_n, steps=4, wg=wg.name)
            timed(results, out, "mosaic a @ w", lambda x, w: hm.matmul(x, w, None, config), (xs, w), plain,
                  **shape, **setting)
            timed(results, out, "mosaic a @ w + c", lambda x, w, c: hm.matmul(x, w, c, config), (xs, w, c),
                  summed, **shape, **setting)


if __name__ == "__main__":
    main(sys.argv[1])
