"""Probe (nineteenth session): the decoder ResBlock's input without its concatenation. Per resolution of
the UNet's decoder (batch 512, bf16), µs per block input, CHAIN blocks chained (each block's skip product
feeds the next block's h, as the ResBlocks' outputs do; every norm output kept alive, as the convs that read
them do):

- 'concat': XLA's concatenation of h and the skip s, the library's GroupNorm kernel (shared affine, SiLU)
  of it and XLA's 1×1 product of it plus bias (what the UNet ran before);
- 'parts': the GroupNorm kernel reading h and s as parts and pallas_concat_dense's product of the parts;
- the product alone: XLA's (of the concatenation) against concat_dense's, over a sweep of its tiles.
Every variant is checked against the 'concat' one (max abs difference)."""
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
from jdiff.models import pallas_concat_dense as pcd, pallas_group_norm as pgn  # noqa: E402

B, CHAIN = 512, 20
SHAPES = [(1024, 128, 128, 128), (256, 256, 256, 256), (64, 256, 256, 256), (16, 256, 256, 256)]
TILES = [(128, 128, 64, 4), (128, 128, 64, 8), (64, None, 64, 8), (128, None, 64, 8), (256, 128, 64, 8),
         (128, 128, 128, 8)]  # call A
TILES_B = {128: [(128, 128, 128, 8), (128, 128, 128, 4), (64, 128, 128, 4), (64, 128, 128, 8)],  # call B
           256: [(128, 128, 128, 8), (128, 256, 128, 8), (64, 256, 128, 8), (64, 256, 128, 4),
                 (128, 128, 64, 8)]}


def timed(results, out, name, step, h, reference=None, repeats=5, **extra):
    """step(h) → (outputs to keep, next h); µs per step, CHAIN steps in one program."""
    def chain(h):
        kept = []
        for _ in range(CHAIN):
            keep, h = step(h)
            kept.append(keep)
        return h, kept
    row = dict(name=name, **extra)
    try:
        single = [np.asarray(v.astype(jnp.float32)) for v in jax.tree.leaves(jax.jit(step)(h))]
        f = jax.jit(chain, compiler_options=compilation.compiler_options())
        jax.block_until_ready(f(h))
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        row["error"] = repr(e)[:400]
        results["rows"].append(row)
        print(row, flush=True)
        return None
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            r = f(h)
        jax.block_until_ready(r)
        windows.append((time.perf_counter() - t0) / (5 * CHAIN) * 1e6)
    row.update(us=statistics.median(windows), spread=(max(windows) - min(windows)) / min(windows))
    if reference is not None:
        row.update(max_diff=max(float(np.abs(g - r).max()) for g, r in zip(single, reference)),
                   scale=max(float(np.abs(r).max()) for r in reference))
    results["rows"].append(row)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    json.dump(results, open(out, "w"), indent=2)
    return single


def main(out, call):
    results = dict(environment=benchmark.environment(), chain=CHAIN, batch=B, rows=[])
    for n, ch, cs, f in SHAPES:
        k = jax.random.split(jax.random.fold_in(jax.random.key(0), n * ch), 6)
        h = jax.random.normal(k[0], (B, n, ch), jnp.bfloat16)
        s = (jax.random.normal(k[1], (B, n, cs)) * 2 + 0.5).astype(jnp.bfloat16)
        a, b = 1 + 0.1 * jax.random.normal(k[2], (ch + cs,)), 0.1 * jax.random.normal(k[3], (ch + cs,))
        w = (jax.random.normal(k[4], (ch + cs, f)) / np.sqrt(ch + cs)).astype(jnp.bfloat16)
        c = (0.1 * jax.random.normal(k[5], (f,))).astype(jnp.bfloat16)
        shape = dict(n=n, c_h=ch, c_s=cs, f=f)

        def concat_block(h):
            x = jnp.concatenate([h, s], axis=-1)
            y = pgn.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16)[0]
            return y, x @ w + c

        def parts_block(h, **tiles):
            y = pgn.forward((h, s), a, b, silu=True, out_dtype=jnp.bfloat16)[0]
            return y, pcd.concat_dense((h, s), w, c, **tiles)

        ref = timed(results, out, "concat", concat_block, h, **shape)
        timed(results, out, "parts", parts_block, h, ref, **shape)
        product_ref = timed(results, out, "product: XLA of the concatenation",
                            lambda h: ((), jnp.concatenate([h, s], axis=-1) @ w + c), h, **shape)
        for bm, bn, bk, warps in TILES if call == "A" else TILES_B[f]:
            tiles = dict(block_m=bm, block_n=bn or f, block_k=bk, num_warps=warps)
            timed(results, out, f"product: concat_dense {tiles}",
                  lambda h: ((), pcd.concat_dense((h, s), w, c, **tiles)), h, product_ref, **shape, **tiles)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "A")
