"""Twenty-second session, call C: the Mosaic GPU concat_dense against the Triton one at the decoder's 8×8, 4×4
shapes (and 16×16 with block_n 256), batch 512, bf16: µs per call of CHAIN chained calls (each output the next
h), one JSON line per row, and each row's largest difference from XLA's float32 product."""
import json
import sys
import time

import jax
import jax.numpy as jnp

from jdiff.models import mosaic_concat_dense as mcd, pallas_concat_dense as pcd

CHAIN = 10
ROWS = [  # n, channels per part, F, implementation, settings (call C's first run: the rows without settings)
    (64, 256, 256, "mosaic", dict(block_m=64)), (16, 256, 256, "mosaic", dict(block_m=64)),
    (256, 256, 256, "mosaic", dict(block_n=256, steps=2)), (256, 256, 256, "mosaic", dict(steps=2)),
    (1024, 128, 128, "mosaic", dict(steps=2, block_m=256)),
]


def main(out):
    for n, ch, f, implementation, settings in ROWS:
        k = jax.random.split(jax.random.fold_in(jax.random.key(0), n), 4)
        h = jax.random.normal(k[0], (512, n, ch), jnp.bfloat16)
        s = jax.random.normal(k[1], (512, n, ch), jnp.bfloat16)
        w = (jax.random.normal(k[2], (2 * ch, f)) / (2 * ch) ** 0.5).astype(jnp.bfloat16)
        c = jax.random.normal(k[3], (f,))
        row = dict(n=n, channels=ch, f=f, implementation=implementation, **settings)

        def chain(h, s, w, c):
            outputs = []
            for _ in range(CHAIN):
                h = (mcd.concat_dense((h, s), w, c, **settings) if settings else
                     pcd.concat_dense((h, s), w, c, implementation=implementation))
                outputs.append(h)
            return outputs
        try:
            t = time.perf_counter()
            compiled = jax.jit(chain).lower(h, s, w, c).compile()
            row["compile_s"] = round(time.perf_counter() - t, 1)
            first = jax.block_until_ready(compiled(h, s, w, c))[0]
            reference = jnp.concatenate([h, s], -1).astype(jnp.float32) @ w.astype(jnp.float32) + c
            row["max_diff"] = float(jnp.abs(first.astype(jnp.float32) - reference).max())
            times = []
            for _ in range(7):
                t = time.perf_counter()
                jax.block_until_ready(compiled(h, s, w, c))
                times.append((time.perf_counter() - t) / CHAIN * 1e6)
            row["us"] = round(sorted(times)[3], 2)
        except Exception as error:  # noqa: BLE001 (a probe: record and go on)
            row["error"] = repr(error)[:300]
        print(json.dumps(row), flush=True)
        with open(out, "a") as f_out:
            f_out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
