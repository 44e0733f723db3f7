"""Probe (fifteenth session): the decoder's concatenation-free pieces on the GPU, batch 512, bf16.

1. pallas_group_norm.forward of x as two parts against x whole (the kernel 'auto' picks: Mosaic GPU at 32×32,
   Triton below): y, mean, rstd bit for bit, and µs per call, parts against whole and whole plus the
   concatenation that writes it.
2. The skip conv of the parts (layers.Conv1x1: the parts' 1×1 products summed) against the conv of the
   concatenation, µs, and the norm + skip conv of the parts against concatenation + norm + skip conv.
3. The attention block's residual: x + (t·W + b) added in x's (B, H, W, C) shape (as before) or in the
   product's (B, L, C) shape: whether XLA folds it into the GEMM (β = 1 in the optimised HLO) and µs.
Times: median of 5 timings of 20 calls in one jit, each call's inputs behind an optimisation barrier."""
import json, os, re, time, traceback
import numpy as np
import jax, jax.numpy as jnp
from jdiff.models import pallas_group_norm
from jdiff.models.layers import Conv1x1

OUT = os.environ.get("OUT", "/tmp")
out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}


def save(row):
    out["rows"].append(row)
    print(row, flush=True)
    json.dump(out, open(os.path.join(OUT, "probe_parts.json"), "w"), indent=1)


def timed(fn, *args, calls=20):
    def many(*args):
        outs = []
        for _ in range(calls):
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
    return round(float(np.median(times)) * 1e6, 2)


def attempt(name, body):
    try:
        save(dict(name=name, **body()))
    except Exception as e:  # noqa: BLE001
        save(dict(name=name, error=repr(e)[:800]))
        traceback.print_exc()


B = int(os.environ.get("PROBE_BATCH", 512))
keys = iter(jax.random.split(jax.random.key(0), 64))
for n, widths in ((1024, (128, 128)), (256, (256, 256)), (64, (256, 256)), (16, (256, 256))):
    parts = tuple((jax.random.normal(next(keys), (B, n, w)) * 2 + 1).astype(jnp.bfloat16) for w in widths)
    c = sum(widths)
    a = 1 + 0.1 * jax.random.normal(next(keys), (c,))
    b = 0.1 * jax.random.normal(next(keys), (c,))

    def norm(x, a, b):
        return pallas_group_norm.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16)

    def concat_norm(p0, p1, a, b):
        return norm(jnp.concatenate([p0, p1], axis=-1), a, b)

    def body(n=n, widths=widths, parts=parts, a=a, b=b, c=c):
        whole = jnp.concatenate(parts, axis=-1)
        got, want = jax.jit(norm)(parts, a, b), jax.jit(norm)(whole, a, b)
        same = all(bool(jnp.all(g == w)) for g, w in zip(got, want))
        kernel = "mosaic" if pallas_group_norm.mosaic_group_norm.preferred(whole.shape, whole.dtype,
                                                                         whole.dtype) else "triton"
        return dict(n=n, widths=widths, kernel=kernel, bit_for_bit=same,
                    us_parts=timed(lambda p0, p1, a, b: norm((p0, p1), a, b)[0], *parts, a, b),
                    us_whole=timed(lambda x, a, b: norm(x, a, b)[0], whole, a, b),
                    us_concat_and_whole=timed(lambda p0, p1, a, b: concat_norm(p0, p1, a, b)[0], *parts, a, b))
    attempt(f"group_norm_parts_{n}x{c}", body)

    def conv_body(n=n, widths=widths, parts=parts, a=a, b=b, c=c):
        side = int(round(n ** 0.5))
        images = tuple(p.reshape(B, side, side, -1) for p in parts)
        cout = widths[0]
        conv = Conv1x1(cout, dtype=jnp.bfloat16)
        params = conv.init(jax.random.key(1), jnp.concatenate(images, axis=-1))

        def split_conv(i0, i1):
            return conv.apply(params, (i0, i1))

        def whole_conv(i0, i1):
            return conv.apply(params, jnp.concatenate([i0, i1], axis=-1))

        def block_parts(i0, i1, a, b):  # what a decoder ResBlock reads of its input: norm and skip conv
            y = norm((i0.reshape(B, n, -1), i1.reshape(B, n, -1)), a, b)[0]
            return y, split_conv(i0, i1)

        def block_concat(i0, i1, a, b):
            x = jnp.concatenate([i0, i1], axis=-1)
            return norm(x.reshape(B, n, -1), a, b)[0], conv.apply(params, x)

        diff = jnp.abs(jax.jit(split_conv)(*images).astype(jnp.float32)
                       - jax.jit(whole_conv)(*images).astype(jnp.float32))
        return dict(n=n, widths=widths, cout=cout, max_abs_diff=float(diff.max()),
                    us_split_conv=timed(split_conv, *images), us_concat_conv=timed(whole_conv, *images),
                    us_norm_and_conv_parts=timed(block_parts, *images, a, b),
                    us_concat_norm_and_conv=timed(block_concat, *images, a, b))
    attempt(f"skip_conv_parts_{n}x{c}", conv_body)

for side, c in ((16, 256), (8, 256)):
    x = jax.random.normal(next(keys), (B, side, side, c), jnp.bfloat16)
    t = jax.random.normal(next(keys), (B, side * side, c), jnp.bfloat16)
    w = (jax.random.normal(next(keys), (c, c)) * c ** -0.5).astype(jnp.bfloat16)
    bias = (0.1 * jax.random.normal(next(keys), (c,))).astype(jnp.bfloat16)

    def image_shape(x, t, w, bias):
        return x + (t @ w + bias).reshape(x.shape)

    def token_shape(x, t, w, bias):
        return (x.reshape(t.shape) + (t @ w + bias)).reshape(x.shape)

    def residual_body(x=x, t=t, w=w, bias=bias, side=side, c=c):
        row = dict(side=side, c=c)
        for name, fn in (("image_shape", image_shape), ("token_shape", token_shape)):
            hlo = jax.jit(fn).lower(x, t, w, bias).compile().as_text()
            row[name] = dict(us=timed(fn, x, t, w, bias), fusions=len(re.findall(r"\bfusion\(", hlo)),
                             beta_one=bool(re.search(r'"beta":1', hlo)),
                             gemms=len(re.findall(r"__cublas", hlo)))
        row["max_abs_diff"] = float(jnp.abs(jax.jit(image_shape)(x, t, w, bias).astype(jnp.float32)
                                            - jax.jit(token_shape)(x, t, w, bias).astype(jnp.float32)).max())
        return row
    attempt(f"attention_residual_{side}x{side}", residual_body)
