"""Probe (eighteenth session): a GroupNorm forward whose tiles are (positions, groups, channels per group),
so that a group's statistics are reductions over axes of the tile's own layout and broadcast back for free,
against the library's Triton kernel, which sums over a (lanes, groups) membership mask and moves values
between layouts
(call A: on the 8×8 and 4×4 norms the library's kernel was fastest with one warp, where those moves need no
barrier). Same math as the library (per-channel sums shifted by the first position's values, Chan's
combination over a group's channels, float32), y = SiLU((x − μ)·r·a + b) in bf16, per-image (B, C) a and b.
Batch 512, µs per call, CHAIN calls chained as in probe_tiny.py; every variant checked against the library."""
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
from jdiff.models import pallas_group_norm as pgn  # noqa: E402
from jdiff.models.group_norm import EPS, NUM_GROUPS  # noqa: E402

B, CHAIN = int(os.environ.get("PROBE_BATCH", 512)), 20
INTERPRET = os.environ.get("PROBE_INTERPRET") == "1"


def grouped_kernel(x_ref, a_ref, b_ref, y_ref, mean_ref, rstd_ref, *, block_n, groups_per_program):
    """x_ref (B, N, G, P); a, b, mean, rstd (B, G, P). Program (group block j, image i)."""
    n, per_group = x_ref.shape[1], x_ref.shape[3]
    chunks = n // block_n
    image = pl.program_id(1)
    groups = pl.ds(pl.program_id(0) * groups_per_program, groups_per_program)

    def rows(i):
        return pl.ds(jnp.asarray(i, jnp.int32) * block_n, block_n)

    def load(i, policy):
        return plt.load(x_ref.at[image, rows(i), groups, :], eviction_policy=policy).astype(jnp.float32)

    shift = plt.load(x_ref.at[image, jnp.int32(0), groups, :]).astype(jnp.float32)  # (g, P)

    def summands(x):
        d = x - shift[None]
        return d, d * d

    if chunks == 1:
        x0 = load(0, "evict_first")
        s1, s2 = (v.sum(0) for v in summands(x0))
    else:
        zeros = jnp.zeros((block_n, groups_per_program, per_group), jnp.float32)

        def body(i, acc):
            return tuple(s + t for s, t in zip(acc, summands(load(i, "evict_last"))))
        s1, s2 = (v.sum(0) for v in jax.lax.fori_loop(0, chunks, body, (zeros, zeros)))
    mean_c = shift + s1 / n
    m2_c = jnp.maximum(s2 - s1 * s1 / n, 0.0)
    mean_g = mean_c.sum(1) / per_group  # (g,)
    m2_g = (m2_c + n * jnp.square(mean_c - mean_g[:, None])).sum(1)
    rstd_g = jax.lax.rsqrt(m2_g / (n * per_group) + EPS)
    mean = jnp.broadcast_to(mean_g[:, None], (groups_per_program, per_group))
    rstd = jnp.broadcast_to(rstd_g[:, None], (groups_per_program, per_group))
    plt.store(mean_ref.at[image, groups, :], mean)
    plt.store(rstd_ref.at[image, groups, :], rstd)
    scale = (rstd * plt.load(a_ref.at[image, groups, :]))[None]
    bias = plt.load(b_ref.at[image, groups, :])[None]

    def apply(i, x):
        z = (x - mean[None]) * scale + bias
        plt.store(y_ref.at[image, rows(i), groups, :], jax.nn.silu(z).astype(y_ref.dtype),
                  eviction_policy="evict_first")
    if chunks == 1:
        apply(0, x0)
    else:
        @pl.loop(0, chunks)
        def _(j):
            i = chunks - 1 - j
            apply(i, load(i, "evict_first"))


