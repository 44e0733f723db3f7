"""Prototype v2: the statistics kernel's variants, a copy kernel as the bandwidth ceiling, XLA's reduction."""
import functools, json, sys, os
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))
sys.path.insert(0, os.path.join(os.getcwd(), ".dev"))
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from bench_group_norm import inputs, time_per_call, INPUT_BYTES_PER_TIMING
from gn_split import stats, combine, apply, current, INTERPRET


def _shifted_kernel(x_ref, mean_ref, m2_ref, *, rows, cw):
    c, j, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    cols = pl.ds(c * cw, cw)
    shift = plt.load(x_ref.at[b, j * rows, cols]).astype(jnp.float32)
    d = plt.load(x_ref.at[b, pl.ds(j * rows, rows), cols]).astype(jnp.float32) - shift[None]
    s1, s2 = d.sum(0), (d * d).sum(0)
    plt.store(mean_ref.at[b, j, cols], shift + s1 / rows)
    plt.store(m2_ref.at[b, j, cols], jnp.maximum(s2 - s1 * s1 / rows, 0.0))


def shifted(x, rows, cw, warps):
    B, N, C = x.shape
    out = jax.ShapeDtypeStruct((B, N // rows, C), jnp.float32)
    return pl.pallas_call(functools.partial(_shifted_kernel, rows=rows, cw=cw), out_shape=(out, out),
                          grid=(C // cw, N // rows, B), interpret=INTERPRET,
                          compiler_params=plt.CompilerParams(num_warps=warps))(x)


def _copy_kernel(x_ref, y_ref, *, rows, cw):
    c, j, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    at = (b, pl.ds(j * rows, rows), pl.ds(c * cw, cw))
    plt.store(y_ref.at[at], plt.load(x_ref.at[at]))


def copy(x, rows, cw, warps):
    B, N, C = x.shape
    return pl.pallas_call(functools.partial(_copy_kernel, rows=rows, cw=cw),
                          out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                          grid=(C // cw, N // rows, B), interpret=INTERPRET,
                          compiler_params=plt.CompilerParams(num_warps=warps))(x)


def xla_stats(x, a, b):
    shift = x[:, :1].astype(jnp.float32)
    d = x.astype(jnp.float32) - shift
    return d.sum(1), (d * d).sum(1)


def main():
    smoke = INTERPRET
    batch = 2 if smoke else 512
    reps = 1 if smoke else 5
    shapes = [(64, 384)] if smoke else [(1024, 128), (1024, 256), (1024, 384), (256, 256), (256, 512)]
    res = []
    for n, c in shapes:
        shape = (batch, n, c)
        calls = 1 if smoke else int(np.clip(INPUT_BYTES_PER_TIMING // (np.prod(shape) * 2), 2, 64))
        xs, a, b = inputs(shape, calls)
        ref = jax.jit(lambda x: stats(x, 16, 64 if c % 128 else 128, 4))(xs[0])
        def t(label, fn, setting=None):
            try:
                ms = time_per_call(fn, xs, (a, b), reps) * 1e3
            except Exception as e:  # noqa
                print(shape, label, setting, "failed", type(e).__name__, str(e)[:150], flush=True)
                return
            res.append(dict(shape=shape, label=label, setting=setting, ms=ms))
            print(shape, label, setting, round(ms, 4), flush=True)
        t("current", current)
        t("xla_stats", xla_stats)
        for cw in (64, 128, 256):
            if c % cw or cw > c:
                continue
            for rows in (32, 64, 128, 256, 512):
                if n % rows or not 2048 <= rows * cw <= 32768:
                    continue
                for w in (4, 8):
                    v = (rows, cw, w)
                    t("copy", lambda x, a, b, v=v: copy(x, *v), v)
                    t("stats_two_pass", lambda x, a, b, v=v: stats(x, *v), v)
                    t("stats_shifted", lambda x, a, b, v=v: shifted(x, *v), v)
                    t("stats_combine", lambda x, a, b, v=v: combine(*stats(x, *v), v[0], a, b)[2], v)
        if smoke:
            m1, q1 = combine(*stats(xs[0], 32, 128, 4), 32, a, b)[:2]
            m2, q2 = combine(*shifted(xs[0], 32, 128, 4), 32, a, b)[:2]
            print("shifted vs two-pass", float(jnp.max(jnp.abs(m1 - m2))), float(jnp.max(jnp.abs(q1 / q2 - 1))))
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "gn_split2.json"), "w") as f:
        json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, rows=res), f, indent=1)
    print("SUMMARY (best per label)")
    for n, c in shapes:
        for label in ("current", "xla_stats", "copy", "stats_two_pass", "stats_shifted", "stats_combine"):
            rows = [r for r in res if tuple(r["shape"][1:]) == (n, c) and r["label"] == label]
            if rows:
                r = min(rows, key=lambda r: r["ms"])
                print((n, c), label, r["setting"], round(r["ms"], 4))


if __name__ == "__main__":
    main()
