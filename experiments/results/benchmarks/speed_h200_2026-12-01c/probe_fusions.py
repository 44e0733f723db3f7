"""Compile-and-time probe (experiment only): does XLA give cuBLAS-Lt the residual x as its C operand when x has
other users, with and without a vector bias; does the head's product absorb the norm's apply as a prologue."""
import json, re, sys, time
import jax, jax.numpy as jnp

def describe(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    calls = re.findall(r'custom_call_target="([^"]+)"', hlo)
    epis = re.findall(r'"epilogue":"([A-Z_]+)"', hlo)
    betas = re.findall(r'"beta":([0-9.]+)', hlo)
    fusions = re.findall(r'kind=(k\w+)', hlo)
    f = jax.jit(fn); out = f(*args); jax.block_until_ready(out)
    ts = []
    for _ in range(20):
        t = time.perf_counter(); jax.block_until_ready(f(*args)); ts.append(time.perf_counter() - t)
    ts.sort()
    return dict(custom_calls=calls, epilogues=epis, betas=betas, fusions=fusions, us=ts[len(ts) // 2] * 1e6)

k = jax.random.split(jax.random.key(0), 8)
B, L, C = 512, 256, 256
x = jax.random.normal(k[0], (B, L, C), jnp.bfloat16)
a = jax.random.normal(k[1], (B, L, C), jnp.bfloat16)
W = (jax.random.normal(k[2], (C, C)) * 0.05).astype(jnp.bfloat16)
b = (jax.random.normal(k[3], (C,)) * 0.1).astype(jnp.bfloat16)
res = {}
res["residual_with_bias_x_shared"] = describe(lambda x, a, W, b: (x + (a @ W + b), x * 2), x, a, W, b)
res["residual_no_bias_x_shared"] = describe(lambda x, a, W: (x + a @ W, x * 2), x, a, W)
res["residual_no_bias_x_single"] = describe(lambda x, a, W: x + a @ W, x, a, W)
res["residual_bias_folded_into_x_shared"] = describe(lambda x, a, W, b: (a @ W + (x + b), x * 2), x, a, W, b)
# head: y f32 from the norm, product with the taps' kernel (128 -> 54), against the apply as a prologue
N, Ch = 1024, 128
h = jax.random.normal(k[4], (B, N, Ch), jnp.bfloat16)
y = jax.random.normal(k[5], (B, N, Ch), jnp.float32)
K = jax.random.normal(k[6], (Ch, 54), jnp.float32) * 0.05
sa = jax.random.normal(k[7], (B, 1, Ch), jnp.float32); sb = sa * 0.5
res["head_product_f32_input"] = describe(lambda y, K: y @ K, y, K)
res["head_product_apply_prologue"] = describe(lambda h, sa, sb, K: jax.nn.silu(h.astype(jnp.float32) * sa + sb) @ K, h, sa, sb, K)
res["head_product_f32_input_bf16x3"] = describe(lambda y, K: jnp.dot(y, K, precision=jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3), y, K)
for name, r in res.items():
    print(name, json.dumps({k: (v if k != "fusions" else sorted(set(v))) for k, v in r.items()}), flush=True)
json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, results=res), open(sys.argv[1], "w"), indent=1)
