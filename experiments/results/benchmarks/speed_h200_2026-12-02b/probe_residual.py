"""Probe (twenty-first session): the attention blocks' output projection with its residual sum,
y = x + a·W + c, at the UNet's attention shapes (batch 512, bf16, C = 256: 16×16, 8×8 and the middle block's
4×4), µs per call, CHAIN calls chained in one program (each y the next call's x; a, the attention's output,
a distinct array for every call, as in the UNet: call A's version read one a in every call, and XLA then
computed a·W + c once for all of them, so its 'xla' rows are void):

- 'xla': XLA's product plus bias, then x + h (what the UNet ran before: a product and an add of its own);
- 'kernel': pallas_concat_dense.concat_dense((a,), W, c, x), over a few tiles.
Every kernel variant is checked against 'xla' (max abs difference)."""
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
from jdiff.models import pallas_concat_dense as pcd  # noqa: E402

B, C, CHAIN = 512, 256, 20
TILES = {"A": [(None, None, None, 8), (128, 128, 128, 8), (64, 256, 128, 8), (128, 256, 64, 8),
               (128, 256, 128, 4), (256, 128, 128, 8)],
         "B": [(None, None, None, 8), (128, 256, 128, 8)]}
SIZES = {"A": (256, 64, 16), "B": (256, 64)}


def timed(results, out, name, step, x, attention, reference=None, repeats=5, **extra):
    """step(x, a) → next x; µs per call, CHAIN calls in one program, call i reading attention[i]."""
    def chain(x, attention):
        for a in attention:
            x = step(x, a)
        return x
    row = dict(name=name, **extra)
    try:
        single = np.asarray(jax.jit(step)(x, attention[0]).astype(jnp.float32))
        f = jax.jit(chain, compiler_options=compilation.compiler_options())
        jax.block_until_ready(f(x, attention))
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        row["error"] = repr(e)[:400]
        results["rows"].append(row)
        print(row, flush=True)
        return None
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            r = f(x, attention)
        jax.block_until_ready(r)
        windows.append((time.perf_counter() - t0) / (5 * CHAIN) * 1e6)
    row.update(us=statistics.median(windows), spread=(max(windows) - min(windows)) / min(windows))
    if reference is not None:
        row.update(max_diff=float(np.abs(single - reference).max()), scale=float(np.abs(reference).max()))
    results["rows"].append(row)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    json.dump(results, open(out, "w"), indent=2)
    return single


def main(out, call):
    results = dict(environment=benchmark.environment(), chain=CHAIN, batch=B, rows=[])
    for n in SIZES[call]:
        k = jax.random.split(jax.random.fold_in(jax.random.key(0), n), 4)
        x = (2 * jax.random.normal(k[0], (B, n, C)) + 1).astype(jnp.bfloat16)
        attention = jax.random.normal(k[1], (CHAIN, B, n, C), jnp.bfloat16)
        w = (0.1 * jax.random.normal(k[2], (C, C)) / np.sqrt(C)).astype(jnp.bfloat16)
        c = (0.1 * jax.random.normal(k[3], (C,))).astype(jnp.bfloat16)
        reference = timed(results, out, "xla", lambda x, a: x + (a @ w + c), x, attention, n=n)
        for bm, bn, bk, warps in TILES[call]:
            tiles = dict(block_m=bm, block_n=bn, block_k=bk, num_warps=warps)
            timed(results, out, f"kernel {tiles}", lambda x, a: pcd.concat_dense((a,), w, c, x, **tiles), x,
                  attention, reference, n=n, **tiles)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "A")
