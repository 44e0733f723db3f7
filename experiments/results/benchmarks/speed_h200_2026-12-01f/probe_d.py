"""Probe D: prototype v2 variants (bias in registers or written back, stores direct or by TMA, Pallas's automatic
barriers, ping-pong), each checked against cuDNN's attention and timed; and whether XLA puts a precomputed
(3C,) bias into the q|k|v product's epilogue."""
import json, os, sys, time, traceback
import numpy as np
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgpu_attn  # noqa: E402
from probe_b import timed, B, L, H, D, C, x, w, q_bias, current, bias768  # noqa: E402

out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
OUT = os.environ.get("OUT", "/tmp")


def save(row):
    out["rows"].append(row); print(row, flush=True)
    json.dump(out, open(os.path.join(OUT, "probe_d.json"), "w"), indent=1)


def run(name, fn, *args, **extra):
    try:
        save(dict(name=name, us=round(timed(fn, *args), 2), **extra))
    except Exception as e:  # noqa: BLE001
        save(dict(name=name, error=repr(e)[:600], **extra)); traceback.print_exc()


ref = current(x, w, q_bias).astype(jnp.float32)
qkv = (x @ w).reshape(B, L, H, 3, D)
b768 = bias768(q_bias)
qkv_biased = (x @ w + b768).reshape(B, L, H, 3, D)
variants = [dict(bias="writeback", auto_barriers=True), dict(bias="kernel"), dict(bias="kernel", store="direct"),
            dict(bias="kernel", pingpong=True), dict(bias="kernel", store="direct", pingpong=True),
            dict(bias="kernel", store="direct", stages=3), dict(bias="none"), dict(bias="none", store="direct")]
for kw in variants:
    try:
        src = qkv_biased if kw["bias"] == "none" else qkv
        o = mgpu_attn.attention(src, q_bias, **kw).astype(jnp.float32)
        err = float(jnp.max(jnp.abs(o - ref)))
    except Exception as e:  # noqa: BLE001
        save(dict(name=f"check {kw}", error=repr(e)[:1500])); traceback.print_exc(); continue
    run(f"attention {kw}", lambda s, b, kw=kw: mgpu_attn.attention(s, b, **kw), src, q_bias, max_abs_err=err)
run("attention cudnn alone", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
    *(qkv_biased[:, :, :, i] for i in range(3)))
run("product alone", lambda x, w: x @ w, x, w)
run("product + precomputed bias (3C,)", lambda x, w, b: x @ w + b, x, w, b768)
run("layer current", current, x, w, q_bias)