def grouped_forward(x, a, b, *, block_n, channels_per_program, num_warps):
    batch, n, c = x.shape
    per_group = c // NUM_GROUPS
    gpp = channels_per_program // per_group
    per_channel = jax.ShapeDtypeStruct((batch, NUM_GROUPS, per_group), jnp.float32)
    y, mean, rstd = pl.pallas_call(
        functools.partial(grouped_kernel, block_n=block_n, groups_per_program=gpp),
        out_shape=(jax.ShapeDtypeStruct((batch, n, NUM_GROUPS, per_group), jnp.bfloat16), per_channel,
                   per_channel),
        grid=(NUM_GROUPS // gpp, batch),
        compiler_params=plt.CompilerParams(num_warps=num_warps),
        interpret=INTERPRET, name="grouped_group_norm",
    )(x.reshape(batch, n, NUM_GROUPS, per_group),
      *(v.reshape(batch, NUM_GROUPS, per_group).astype(jnp.float32) for v in (a, b)))
    return y.reshape(batch, n, c), mean.reshape(batch, c), rstd.reshape(batch, c)


def check():
    """On the CPU (PROBE_INTERPRET=1): against the library's kernel in its interpreter."""
    for n, c, bn, cpp in ((16, 256, 16, 64), (64, 512, 16, 128), (64, 256, 64, 256)):
        k = jax.random.split(jax.random.key(n + c), 3)
        x = (jax.random.normal(k[0], (2, n, c)) * 1.5 + 3.0).astype(jnp.bfloat16)
        a = 1 + 0.1 * jax.random.normal(k[1], (2, c))
        b = 0.1 * jax.random.normal(k[2], (2, c))
        ref = pgn.forward(x, a, b, silu=True, out_dtype=jnp.float32, interpret=True)
        got = grouped_forward(x, a, b, block_n=bn, channels_per_program=cpp, num_warps=4)
        for r, g in zip(ref, got):
            print(n, c, bn, cpp, float(jnp.abs(r - g.astype(jnp.float32)).max()), float(jnp.abs(r).max()))


def timed(results, out, name, step, x, reference=None, repeats=5, **extra):
    def chain(x):
        for _ in range(CHAIN):
            x = step(x)
        return x
    row = dict(name=name, **extra)
    try:
        single = np.asarray(jax.jit(step)(x).astype(jnp.float32))
        f = jax.jit(chain, compiler_options=compilation.compiler_options())
        jax.block_until_ready(f(x))
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        row["error"] = repr(e)[:400]
        results["rows"].append(row)
        print(row, flush=True)
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
    json.dump(results, open(out, "w"), indent=2)
    return single


SWEEP = {  # (N, C): [(block_n, channels_per_program, num_warps)] for the grouped kernel
    (16, 256): [(16, cpp, w) for cpp in (64, 128, 256) for w in (1, 2)],
    (16, 512): [(16, cpp, w) for cpp in (64, 128, 256) for w in (1, 2)],
    (64, 256): [(64, cpp, w) for cpp in (32, 64, 128) for w in (1, 2, 4)],
    (64, 512): [(64, cpp, w) for cpp in (64, 128) for w in (1, 2, 4)],
    (256, 256): [(bn, cpp, w) for bn in (16, 32) for cpp in (64, 128) for w in (4, 8)],
    (256, 512): [(bn, cpp, w) for bn in (16, 32) for cpp in (64, 128) for w in (4, 8)],
}
# call D: more settings of the 16×16 norms (19 + 3 calls per sampling step) than call B's SWEEP
SWEEP_16 = {(n, c): [(bn, cpp, w) for bn in (16, 32, 64) for cpp in (32, 64) for w in (4, 8)
                     if (bn, cpp, w) not in ((16, 64, 4), (16, 64, 8), (32, 64, 4), (32, 64, 8))]
            for n, c in ((256, 256), (256, 512))}
LIBRARY_BEST = {(16, 256): (16, 64, 1), (16, 512): (8, 64, 1), (64, 256): (64, 32, 1), (64, 512): (64, 64, 4)}


def main(out, shapes, sweep):
    results = dict(environment=benchmark.environment(), chain=CHAIN, rows=[])
    for n, c in shapes:
        k = jax.random.split(jax.random.fold_in(jax.random.key(0), n * c), 3)
        x = (jax.random.normal(k[0], (B, n, c)) * 1.5 + 0.3).astype(jnp.bfloat16)
        a = 1 + 0.1 * jax.random.normal(k[1], (B, c))
        b = 0.1 * jax.random.normal(k[2], (B, c))
        shape = dict(n=n, c=c)

        def library(**settings):
            return lambda x: pgn.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16, kernel="triton",
                                         **settings)[0]
        ref = timed(results, out, "library defaults", library(), x, **shape)
        if (n, c) in LIBRARY_BEST:
            bn, cpp, w = LIBRARY_BEST[n, c]
            timed(results, out, f"library bn={bn} cpp={cpp} warps={w}", library(
                block_n=bn, channels_per_program=cpp, num_warps=w), x, ref, **shape)
        for bn, cpp, w in sweep[n, c]:
            timed(results, out, f"grouped bn={bn} cpp={cpp} warps={w}", lambda x: grouped_forward(
                x, a, b, block_n=bn, channels_per_program=cpp, num_warps=w)[0], x, ref, **shape,
                block_n=bn, cpp=cpp, warps=w)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check()
    else:
        main(sys.argv[1], [tuple(int(v) for v in s.split(",")) for s in sys.argv[2].split(";")],
             SWEEP_16 if sys.argv[3:] == ["16"] else SWEEP)
