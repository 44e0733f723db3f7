"""Probe: the fused output head with each image's tiles of products split between 1–16 programs (each takes
the whole image's statistics), batch 512, 32×32, C = 128, F = 6; µs per call (median of 5 windows of 50
back-to-back calls) and the largest difference from the unfused head (the Triton GroupNorm writing float32,
the taps' product, XLA's shifted sum)."""
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
from jdiff.models import pallas_output_head as ph  # noqa: E402
from jdiff.models.group_norm import EPS, NUM_GROUPS, normalise_affine  # noqa: E402
from jdiff.models.layers import conv3x3_by_taps  # noqa: E402

out = sys.argv[1]
B, H, W, C, F = 512, 32, 32, 128, 6
k = jax.random.split(jax.random.key(0), 5)
args = ((jax.random.normal(k[0], (B, H, W, C)) * 1.5 + 0.3).astype(jnp.bfloat16),
        1 + 0.1 * jax.random.normal(k[1], (C,)), 0.1 * jax.random.normal(k[2], (C,)),
        0.03 * jax.random.normal(k[3], (3, 3, C, F)), 0.1 * jax.random.normal(k[4], (F,)))
results = dict(environment=benchmark.environment(), rows=[])


def unfused(x, g, b, w, c):
    y = normalise_affine(x.reshape(B, H * W, C), g, b, NUM_GROUPS, EPS, True, False, jnp.float32, "pallas")
    return conv3x3_by_taps(y.reshape(x.shape), w) + c


def timed(name, fn, calls=50, repeats=5):
    f = jax.jit(fn)
    y = jax.block_until_ready(f(*args))
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            r = f(*args)
        jax.block_until_ready(r)
        windows.append((time.perf_counter() - t0) / calls * 1e6)
    row = dict(name=name, us=statistics.median(windows), spread=(max(windows) - min(windows)) / min(windows))
    results["rows"].append(row)
    return np.asarray(y)


reference = timed("unfused", unfused)
for bn, splits, warps in ((64, 1, 4), (64, 2, 4), (64, 4, 4), (64, 8, 4), (64, 16, 4), (128, 4, 8), (32, 8, 4)):
    y = timed(f"fused block_n={bn} splits={splits} warps={warps}",
              lambda *a: ph.output_head(*a, block_n=bn, splits=splits, num_warps=warps))
    results["rows"][-1]["max_vs_unfused"] = float(np.abs(y - reference).max())
    print(results["rows"][-1], flush=True)
    json.dump(results, open(out, "w"), indent=2)
print(results["rows"][0])
