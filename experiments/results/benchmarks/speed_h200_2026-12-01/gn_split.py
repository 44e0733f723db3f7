"""Prototype: GroupNorm forward as a split-N statistics kernel + XLA combine + apply kernel."""
import functools, json, sys, os, platform
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from jdiff.models import pallas_group_norm
from bench_group_norm import inputs, time_per_call, INPUT_BYTES_PER_TIMING

G = 32; EPS = 1e-5
INTERPRET = jax.default_backend() == "cpu"


def _stats_kernel(x_ref, mean_ref, m2_ref, *, rows, cw):
    c, j, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    x = plt.load(x_ref.at[b, pl.ds(j * rows, rows), pl.ds(c * cw, cw)]).astype(jnp.float32)
    mean = x.sum(0) / rows
    m2 = jnp.square(x - mean).sum(0)
    plt.store(mean_ref.at[b, j, pl.ds(c * cw, cw)], mean)
    plt.store(m2_ref.at[b, j, pl.ds(c * cw, cw)], m2)


def stats(x, rows, cw, warps):
    B, N, C = x.shape
    out = jax.ShapeDtypeStruct((B, N // rows, C), jnp.float32)
    return pl.pallas_call(functools.partial(_stats_kernel, rows=rows, cw=cw), out_shape=(out, out),
                          grid=(C // cw, N // rows, B), interpret=INTERPRET,
                          compiler_params=plt.CompilerParams(num_warps=warps))(x)


def combine(mean_t, m2_t, rows, a, b):
    B, chunks, C = mean_t.shape
    n = rows * chunks
    mean_c = mean_t.mean(1)
    m2_c = m2_t.sum(1) + rows * jnp.square(mean_t - mean_c[:, None]).sum(1)
    mg = mean_c.reshape(B, G, -1)
    mean_g = mg.mean(-1, keepdims=True)
    m2_g = m2_c.reshape(B, G, -1).sum(-1, keepdims=True) + n * jnp.square(mg - mean_g).sum(-1, keepdims=True)
    rstd = jax.lax.rsqrt(m2_g / (n * mg.shape[-1]) + EPS)
    mean = jnp.broadcast_to(mean_g, mg.shape).reshape(B, C)
    rstd = jnp.broadcast_to(rstd, mg.shape).reshape(B, C)
    scale = a * rstd
    return mean, rstd, scale, b - mean * scale


def _apply_kernel(x_ref, s_ref, t_ref, y_ref, *, rows, cw):
    c, j, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    cols = pl.ds(c * cw, cw)
    x = plt.load(x_ref.at[b, pl.ds(j * rows, rows), cols]).astype(jnp.float32)
    z = x * plt.load(s_ref.at[b, cols])[None] + plt.load(t_ref.at[b, cols])[None]
    plt.store(y_ref.at[b, pl.ds(j * rows, rows), cols], jax.nn.silu(z).astype(y_ref.dtype),
              eviction_policy="evict_first")


def apply(x, s, t, rows, cw, warps):
    B, N, C = x.shape
    return pl.pallas_call(functools.partial(_apply_kernel, rows=rows, cw=cw),
                          out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                          grid=(C // cw, N // rows, B), interpret=INTERPRET,
                          compiler_params=plt.CompilerParams(num_warps=warps))(x, s, t)


def split(srows, scw, swarps, arows, acw, awarps, xla_apply=False):
    def fn(x, a, b):
        mean_t, m2_t = stats(x, srows, scw, swarps)
        _, _, s, t = combine(mean_t, m2_t, srows, a, b)
        if xla_apply:
            return jax.nn.silu(x.astype(jnp.float32) * s[:, None] + t[:, None]).astype(x.dtype)
        return apply(x, s, t, arows, acw, awarps)
    return fn


def current(x, a, b):
    return pallas_group_norm.forward(x, a, b, silu=True, out_dtype=x.dtype, interpret=INTERPRET)[0]


def stats_only(srows, scw, swarps):
    return lambda x, a, b: stats(x, srows, scw, swarps)[0]


def main():
    smoke = INTERPRET
    batch = 2 if smoke else 512
    shapes = [(64, 384)] if smoke else [(1024, 128), (1024, 256), (1024, 384), (256, 256), (256, 512),
                                         (64, 256), (64, 512), (16, 512)]
    results = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, rows=[])
    for n, c in shapes:
        shape = (batch, n, c)
        nbytes = 2 * np.prod(shape) * 2
        calls = 1 if smoke else int(np.clip(INPUT_BYTES_PER_TIMING // (nbytes // 2), 2, 64))
        xs, a, b = inputs(shape, calls)
        ref = jax.jit(current)(xs[0], a, b).astype(jnp.float32)
        row = dict(shape=shape)
        row["current_ms"] = time_per_call(current, xs, (a, b), 1 if smoke else 5) * 1e3
        print(shape, "current", row["current_ms"], flush=True)
        variants = []
        for cw in sorted({min(c, 64), min(c, 128)}):
            if c % cw:
                continue
            for rows in (16, 32, 64, 128):
                if n % rows or rows * cw > 16384 or rows * cw < 1024:
                    continue
                for w in (4, 8):
                    variants.append((rows, cw, w))
        best = {}
        for kind in ("stats", "split"):
            for v in variants:
                if kind == "stats":
                    fn = stats_only(*v)
                else:
                    s = best["stats"][1]
                    fn = split(*s, *v)
                try:
                    ms = time_per_call(fn, xs, (a, b), 1 if smoke else 5) * 1e3
                except Exception as e:  # noqa
                    print(shape, kind, v, "failed", type(e).__name__, str(e)[:200], flush=True)
                    continue
                if kind == "split":
                    err = float(jnp.max(jnp.abs(jax.jit(fn)(xs[0], a, b).astype(jnp.float32) - ref)))
                else:
                    err = None
                row.setdefault(kind, []).append(dict(setting=v, ms=ms, err=err))
                print(shape, kind, v, round(ms, 4), err, flush=True)
                if kind not in best or ms < best[kind][0]:
                    best[kind] = (ms, v)
        s = best["stats"][1]
        fn = split(*s, 0, 0, 0, xla_apply=True)
        row["xla_apply_ms"] = time_per_call(fn, xs, (a, b), 1 if smoke else 5) * 1e3
        row["xla_apply_err"] = float(jnp.max(jnp.abs(jax.jit(fn)(xs[0], a, b).astype(jnp.float32) - ref)))
        row["best"] = {k: v for k, v in best.items()}
        print(shape, "BEST", best, "xla apply", row["xla_apply_ms"], "current", row["current_ms"], flush=True)
        results["rows"].append(row)
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, "gn_split.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print("SUMMARY")
    for r in results["rows"]:
        print(r["shape"], "current %.4f" % r["current_ms"], "split %.4f %s" % r["best"]["split"],
              "stats %.4f %s" % r["best"]["stats"], "xla-apply %.4f" % r["xla_apply_ms"])


if __name__ == "__main__":
    main()
