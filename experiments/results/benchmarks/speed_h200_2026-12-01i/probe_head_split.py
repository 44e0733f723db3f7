"""Probe (seventeenth session): the output head with its statistics in a kernel of their own.

pallas_output_head's kernel (one program per image) reads each image twice, statistics then products, and
ran at 3.2× its floor. Here a Triton kernel takes each (image, channel block)'s statistics (pass 1 of the
GroupNorm kernel: the shifted sums and group_statistics), and a second kernel normalises, applies the SiLU and
multiplies by the taps' matrix with many programs per image (``tiles`` tiles of ``block_n`` positions each).
µs per call at batch 512 (32×32, C = 128, F = 6; median of 5 windows of 50 back-to-back calls), against the
library's head, and each variant's largest difference from it."""
import functools
import json
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
from jdiff.models import pallas_output_head as ph  # noqa: E402
from jdiff.models.group_norm import EPS, NUM_GROUPS  # noqa: E402
from jdiff.models.layers import taps_matrix  # noqa: E402
from jdiff.models.pallas_group_norm import SlabProgram, centred, group_statistics, next_power_of_2  # noqa: E402

out = sys.argv[1]
interpret = len(sys.argv) > 2 and sys.argv[2] == "interpret"
B, H, W, C, F = (4 if interpret else 512), 32, 32, 128, 6
N = H * W
k = jax.random.split(jax.random.key(0), 5)
x = (jax.random.normal(k[0], (B, H, W, C)) * 1.5 + 0.3).astype(jnp.bfloat16)
g = 1 + 0.1 * jax.random.normal(k[1], (C,))
b = 0.1 * jax.random.normal(k[2], (C,))
w = 0.03 * jax.random.normal(k[3], (3, 3, C, F))
c = 0.1 * jax.random.normal(k[4], (F,))
results = dict(environment=benchmark.environment(), rows=[])


def stats_kernel(x_ref, mean_ref, rstd_ref, *, block_n, cpp):
    program = SlabProgram.here(x_ref.shape[1], block_n, cpp)
    shift = program.load_channels(x_ref, row=jnp.int32(0))
    summands = centred(shift)
    sums = program.sum_over_positions(lambda i: summands(i, program.load_tile(x_ref, i, "evict_last")), 2)
    mean, rstd = group_statistics(program, shift, sums, cpp, C // NUM_GROUPS, EPS)
    program.store_channels(mean_ref, mean)
    program.store_channels(rstd_ref, rstd)


def stats(x3, block_n, cpp, warps):
    per_channel = jax.ShapeDtypeStruct((B, C), jnp.float32)
    return pl.pallas_call(functools.partial(stats_kernel, block_n=block_n, cpp=cpp),
                          out_shape=(per_channel, per_channel), grid=(C // cpp, B),
                          compiler_params=plt.CompilerParams(num_warps=warps), interpret=interpret,
                          name="head_statistics")(x3)


def tiles_kernel(x_ref, mean_ref, rstd_ref, gamma_ref, beta_ref, w_ref, taps_ref, *, block_n, tiles):
    program = SlabProgram(image=pl.program_id(1), cols=pl.ds(0, C), lanes=None, width=C, block_n=block_n,
                          chunks=N // block_n)
    first = pl.program_id(0) * tiles
    scale = program.load_channels(rstd_ref) * program.load_channels(gamma_ref)
    offset = program.load_channels(beta_ref) - program.load_channels(mean_ref) * scale
    wm = w_ref[...]
    taps_width = w_ref.shape[1]
    taps_here = jax.lax.broadcasted_iota(jnp.int32, (taps_width, 1), 0) < taps_ref.shape[1]

    @pl.loop(0, tiles)
    def _(j):
        i = first + j
        t = jnp.dot(jax.nn.silu(program.load_tile(x_ref, i, "evict_first") * scale + offset), wm)
        plt.store(taps_ref.at[program.image, pl.ds(0, taps_width), program.rows(i)], t.T, mask=taps_here)


def head(x, g, b, w, c, *, sb, scpp, swarps, block_n, tiles, warps):
    x3 = x.reshape(B, N, C)
    mean, rstd = stats(x3, sb, scpp, swarps)
    wm = jnp.pad(taps_matrix(w), ((0, 0), (0, max(16, next_power_of_2(9 * F)) - 9 * F)))
    taps = pl.pallas_call(functools.partial(tiles_kernel, block_n=block_n, tiles=tiles),
                          out_shape=jax.ShapeDtypeStruct((B, 9 * F, N), jnp.float32),
                          grid=(N // (block_n * tiles), B),
                          compiler_params=plt.CompilerParams(num_warps=warps), interpret=interpret,
                          name="head_tiles")(x3, mean, rstd, g, b, wm)
    return ph.shifted_tap_sum(taps, H, W) + c


def timed(name, fn, *args, calls=50, repeats=5, reference=None, **extra):
    row = dict(name=name, **extra)
    try:
        f = jax.jit(fn)
        y = np.asarray(jax.block_until_ready(f(*args)))
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        row["error"] = repr(e)[:500]
        results["rows"].append(row)
        print(row, flush=True)
        json.dump(results, open(out, "w"), indent=2)
        return None
    windows = []
    for _ in range(1 if interpret else repeats):
        t0 = time.perf_counter()
        for _ in range(1 if interpret else calls):
            r = f(*args)
        jax.block_until_ready(r)
        windows.append((time.perf_counter() - t0) / (1 if interpret else calls) * 1e6)
    row.update(us=statistics.median(windows), spread=(max(windows) - min(windows)) / min(windows))
    if reference is not None:
        d = np.abs(y - reference)
        row.update(max_diff=float(d.max()), mean_diff=float(d.mean()))
    results["rows"].append(row)
    print(row, flush=True)
    json.dump(results, open(out, "w"), indent=2)
    return y


reference = timed("library head (one program per image)",
                  lambda *a: ph.output_head(*a, interpret=interpret), x, g, b, w, c)
x3 = x.reshape(B, N, C)
for sb, scpp, swarps in ((32, 32, 4), (32, 64, 4), (64, 64, 8), (16, 128, 4), (32, 128, 8)):
    timed(f"statistics alone {sb},{scpp},{swarps}", lambda x3: stats(x3, sb, scpp, swarps), x3)
settings = [(32, 64, 4, 64, 1, 4), (32, 64, 4, 64, 2, 4), (32, 64, 4, 64, 4, 4), (32, 64, 4, 32, 1, 4),
            (32, 64, 4, 128, 1, 8), (32, 64, 4, 64, 1, 8), (32, 32, 4, 64, 2, 4), (64, 64, 8, 64, 2, 4)]
for sb, scpp, swarps, bn, tiles, warps in (settings[:2] if interpret else settings):
    timed(f"split head stats={sb},{scpp},{swarps} tiles={bn}x{tiles} warps={warps}",
          functools.partial(head, sb=sb, scpp=scpp, swarps=swarps, block_n=bn, tiles=tiles, warps=warps),
          x, g, b, w, c, reference=reference)
