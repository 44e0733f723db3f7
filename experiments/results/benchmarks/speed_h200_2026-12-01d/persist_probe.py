"""Probe: the GroupNorm forward kernel as a persistent grid of P programs, each looping over
(image, channel block) items, so that only P slabs are in flight and pass 2 re-reads from L2.
python experiments/results/benchmarks/speed_h200_2026-12-01d/persist_probe.py --out F [--smoke]"""
import argparse, json, os, sys, time, statistics
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from jdiff.models import pallas_group_norm as pgn
from jdiff.models.pallas_group_norm import _Program, _group_reductions, _next_power_of_2
from jdiff.models.group_norm import EPS, NUM_GROUPS
import bench_group_norm as bgn


def persistent_forward(x, a, b, *, programs, cpp, block_n, num_warps, interpret=False, out_dtype=jnp.bfloat16):
    B, n, C = x.shape
    per_group = C // NUM_GROUPS
    blocks = C // cpp
    items = B * blocks
    width = _next_power_of_2(cpp)

    def kernel(x_ref, a_ref, b_ref, y_ref, mean_ref, rstd_ref):
        pid = pl.program_id(0)
        lanes = None if width == cpp else jnp.arange(width) < cpp

        def item(j, carry):
            w = pid + j * programs
            image, blk = w // blocks, w % blocks
            program = _Program(image=image, cols=pl.ds(blk * cpp, width), lanes=lanes, width=width,
                               block_n=block_n, chunks=n // block_n)
            shift = program.load_channels(x_ref, row=jnp.int32(0))

            def centred(i, xt):
                d = xt - shift
                return d, d * d

            def normalise(sums):
                s1, s2 = sums
                mean_c = shift + s1 / n
                m2_c = jnp.maximum(s2 - s1 * s1 / n, 0.0)
                group_sum, to_lanes = _group_reductions(program, cpp, per_group)
                mean = to_lanes(group_sum(mean_c) / per_group)
                m2 = group_sum(m2_c + n * jnp.square(mean_c - mean))
                rstd = to_lanes(jax.lax.rsqrt(m2 / (n * per_group) + EPS))
                program.store_channels(mean_ref, mean)
                program.store_channels(rstd_ref, rstd)
                scale = rstd * program.load_channels(a_ref)
                bias = program.load_channels(b_ref)

                def apply(i, xt):
                    z = (xt - mean) * scale + bias
                    program.store_tile(y_ref, i, jax.nn.silu(z))
                return apply

            program.two_passes(lambda i, policy: (program.load_tile(x_ref, i, policy),), centred, 2, normalise)
            return carry

        count = (items - pid + programs - 1) // programs
        jax.lax.fori_loop(0, count, item, 0)

    per_channel = jax.ShapeDtypeStruct((B, C), jnp.float32)
    return pl.pallas_call(kernel, out_shape=(jax.ShapeDtypeStruct(x.shape, out_dtype), per_channel, per_channel),
                          grid=(programs,), compiler_params=plt.CompilerParams(num_warps=num_warps),
                          interpret=interpret, name="gn_persistent")(x, a, b)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    shapes = [(4, 64, 128), (3, 32, 384)] if args.smoke else [
        (512, 1024, 128), (512, 1024, 256), (512, 1024, 384), (512, 256, 256), (512, 256, 512), (512, 64, 512)]
    results = dict(device=str(jax.devices()[0]), jax=jax.__version__, rows=[])
    for shape in shapes:
        B, n, C = shape
        tb = int(np.prod(shape)) * 2
        calls = 2 if args.smoke else int(np.clip(bgn.INPUT_BYTES_PER_TIMING // tb, 2, 64))
        xs, a, b = bgn.inputs(shape, calls)
        ref = jax.jit(lambda x, a, b: pgn.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16,
                                                   interpret=args.smoke)[0])
        y0 = ref(xs[0], a, b).astype(jnp.float32)
        rows = []
        if not args.smoke:
            t = bgn.time_per_call(lambda x, a, b: pgn.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16)[0],
                                  xs, (a, b), args.repeats)
            rows.append(dict(shape=shape, variant="current defaults", us=t * 1e6, gbps=2 * tb / t / 1e9))
            print(rows[-1], flush=True)
        cands = []
        for cpp in (32, 48, 64, 96):
            if cpp % (C // NUM_GROUPS) or C % cpp or cpp > C:
                continue
            block_n = 16 if args.smoke else pgn.default_block_n(n, cpp)
            for programs in ((2, 5) if args.smoke else (132, 264, 528)):
                for warps in ((4,) if args.smoke else (4, 8)):
                    cands.append((cpp, programs, block_n, warps))
        for cpp, programs, block_n, warps in cands:
            fn = lambda x, a, b, cpp=cpp, programs=programs, block_n=block_n, warps=warps: persistent_forward(
                x, a, b, programs=programs, cpp=cpp, block_n=block_n, num_warps=warps, interpret=args.smoke)[0]
            try:
                diff = float(jnp.max(jnp.abs(jax.jit(fn)(xs[0], a, b).astype(jnp.float32) - y0)))
                t = float("nan") if args.smoke else bgn.time_per_call(fn, xs, (a, b), args.repeats)
            except Exception as e:
                rows.append(dict(shape=shape, variant=f"cpp{cpp} P{programs} bn{block_n} w{warps}", error=str(e)[:300]))
                print(rows[-1], flush=True)
                continue
            rows.append(dict(shape=shape, variant=f"cpp{cpp} P{programs} bn{block_n} w{warps}", us=t * 1e6,
                             gbps=2 * tb / t / 1e9, max_diff=diff))
            print(rows[-1], flush=True)
        results["rows"] += rows
        json.dump(results, open(args.out, "w"), indent=1)
        good = [r for r in rows if "us" in r and r["variant"] != "current defaults"]
        if good and not args.smoke:
            best = min(good, key=lambda r: r["us"])
            print("BEST", shape, best, "vs", rows[0]["us"], flush=True)


main()
