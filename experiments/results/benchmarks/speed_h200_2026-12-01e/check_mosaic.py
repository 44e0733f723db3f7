"""On the GPU: the Mosaic kernel against the Triton kernel through pallas_group_norm.forward (batch 512), and
both timed back to back (50 calls, median of 5)."""
import json, os, sys, time
import jax, jax.numpy as jnp, numpy as np
from jdiff.models import pallas_group_norm, mosaic_group_norm

out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
key = jax.random.split(jax.random.key(0), 4)


def timed(fn, *args):
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            y = f(*args)
        jax.block_until_ready(y)
        times.append((time.perf_counter() - t) / 50)
    return float(np.median(times)) * 1e6


for n, c, dtype, shared, shifted, silu in [(1024, 128, jnp.bfloat16, False, False, True),
                                           (1024, 128, jnp.bfloat16, True, False, True),
                                           (1024, 256, jnp.bfloat16, True, False, True),
                                           (1024, 256, jnp.bfloat16, False, False, True),
                                           (1024, 384, jnp.bfloat16, True, True, True),
                                           (1024, 128, jnp.float32, False, False, False)]:
    x = (jax.random.normal(key[0], (512, n, c)) * 2 + 3).astype(dtype)
    shape_ab = (c,) if shared else (512, c)
    a = 1 + 0.1 * jax.random.normal(key[1], shape_ab); b = 0.1 * jax.random.normal(key[2], shape_ab)
    shift = jax.random.normal(key[3], (c,)) if shifted else None
    row = dict(n=n, c=c, dtype=jnp.dtype(dtype).name, shared=shared, shifted=shifted, silu=silu,
               preferred=mosaic_group_norm.preferred(x.shape, x.dtype, x.dtype))
    results = {}
    for kernel in ("triton", "mosaic"):
        fn = lambda x, a, b, shift, kernel=kernel: pallas_group_norm.forward(
            x, a, b, silu=silu, out_dtype=dtype, shift=shift, kernel=kernel)
        results[kernel] = fn(x, a, b, shift)
        row[kernel + "_us"] = timed(fn, x, a, b, shift)
    for name, i in (("y", 0), ("mean", 1), ("rstd", 2)):
        t, m = (np.asarray(results[k][i], np.float32) for k in ("triton", "mosaic"))
        row[name + "_max_diff"] = float(np.max(np.abs(t - m)))
        row[name + "_max_rel"] = float(np.max(np.abs(t - m) / (np.abs(t) + 1e-3)))
    out["rows"].append(row); print(row, flush=True)
    json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "check_mosaic.json"), "w"), indent=1)
