"""Where the single-warpgroup probe's time goes: a TMA copy of the same slabs, optimized loads, fast math,
and the harness's own cost of one XLA pass over x (the loop carries the kernel's output)."""
import json, os, sys, time, traceback
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
import mgpu_gn
from jdiff.models import pallas_group_norm
from probe1 import timed, record, results, B
results["rows"] = []
import probe1
probe1.OUT = os.environ.get("OUT", "/tmp"); probe1.NAME = "probe3.json"
key = jax.random.split(jax.random.key(0), 3)
for n, c in [(1024, 128), (1024, 256), (256, 512)]:
    x = (jax.random.normal(key[0], (B, n, c)) * 2 + 3).astype(jnp.bfloat16)
    a = 1 + 0.1 * jax.random.normal(key[1], (B, c)); b = 0.1 * jax.random.normal(key[2], (B, c))
    ref = mgpu_gn.reference(x, a, b).astype(jnp.float32)
    record(n=n, c=c, impl="xla_negate", us=timed(lambda v: -v, x))
    triton = lambda v: pallas_group_norm.forward(v, a, b, silu=True, out_dtype=jnp.bfloat16)[0]
    record(n=n, c=c, impl="triton", us=timed(triton, x))
    for name, kw in [("copy_only", dict(copy_only=True)), ("plain", {}), ("optimized", dict(optimized=True)),
                     ("approx", dict(approx=True)), ("optimized+approx", dict(optimized=True, approx=True))]:
        for cpp, chunks in [(32, 4), (64, 4)]:
            try:
                fn = lambda v: mgpu_gn.forward(v, a, b, cpp=cpp, chunks=chunks, **kw)[0]
                y = fn(x)
                err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - (x.astype(jnp.float32) if kw.get("copy_only") else ref))))
                record(n=n, c=c, impl="mgpu", variant=name, cpp=cpp, chunks=chunks, us=timed(fn, x), err=err)
            except Exception:
                record(n=n, c=c, impl="mgpu", variant=name, cpp=cpp, chunks=chunks, error=traceback.format_exc()[-800:])
