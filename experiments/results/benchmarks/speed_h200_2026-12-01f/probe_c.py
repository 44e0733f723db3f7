"""Probe C: the Mosaic attention prototype with q's bias added in the kernel: checked against cuDNN's; ablations
(no exp, no softmax) to see where its time goes; the whole layer against the current one."""
import json, os, sys, time, traceback
import numpy as np
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgpu_attn  # noqa: E402
from probe_b import timed, B, L, H, D, C, x, w, q_bias, current  # noqa: E402

out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
OUT = os.environ.get("OUT", "/tmp")


def save(row):
    out["rows"].append(row); print(row, flush=True)
    json.dump(out, open(os.path.join(OUT, "probe_c.json"), "w"), indent=1)


def run(name, fn, *args, **extra):
    try:
        save(dict(name=name, us=round(timed(fn, *args), 2), **extra))
    except Exception as e:  # noqa: BLE001
        save(dict(name=name, error=repr(e)[:600], **extra)); traceback.print_exc()


def new(x, w, q_bias, **kw):
    return mgpu_attn.attention((x @ w).reshape(B, L, H, 3, D), q_bias, **kw)


ref = current(x, w, q_bias).astype(jnp.float32)
o = new(x, w, q_bias).astype(jnp.float32)
save(dict(name="check new", max_abs_err=float(jnp.max(jnp.abs(o - ref))), ref_max=float(jnp.max(jnp.abs(ref))),
          mean_abs_err=float(jnp.mean(jnp.abs(o - ref)))))
qkv = (x @ w).reshape(B, L, H, 3, D)
for kw in (dict(), dict(mode="no_exp"), dict(mode="no_softmax"), dict(stages=3)):
    run(f"attention mosaic alone {kw}", lambda qkv, b, kw=kw: mgpu_attn.attention(qkv, b, **kw), qkv, q_bias)
run("layer current (3 products + bias + cudnn)", current, x, w, q_bias)
run("layer new (1 product + mosaic with bias)", new, x, w, q_bias)
