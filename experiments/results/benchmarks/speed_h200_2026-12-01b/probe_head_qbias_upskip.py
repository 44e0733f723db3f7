"""Micro-probes for the sampling step's avoidable passes (tenth session)."""
import json, re, statistics, sys, time
import jax, jax.numpy as jnp
import numpy as np

out = sys.argv[1]
res = {}
def timeit(f, *args, n=30):
    r = f(*args); jax.block_until_ready(r)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); r = f(*args); jax.block_until_ready(r); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6

def hlo(f, *args):
    return f.lower(*args).compile().as_text()

def kinds(text):
    calls = re.findall(r'custom_call_target="([^"]+)"', text)
    fus = re.findall(r'fusion\([^\n]*kind=(k\w+)', text)
    epi = re.findall(r'"epilogue":"(\w+)"', text)
    return dict(custom_calls=calls, fusions=fus, epilogues=epi)

key = jax.random.key(0)
B = 512
# (a) the output head: GN output (B,32,32,128) -> conv 3x3 -> 6 channels
x32 = jax.random.normal(key, (B, 32, 32, 128), jnp.float32)
w = jax.random.normal(key, (3, 3, 128, 6), jnp.float32) * 0.03
bias = jnp.zeros((6,), jnp.float32)
dn = ("NHWC", "HWIO", "NHWC")
def conv(x, w, pref=None):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn,
                                        preferred_element_type=pref)
head = {
  "f32": jax.jit(lambda x, w, b: conv(x, w) + b),
  "bf16_out_bf16": jax.jit(lambda x, w, b: (conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)) + b.astype(jnp.bfloat16)).astype(jnp.float32)),
  "bf16_pref_f32": jax.jit(lambda x, w, b: conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), jnp.float32) + b),
}
xb = x32.astype(jnp.bfloat16)
ref = np.asarray(conv(x32.astype(jnp.float64) if False else x32, w, None) + bias)
for name, f in head.items():
    # the input arrives in bf16 (except f32 variant: the GN writes f32)
    xin = x32 if name == "f32" else xb.astype(jnp.float32)
    g = jax.jit(lambda x, w, b, f=f: f(x, w, b)) 
    inp = x32 if name == "f32" else xb
    fn = head[name] if name == "f32" else jax.jit(lambda x, w, b, n=name: head[n](x, w, b))
    us = timeit(fn, inp, w, bias)
    val = np.asarray(fn(inp, w, bias), np.float64)
    res["head_" + name] = dict(us=us, rel_err=float(np.abs(val - ref).max() / np.abs(ref).max()),
                               hlo=kinds(hlo(fn, inp, w, bias)))
    print(name, res["head_" + name], flush=True)

# (b) the q projection with its bias: x (B*L, C) @ Wq + bq, L = 256, C = 256
xq = jax.random.normal(key, (B, 256, 256), jnp.bfloat16)
Wf = jax.random.normal(key, (256, 768), jnp.float32) * 0.05
bf = jax.random.normal(key, (768,), jnp.float32)
def q_current(x, W, b):
    W = W.astype(jnp.bfloat16)
    return x @ W[:, :256] + b[:256].astype(jnp.bfloat16)
def q_bias_first(x, W, b):
    W = W.astype(jnp.bfloat16); bq = b.astype(jnp.bfloat16)[:256]
    return x @ W[:, :256] + bq
def q_f32(x, W, b):
    W = W.astype(jnp.bfloat16)
    return (jnp.dot(x, W[:, :256], preferred_element_type=jnp.float32) + b[:256]).astype(jnp.bfloat16)
def q_dg(x, W, b):
    W = W.astype(jnp.bfloat16)
    y = jax.lax.dot_general(x.reshape(-1, 256), W[:, :256], (((1,), (0,)), ((), ())))
    return (y + b[:256].astype(jnp.bfloat16)).reshape(x.shape)
def q_sep(x, W, b):  # separate bias leaf already bf16
    return x @ W + b
Wb, bb = Wf[:, :256].astype(jnp.bfloat16), bf[:256].astype(jnp.bfloat16)
for name, f, args in (("current", q_current, (xq, Wf, bf)), ("bias_first", q_bias_first, (xq, Wf, bf)),
                      ("f32_then_round", q_f32, (xq, Wf, bf)), ("dot_general_2d", q_dg, (xq, Wf, bf)),
                      ("separate_bf16_leaves", q_sep, (xq, Wb, bb))):
    fn = jax.jit(f)
    res["q_" + name] = dict(us=timeit(fn, *args), hlo=kinds(hlo(fn, *args)))
    print(name, res["q_" + name], flush=True)

# (c) up-ResBlock end: conv out (B,32,32,256) + up(x16) then concat with skip (B,32,32,128)
h = jax.random.normal(key, (B, 32, 32, 256), jnp.bfloat16)
wc = jax.random.normal(key, (3, 3, 256, 256), jnp.bfloat16) * 0.02
cb = jnp.zeros((256,), jnp.bfloat16)
x16 = jax.random.normal(key, (B, 16, 16, 256), jnp.bfloat16)
skip = jax.random.normal(key, (B, 32, 32, 128), jnp.bfloat16)
def up(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
def side_input(h, x16, skip):
    return jnp.concatenate([conv(h, wc) + cb + up(x16), skip], -1)
def barrier(h, x16, skip):
    y = jax.lax.optimization_barrier(conv(h, wc) + cb)
    return jnp.concatenate([y + up(x16), skip], -1)
for name, f in (("side_input", side_input), ("barrier_concat", barrier)):
    fn = jax.jit(f)
    res["up_" + name] = dict(us=timeit(fn, h, x16, skip), hlo=kinds(hlo(fn, h, x16, skip)))
    print(name, res["up_" + name], flush=True)
json.dump(res, open(out, "w"), indent=1)
