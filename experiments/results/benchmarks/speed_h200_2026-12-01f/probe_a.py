"""Probe A (fourteenth session): where a few of the sampling step's kernels could go faster, batch 512, bf16.

1. the input conv 3 -> 128 at 32x32: as now, with x and the kernel padded to 4/8/16 input channels, and as a
   patch matrix product;
2. attention at 16x16 (L = 256, 8 heads of 32): cuDNN (now) against jax's Mosaic GPU flash attention with
   the heads padded to 64 channels (a reference for what a wgmma kernel reaches), and XLA's;
3. the q, k, v products at 16x16: three (256, 256) products against one (256, 768).
Timed back to back (jit dispatches of 20 calls, median of 5), and as a loop of 20 inside one jit.
"""
import json, os, time, traceback
import numpy as np
import jax, jax.numpy as jnp

out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
OUT = os.environ.get("OUT", "/tmp")


def save(row):
    out["rows"].append(row)
    print(row, flush=True)
    json.dump(out, open(os.path.join(OUT, "probe_a.json"), "w"), indent=1)


def timed(fn, *args, calls=20):
    """µs per call: `calls` calls inside one jit on the same inputs, each result kept (summed norm-free)."""
    def many(*args):
        outs = []
        for i in range(calls):
            args = jax.lax.optimization_barrier(args)
            outs.append(fn(*args))
        return outs
    f = jax.jit(many)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t) / calls)
    return float(np.median(times)) * 1e6


def run(name, fn, *args, **extra):
    try:
        us = timed(fn, *args)
        save(dict(name=name, us=round(us, 2), **extra))
    except Exception as e:  # noqa: BLE001
        save(dict(name=name, error=repr(e)[:400], **extra))
        traceback.print_exc()


k = jax.random.split(jax.random.key(0), 8)
B = 512

# 1. the input conv
x = jax.random.normal(k[0], (B, 32, 32, 3), jnp.bfloat16)
w = (jax.random.normal(k[1], (128, 3, 3, 3)) * 0.2).astype(jnp.bfloat16)  # OHWI
bias = jnp.zeros((128,), jnp.bfloat16)


def conv(x, w, bias):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "OHWI", "NHWC")) + bias


ref = conv(x, w, bias)
run("conv_in c3", conv, x, w, bias)
for c in (4, 8, 16):
    def padded(x, w, bias, c=c):
        xp = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, c - 3)))
        wp = jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, c - 3)))
        return conv(xp, wp, bias)
    err = float(jnp.max(jnp.abs(padded(x, w, bias).astype(jnp.float32) - ref.astype(jnp.float32))))
    run(f"conv_in padded c{c}", padded, x, w, bias, err=err)
    xp = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, c - 3)))
    wp = jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, c - 3)))
    run(f"conv_in prepadded c{c} (conv only)", conv, xp, wp, bias)


def patches(x, w, bias):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [xp[:, i:i + 32, j:j + 32, :] for i in range(3) for j in range(3)]
    cols.append(jnp.zeros((*x.shape[:3], 5), x.dtype))
    p = jnp.concatenate(cols, axis=-1)  # (B, 32, 32, 32)
    wm = jnp.concatenate([w.transpose(1, 2, 3, 0).reshape(27, 128), jnp.zeros((5, 128), w.dtype)])
    return p @ wm + bias


err = float(jnp.max(jnp.abs(patches(x, w, bias).astype(jnp.float32) - ref.astype(jnp.float32))))
run("conv_in patches", patches, x, w, bias, err=err)

# 2. attention at 16x16
L, H, D = 256, 8, 32
q, kk, v = (jax.random.normal(k[i], (B, L, H, D), jnp.bfloat16) for i in (2, 3, 4))
run("attention cudnn", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"), q, kk, v)
run("attention xla", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"), q, kk, v)
try:
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    pad = lambda t: jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, 32)))
    qp, kp, vp = pad(q * (D ** -0.5)), pad(kk), pad(vp := v)
    refo = jax.nn.dot_product_attention(q, kk, v, implementation="cudnn").astype(jnp.float32)
    for bq, bkv, steps in ((64, 128, 2), (64, 256, 2), (64, 64, 2), (64, 64, 4)):
        cfg = attention_mgpu.TuningConfig(block_q=bq, block_kv=bkv, max_concurrent_steps=steps)
        try:
            o = attention_mgpu.attention(qp, kp, vp, cfg)
            err = float(jnp.max(jnp.abs(o[..., :32].astype(jnp.float32) - refo)))
        except Exception as e:  # noqa: BLE001
            save(dict(name=f"attention mgpu d64 {bq},{bkv},{steps}", error=repr(e)[:400]))
            continue
        run(f"attention mgpu d64 {bq},{bkv},{steps} (padded inputs)",
            lambda q, k, v, cfg=cfg: attention_mgpu.attention(q, k, v, cfg), qp, kp, vp, err=err)
except Exception as e:  # noqa: BLE001
    save(dict(name="attention mgpu import", error=repr(e)[:400]))

# 3. q, k, v products
t = jax.random.normal(k[5], (B, L, 256), jnp.bfloat16)
wq = (jax.random.normal(k[6], (256, 768)) * 0.05).astype(jnp.bfloat16)
run("qkv three products", lambda t, w: [t @ w[:, i * 256:(i + 1) * 256] for i in range(3)], t, wq)
run("qkv one product", lambda t, w: t @ w, t, wq)
run("proj 256x256", lambda t, w: t @ w[:, :256], t, wq)
