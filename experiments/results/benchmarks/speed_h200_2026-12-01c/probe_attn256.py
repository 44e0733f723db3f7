"""L = 256 attention (16×16, 8 heads of 32): jdiff's kernel with a query block vs cuDNN, alone and from the
(B, L, 3C) q|k|v product (as the UNet calls them). Writes JSON to argv[1]."""
import json, sys, os
sys.path.insert(0, os.getcwd())
import jax, jax.numpy as jnp
from experiments.bench_group_norm import time_per_call
from jdiff.models import pallas_attention as A
out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
B, L, H, D = (512, 256, 8, 32) if jax.default_backend() == "gpu" else (2, 256, 2, 16)
interp = jax.default_backend() != "gpu"
calls = 16 if not interp else 1
keys = jax.random.split(jax.random.key(0), calls)
qkvs = [jax.random.normal(k, (B, L, 3 * H * D), jnp.bfloat16) for k in keys]
bias = (0.1 * jax.random.normal(jax.random.key(1), (H * D,))).astype(jnp.bfloat16)
flop = 4 * B * H * L * L * D

def split(qkv, b):
    q, k, v = (t.reshape(B, L, H, D) for t in jnp.split(qkv, 3, axis=-1))
    return q + b.reshape(H, D), k, v

def cudnn(qkv, b):
    return jax.nn.dot_product_attention(*split(qkv, b), implementation="cudnn" if not interp else "xla")

ref = jax.jit(lambda qkv, b: jax.nn.dot_product_attention(*(t.astype(jnp.float32) for t in split(qkv, b)),
                                                          implementation="xla"))(qkvs[0], bias)
def record(name, fn, **kw):
    got = jax.jit(fn)(qkvs[0], bias).astype(jnp.float32)
    diff = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
    t = time_per_call(fn, qkvs, (bias,), 1 if interp else 7)
    row = dict(name=name, **kw, us=t * 1e6, tflops=flop / t / 1e12, max_rel_diff=diff)
    print(json.dumps(row), flush=True); out["rows"].append(row)
    json.dump(out, open(sys.argv[1], "w"), indent=1)

record("cudnn from qkv (XLA slices, q + b_q)", cudnn)
settings = [(bq, w) for bq in (32, 64, 128) for w in (4, 8)] if not interp else [(64, 4)]
for bq, w in settings:
    try:
        record("kernel from qkv", lambda qkv, b: A.attention_from_qkv(qkv, b, heads=H, new_order=True,
               interpret=interp, num_warps=w, block_q=bq), block_q=bq, num_warps=w)
        record("kernel, separate q, k, v", lambda qkv, b: A.attention(*split(qkv, b), interpret=interp,
               num_warps=w, block_q=bq), block_q=bq, num_warps=w)
    except Exception as e:
        print("FAILED", bq, w, type(e).__name__, str(e)[:300], flush=True)
