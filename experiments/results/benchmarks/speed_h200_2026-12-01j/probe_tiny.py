"""Probe (eighteenth session): the UNet's GroupNorms at 8×8 and 4×4 (N = 64, 16 positions), which a
sampling-step profile shows at 14–38 µs per call against a few µs of traffic. The Triton kernel over a sweep
of its settings (channels per program, positions per tile, warps), XLA's one-pass GroupNorm, and two floors:
a Pallas Triton copy with one program per image and XLA's element-wise x·1.001 (each call behind an
optimisation barrier). Batch 512, bf16, per-image (B, C) scale and shift as the ResBlocks' second norms take
them, µs per call: CHAIN calls chained in one jitted program with the sampler's command buffers (each call's
output the next one's input, so that, as in the UNet, every call reads what the one before wrote), median of
5 windows of 5 runs; every variant checked against the library's defaults."""
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

sys.path.insert(0, ".")
sys.path.insert(0, "experiments")
import benchmark  # noqa: E402
from jdiff import compilation  # noqa: E402
from jdiff.models import group_norm, pallas_group_norm as pgn  # noqa: E402

out = sys.argv[1]
SHAPES = [tuple(int(v) for v in s.split(",")) for s in (sys.argv[2] if len(sys.argv) > 2 else
                                                        "16,256;16,512;64,256;64,512").split(";")]
B, CHAIN = int(os.environ.get("PROBE_BATCH", 512)), 20
OPTIONS = compilation.compiler_options()
results = dict(environment=benchmark.environment(), chain=CHAIN, compiler_options=OPTIONS, rows=[])


def save():
    json.dump(results, open(out, "w"), indent=2)


def timed(name, step, x, reference=None, repeats=5, **extra):
    def chain(x):
        for _ in range(CHAIN):
            x = step(x)
        return x
    row = dict(name=name, **extra)
    try:
        single = np.asarray(jax.jit(step)(x).astype(jnp.float32))
        f = jax.jit(chain, compiler_options=OPTIONS)
        jax.block_until_ready(f(x))
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        row["error"] = repr(e)[:400]
        results["rows"].append(row)
        print(row, flush=True)
        save()
        return None
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            r = f(x)
        jax.block_until_ready(r)
        windows.append((time.perf_counter() - t0) / (5 * CHAIN) * 1e6)
    row.update(us=statistics.median(windows), spread=(max(windows) - min(windows)) / min(windows))
    if reference is not None:
        d = np.abs(single - reference)
        row.update(max_diff=float(d.max()), scale=float(np.abs(reference).max()))
    results["rows"].append(row)
    print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    save()
    return single


def copy_kernel(x_ref, y_ref):
    y_ref[...] = (x_ref[...].astype(jnp.float32) * 1.001).astype(y_ref.dtype)


def pallas_copy(x, cpp, warps):
    b, n, c = x.shape
    return pl.pallas_call(copy_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(c // cpp, b),
                          in_specs=[pl.BlockSpec((None, n, cpp), lambda j, i: (i, 0, j))],
                          out_specs=pl.BlockSpec((None, n, cpp), lambda j, i: (i, 0, j)),
                          compiler_params=plt.CompilerParams(num_warps=warps))(x)


def main():
    key = jax.random.key(0)
    for n, c in SHAPES:
        k = jax.random.split(jax.random.fold_in(key, n * c), 3)
        x = (jax.random.normal(k[0], (B, n, c)) * 1.5 + 0.3).astype(jnp.bfloat16)
        a = 1 + 0.1 * jax.random.normal(k[1], (B, c))
        b = 0.1 * jax.random.normal(k[2], (B, c))
        shape = dict(n=n, c=c)

        def gn(**settings):
            return lambda x: pgn.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16, kernel="triton",
                                         **settings)[0]
        ref = timed("triton defaults", gn(), x, **shape)
        timed("xla one-pass", lambda x: group_norm.normalise_affine(
            x, a, b, silu=True, one_pass=True, out_dtype=jnp.bfloat16), x, ref, **shape)
        timed("xla x*1.001 (barrier)", lambda x: jax.lax.optimization_barrier(
            (x.astype(jnp.float32) * 1.001).astype(jnp.bfloat16)), x, **shape)
        for cpp, warps in sorted({(c, 4), (min(c, 256), 4), (64, 4), (c, 8)}):
            copy = functools.partial(pallas_copy, cpp=cpp, warps=warps)
            timed(f"pallas copy cpp={cpp} warps={warps}", copy, x, **shape, cpp=cpp, warps=warps)
        for cpp in (32, 64, 128, 256, 512):
            if cpp > c:
                continue
            for rows in (n, n // 2):
                if rows < 8 or not 256 <= rows * cpp <= 16384:
                    continue
                for warps in (1, 2, 4, 8):
                    timed(f"triton bn={rows} cpp={cpp} warps={warps}", gn(
                        block_n=rows, channels_per_program=cpp, num_warps=warps), x, ref, **shape,
                        block_n=rows, cpp=cpp, warps=warps)


main()
