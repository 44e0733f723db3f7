"""Probe B: the Mosaic GPU attention prototype (mgpu_attn.py) at 16x16 (L = 256, 8 heads of 32), batch 512:
checked against cuDNN's, timed against it alone and as the whole q|k|v-product-plus-attention step."""
import json, os, sys, time, traceback
import numpy as np
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgpu_attn  # noqa: E402

out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
OUT = os.environ.get("OUT", "/tmp")


def save(row):
    out["rows"].append(row)
    print(row, flush=True)
    json.dump(out, open(os.path.join(OUT, "probe_b.json"), "w"), indent=1)


def timed(fn, *args, calls=20):
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
        save(dict(name=name, error=repr(e)[:600], **extra))
        traceback.print_exc()


B, L, H, D = 512, 256, 8, 32
C = H * D
k = jax.random.split(jax.random.key(0), 6)
x = jax.random.normal(k[0], (B, L, C), jnp.bfloat16)
w = (jax.random.normal(k[1], (C, 3 * C)) * C ** -0.5 * 2).astype(jnp.bfloat16)  # legacy (head, q|k|v, d)
bias = (jax.random.normal(k[2], (3 * C,)) * 0.5).astype(jnp.bfloat16)
w4 = w.reshape(C, H, 3, D)
q_bias = bias.reshape(H, 3, D)[:, 0].reshape(C)


def current(x, w, q_bias):  # three products, q's bias added by XLA, cuDNN's attention
    w4 = w.reshape(C, H, 3, D)
    q, kk, v = (x @ w4[:, :, i].reshape(C, C) for i in range(3))
    q = q + q_bias
    sh = (B, L, H, D)
    return jax.nn.dot_product_attention(q.reshape(sh), kk.reshape(sh), v.reshape(sh), implementation="cudnn")


def bias768(q_bias):
    zeros = jnp.zeros((H, 2, D), q_bias.dtype)
    return jnp.concatenate([q_bias.reshape(H, 1, D), zeros], axis=1).reshape(3 * C)


def new(x, w, q_bias, **kw):  # one product with q's bias in its epilogue, the Mosaic kernel
    qkv = x @ w + bias768(q_bias)
    return mgpu_attn.attention(qkv.reshape(B, L, H, 3, D), **kw)


if __name__ == "__main__":
    ref = current(x, w, q_bias).astype(jnp.float32)
    save(dict(name="reference abs max", value=float(jnp.max(jnp.abs(ref)))))
    variants = [dict(stages=2), dict(stages=3)]
    for kw in variants:
        try:
            o = new(x, w, q_bias, **kw).astype(jnp.float32)
            err = float(jnp.max(jnp.abs(o - ref)))
            save(dict(name=f"check new {kw}", max_abs_err=err,
                      mean_abs_err=float(jnp.mean(jnp.abs(o - ref)))))
        except Exception as e:  # noqa: BLE001
            save(dict(name=f"check new {kw}", error=repr(e)[:1500]))
            traceback.print_exc()

    qkv = (x @ w + bias768(q_bias)).reshape(B, L, H, 3, D)
    q, kk, v = (qkv[:, :, :, i] for i in range(3))
    run("attention cudnn alone", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
        q, kk, v)
    for kw in variants:
        run(f"attention mosaic alone {kw}", lambda qkv, kw=kw: mgpu_attn.attention(qkv, **kw), qkv)
    run("layer current (3 products + bias + cudnn)", current, x, w, q_bias)
    for kw in variants:
        run(f"layer new (1 product with bias + mosaic) {kw}", lambda x, w, b, kw=kw: new(x, w, b, **kw), x, w, q_bias)
    run("product with bias epilogue", lambda x, w, b: x @ w + bias768(b), x, w, q_bias)
    run("product alone", lambda x, w: x @ w, x, w)
    # jax's Mosaic GPU flash attention (float16, heads padded to 64) as a reference
    try:
        from jax.experimental.pallas.ops.gpu import attention_mgpu
        pad = lambda t: jnp.pad(t.astype(jnp.float16), ((0, 0), (0, 0), (0, 0), (0, 32)))
        qp, kp, vp = pad(q * D ** -0.5), pad(kk), pad(v)
        for bq, bkv, steps in ((64, 128, 2), (64, 256, 2)):
            cfg = attention_mgpu.TuningConfig(block_q=bq, block_kv=bkv, max_concurrent_steps=steps)
            run(f"jax attention_mgpu f16 d64 {bq},{bkv},{steps}",
                lambda q, k, v, cfg=cfg: attention_mgpu.attention(q, k, v, cfg), qp, kp, vp)
    except Exception as e:  # noqa: BLE001
        save(dict(name="attention_mgpu", error=repr(e)[:400]))
