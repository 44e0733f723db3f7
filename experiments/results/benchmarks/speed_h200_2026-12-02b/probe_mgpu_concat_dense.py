"""Probe for the next session with device time (written in the twenty-first, not yet run on a GPU): the
decoder's 1×1 skip product y = [h | s]·W + c at the UNet's four decoder shapes (batch 512, bf16), µs per
product, 20 chained (each product feeds the next h; probe_parts.py's harness): XLA's concatenation and
product, jdiff's Triton kernel (pallas_concat_dense.concat_dense, its defaults), and its Mosaic GPU kernel
(jdiff.models.mosaic_concat_dense: persistent CTAs, a TMA + wgmma pipeline per part into one accumulator, c
added in the epilogue) over a few tiles, each checked against XLA's (max abs difference). ``--smoke``: tiny
shapes in the interpreters (Pallas's for Triton, Mosaic GPU's), on any backend."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [".", "experiments", HERE, os.path.join(os.path.dirname(HERE), "speed_h200_2026-12-02a")]
import benchmark  # noqa: E402
import probe_parts  # noqa: E402
from jdiff.models import mosaic_concat_dense as mcd, pallas_concat_dense as pcd  # noqa: E402

SHAPES = [(1024, 128, 128, 128), (256, 256, 256, 256), (64, 256, 256, 256), (16, 256, 256, 256)]
TILES = [(128, 128, 64, 4), (128, 256, 64, 4), (128, 128, 64, 2), (64, 128, 64, 4)]  # block_m, _n, _k, steps


def main(out, smoke):
    batch = 2 if smoke else probe_parts.B
    if smoke:
        probe_parts.CHAIN = 2
    results = dict(environment=benchmark.environment(), chain=probe_parts.CHAIN, batch=batch, rows=[])
    shapes = [(64, 64, 64, 64)] if smoke else SHAPES
    tiles = [(64, 64, 64, 2)] if smoke else TILES
    for n, ch, cs, f in shapes:
        k = jax.random.split(jax.random.fold_in(jax.random.key(0), n * ch), 4)
        h = jax.random.normal(k[0], (batch * n, ch), jnp.bfloat16)
        s = (jax.random.normal(k[1], (batch * n, cs)) * 2 + 0.5).astype(jnp.bfloat16)
        w = (jax.random.normal(k[2], (ch + cs, f)) / np.sqrt(ch + cs)).astype(jnp.bfloat16)
        c = 0.1 * jax.random.normal(k[3], (f,))
        shape = dict(n=n, c_h=ch, c_s=cs, f=f)
        reference = probe_parts.timed(
            results, out, "xla", lambda h: ((), jnp.concatenate([h, s], -1) @ w + c.astype(jnp.bfloat16)), h,
            **shape)
        probe_parts.timed(results, out, "triton concat_dense",
                          lambda h: ((), pcd.concat_dense((h[None], s[None]), w, c, interpret=smoke)[0]), h,
                          reference, **shape)
        for bm, bn, bk, steps in tiles:
            if f % bn:
                continue
            setting = dict(block_m=bm, block_n=bn, block_k=bk, steps=steps)
            probe_parts.timed(
                results, out, f"mosaic {setting}",
                lambda h: ((), mcd.concat_dense((h[None], s[None]), w, c, **setting, interpret=smoke)[0]), h,
                reference, **shape, **setting)


if __name__ == "__main__":
    main(sys.argv[1], "--smoke" in sys.argv[2:])
