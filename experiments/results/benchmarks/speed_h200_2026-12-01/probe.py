"""Probe: FP8 convolutions through XLA's F8 graph-conv rewrite; a one-tile Pallas attention for S <= 64."""
import functools, json, sys, os, time
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from bench_group_norm import time_per_call

CPU = jax.default_backend() == "cpu"
OUT = os.environ.get("OUT", "/tmp")
res = dict(device=jax.devices()[0].device_kind, jax=jax.__version__, conv=[], attention=[])
F8 = jnp.float8_e4m3fn


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_bf16(x, w):
    return conv(x, w)


def conv_f8(x8, w8, sw):
    return conv(x8.astype(jnp.bfloat16), w8.astype(jnp.bfloat16) * sw.astype(jnp.bfloat16))


def probe_conv():
    B = 2 if CPU else 512
    for hw, cin, cout, k in [(32, 128, 128, 3), (16, 256, 256, 3), (8, 256, 256, 3), (32, 384, 128, 3),
                             (32, 256, 128, 1)]:
        key = jax.random.key(hw * cin + cout)
        kx, kw = jax.random.split(key)
        count = 2 if CPU else 16
        xs = [jax.nn.silu(jax.random.normal(k_, (B, hw, hw, cin))).astype(jnp.bfloat16)
              for k_ in jax.random.split(kx, count)]
        w = (jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(jnp.bfloat16)
        sw = jnp.max(jnp.abs(w.astype(jnp.float32))) / 448.0
        w8 = (w.astype(jnp.float32) / sw).astype(F8)
        x8s = [x.astype(F8) for x in xs]
        flops = 2 * B * hw * hw * cin * cout * k * k
        row = dict(shape=(B, hw, hw, cin, cout, k))
        ref = jax.jit(conv_bf16)(xs[0].astype(jnp.float32), w.astype(jnp.float32))
        got = jax.jit(conv_f8)(x8s[0], w8, sw).astype(jnp.float32)
        row["f8_rel_err"] = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
        bf = jax.jit(conv_bf16)(xs[0], w).astype(jnp.float32)
        row["bf16_rel_err"] = float(jnp.linalg.norm(bf - ref) / jnp.linalg.norm(ref))
        hlo = jax.jit(conv_f8).lower(x8s[0], w8, sw).compile().as_text()
        row["f8_graph_conv"] = "convForwardGraph" in hlo
        reps = 1 if CPU else 7
        t_bf = time_per_call(conv_bf16, xs, (w,), reps)
        t_f8 = time_per_call(conv_f8, x8s, (w8, sw), reps)
        row.update(bf16_ms=t_bf * 1e3, f8_ms=t_f8 * 1e3, bf16_tflops=flops / t_bf / 1e12,
                   f8_tflops=flops / t_f8 / 1e12)
        print("conv", json.dumps(row), flush=True)
        res["conv"].append(row)


def _attn_kernel(q_ref, k_ref, v_ref, o_ref, *, scale):
    h, b = pl.program_id(0), pl.program_id(1)
    s_len, d = q_ref.shape[1], q_ref.shape[3]
    at = (b, pl.ds(0, s_len), h, pl.ds(0, d))
    q, k, v = (plt.load(r.at[at]) for r in (q_ref, k_ref, v_ref))
    logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
    p = jnp.exp(logits - logits.max(1, keepdims=True))
    o = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / p.sum(1, keepdims=True)
    plt.store(o_ref.at[at], o.astype(o_ref.dtype))


def one_tile_attention(q, k, v, warps=4):
    B, S, H, D = q.shape
    return pl.pallas_call(functools.partial(_attn_kernel, scale=D ** -0.5),
                          out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), grid=(H, B), interpret=CPU,
                          compiler_params=plt.CompilerParams(num_warps=warps))(q, k, v)


def probe_attention():
    B = 2 if CPU else 512
    for S in (64, 16, 256):
        if CPU and S == 256:
            continue
        keys = jax.random.split(jax.random.key(S), 3)
        count = 2 if CPU else 16
        qkvs = [tuple(jax.random.normal(kk, (B, S, 8, 32)).astype(jnp.bfloat16) for kk in jax.random.split(k_, 3))
                for k_ in jax.random.split(keys[0], count)]
        xs = [jnp.stack(t) for t in qkvs]  # (3, B, S, H, D) so the harness has one x per call
        q, k, v = (a.astype(jnp.float32) for a in qkvs[0])
        ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        row = dict(S=S, B=B)
        impls = {"pallas_w4": lambda x: one_tile_attention(*x, warps=4),
                 "pallas_w8": lambda x: one_tile_attention(*x, warps=8),
                 "pallas_w2": lambda x: one_tile_attention(*x, warps=2)}
        if not CPU:
            impls["cudnn"] = lambda x: jax.nn.dot_product_attention(*x, implementation="cudnn")
            impls["xla"] = lambda x: jax.nn.dot_product_attention(*x, implementation="xla")
        for name, fn in impls.items():
            try:
                got = jax.jit(fn)(xs[0]).astype(jnp.float32)
                err = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
                t = time_per_call(fn, xs, (), 1 if CPU else 7)
                row[name] = dict(ms=t * 1e3, err=err)
            except Exception as e:  # noqa
                row[name] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
        print("attention", json.dumps(row), flush=True)
        res["attention"].append(row)


probe_attention()
probe_conv()
with open(os.path.join(OUT, "probe.json"), "w") as f:
    json.dump(res, f, indent=1)
