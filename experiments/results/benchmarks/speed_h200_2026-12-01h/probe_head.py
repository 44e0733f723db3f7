"""Probe: the UNet's output head at batch 512 (32×32, C = 128, F = 6), unfused (the Triton GroupNorm writing
float32, the taps' product, XLA's shifted sum) against pallas_output_head (settings swept), its kernel alone
and its tap sum alone; µs per call (median of 5 windows of 50 back-to-back calls) and the differences."""
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
x = (jax.random.normal(k[0], (B, H, W, C)) * 1.5 + 0.3).astype(jnp.bfloat16)
g = 1 + 0.1 * jax.random.normal(k[1], (C,))
b = 0.1 * jax.random.normal(k[2], (C,))
w = 0.03 * jax.random.normal(k[3], (3, 3, C, F))
c = 0.1 * jax.random.normal(k[4], (F,))
results = dict(environment=benchmark.environment(), rows=[])


def unfused(x, g, b, w, c):
    y = normalise_affine(x.reshape(B, H * W, C), g, b, NUM_GROUPS, EPS, True, False, jnp.float32, "pallas")
    return conv3x3_by_taps(y.reshape(x.shape), w) + c


def exact(x, g, b, w, c):  # float32 products without TF32
    y = normalise_affine(x.reshape(B, H * W, C), g, b, NUM_GROUPS, EPS, True, False, jnp.float32, "xla")
    with jax.default_matmul_precision("highest"):
        return conv3x3_by_taps(y.reshape(x.shape), w) + c


def timed(name, fn, *args, calls=50, repeats=5):
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
    print(row, flush=True)
    json.dump(results, open(out, "w"), indent=2)
    return y


reference = np.asarray(timed("unfused (UNet before)", unfused, x, g, b, w, c))
exact_y = np.asarray(jax.jit(exact)(x, g, b, w, c))
d = np.abs(reference - exact_y)
results["unfused_vs_highest"] = dict(max=float(d.max()), mean=float(d.mean()), scale=float(np.abs(exact_y).max()))
for sb, bn, nw in ((16, 64, 4), (32, 64, 4), (64, 64, 4), (8, 64, 4), (16, 64, 8), (16, 128, 4), (16, 128, 8),
                   (16, 32, 4)):
    y = np.asarray(timed(f"fused stats_block_n={sb} block_n={bn} warps={nw}",
                         lambda *a: ph.output_head(*a, block_n=bn, stats_block_n=sb, num_warps=nw), x, g, b, w, c))
    d, e = np.abs(y - reference), np.abs(y - exact_y)
    results["rows"][-1].update(max_vs_unfused=float(d.max()), mean_vs_unfused=float(d.mean()),
                               max_vs_highest=float(e.max()), mean_vs_highest=float(e.mean()))
    print(results["rows"][-1], flush=True)
    json.dump(results, open(out, "w"), indent=2)

settings = ph._Settings(9 * F, 64, 16, EPS, 4, False)
wt = jnp.pad(ph.taps_kernel(w), ((0, 0), (0, 64 - 9 * F)))
taps = timed("kernel alone (16, 64, 4)", lambda x, g, b, wt: ph._per_image(x.reshape(B, H * W, C), g, b, wt, settings),
             x, g, b, wt)
timed("shifted tap sum alone", lambda t, c: ph.shifted_tap_sum(t, H, W) + c, taps, c)
timed("GroupNorm alone (Triton, float32 out)", lambda x, g, b: normalise_affine(
    x.reshape(B, H * W, C), g, b, NUM_GROUPS, EPS, True, False, jnp.float32, "pallas"), x, g, b)
