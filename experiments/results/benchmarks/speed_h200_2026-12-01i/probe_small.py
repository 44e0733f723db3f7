"""Probe (seventeenth session): the UNet's GroupNorms at 16×16 and 8×8 (Triton kernel now) against the Mosaic GPU
ring kernel with plans it does not choose today (more CTAs per SM, smaller chunks), and the 4×4 convolutions
(cuDNN) against one dense product with the conv written out as a (16·C, 16·F) matrix. Batch 512, bf16, µs per
call: CHAIN calls chained in one jitted program (each call's output the next one's input), median of 5
windows of 5 runs; every variant checked against the reference row of its shape."""
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
from jdiff import compilation  # noqa: E402
from jdiff.models import mosaic_group_norm as mgn, pallas_group_norm as pgn  # noqa: E402
from jdiff.models.group_norm import EPS  # noqa: E402

out = sys.argv[1]
B, CHAIN = int(sys.argv[3]) if len(sys.argv) > 3 else 512, 20
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
        row.update(max_diff=float(d.max()), mean_diff=float(d.mean()), scale=float(np.abs(reference).max()))
    results["rows"].append(row)
    print(row, flush=True)
    save()
    return single


def mosaic_step(a, b, p):
    settings = mgn._Settings(groups=32, eps=EPS, silu=True, chunk_rows=p.chunk_rows,
                             ring_bytes_per_sm=mgn.RING_BYTES_PER_SM, interpret=False)

    def step(x):
        saved = mgn.plan
        mgn.plan = lambda *args, **kw: p  # traced now: the call reads its plan at trace time
        try:
            return mgn._call(x, a, b, settings)[0]
        finally:
            mgn.plan = saved
    return step


def norms():
    key = jax.random.key(0)
    for n, c in ((256, 256), (256, 512), (256, 384), (256, 128), (64, 256), (64, 512)):
        k = jax.random.split(jax.random.fold_in(key, n * c), 3)
        x = (jax.random.normal(k[0], (B, n, c)) * 1.5 + 0.3).astype(jnp.bfloat16)
        a = 1 + 0.1 * jax.random.normal(k[1], (c,))
        b = 0.1 * jax.random.normal(k[2], (c,))
        shape = dict(n=n, c=c)
        ref = timed("triton defaults", lambda x: pgn.forward(
            x, a, b, silu=True, out_dtype=jnp.bfloat16,
            kernel="triton")[0], x, **shape)
        for bn, cpp, nw in ((16, 64, 8), (n, 64, 8)):
            if c % cpp == 0:
                timed(f"triton {bn},{cpp},{nw}", lambda x: pgn.forward(
                    x, a, b, silu=True, out_dtype=jnp.bfloat16, block_n=bn, channels_per_program=cpp,
                    num_warps=nw)[0], x, ref, **shape)
        per_group = c // 32
        cpps = [k * per_group for k in (1, 2, 4, 8, 16) if k * per_group >= 32 and k * per_group % 8 == 0][:2]
        for cpp in cpps:
            for rows in sorted({n, max(64, n // 2)}, reverse=True):
                for ctas in (2, 3, 4):
                    ring = min(8, mgn.RING_BYTES_PER_SM // ctas // (rows * cpp * 2))
                    if ring < n // rows + 1:
                        continue
                    p = mgn.Plan(channels_per_cta=cpp, chunk_rows=rows, ring=ring, ctas_per_sm=ctas)
                    timed(f"mosaic cpp={cpp} rows={rows} ctas={ctas} ring={ring}", mosaic_step(a, b, p), x, ref,
                          **shape)


def dense_conv_matrix(w, h, wd):
    """The (H·W·C, H·W·F) matrix of a 3×3 'SAME' conv on H×W maps: the conv of each basis vector."""
    c = w.shape[2]
    eye = jnp.eye(h * wd * c, dtype=jnp.float32).reshape(h * wd * c, h, wd, c)
    cols = jax.lax.conv_general_dilated(eye, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest")
    return cols.reshape(h * wd * c, -1)


def convs():
    for h, c in ((4, 256), (4, 512)):
        f = 256
        k = jax.random.split(jax.random.key(h * c), 3)
        x = jax.random.normal(k[0], (B, h, h, c)).astype(jnp.bfloat16)
        w = jax.random.normal(k[1], (3, 3, c, f)) / np.sqrt(9 * c)
        bias = 0.1 * jax.random.normal(k[2], (f,))
        wb, bb = w.astype(jnp.bfloat16), bias.astype(jnp.bfloat16)
        shape = dict(h=h, c=c, f=f)
        pad = (lambda y: jnp.pad(y, ((0, 0), (0, 0), (0, 0), (0, c - f)))) if c != f else (lambda y: y)

        def cudnn(x):
            y = jax.lax.conv_general_dilated(x, wb, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return pad(y + bb)
        ref = timed("cudnn conv", cudnn, x, **shape)
        big = dense_conv_matrix(w, h, h).astype(jnp.bfloat16)
        big_bias = jnp.tile(bias, h * h).astype(jnp.bfloat16)

        def dense(x, acc=None):
            y = jnp.dot(x.reshape(B, -1), big, preferred_element_type=acc)
            return pad((y.astype(jnp.bfloat16) + big_bias).reshape(B, h, h, f))
        timed("dense product, bf16 out", dense, x, ref, **shape)
        timed("dense product, f32 accumulate", lambda x: dense(x, jnp.float32), x, ref, **shape)


which = sys.argv[2] if len(sys.argv) > 2 else "norms,convs"
if "convs" in which:
    convs()
if "norms" in which:
    norms()
