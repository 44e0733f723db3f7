"""Micro-benchmark of the UNet's GroupNorm (+ scale-shift + SiLU): XLA against the Pallas kernels.

    python experiments/bench_group_norm.py --out results.json [--block-n 8,16,32,64] [--num-warps 4,8]
        [--widths 32,64,128] [--tile-layouts auto|lanes,groups] [--repeats 7] [--batch 512]
    python experiments/bench_group_norm.py --out results.json --direction training --batch 128 [--dropout 0.3]
    python experiments/bench_group_norm.py --smoke --out /tmp/smoke.json    # CPU: interpreter, tiny shapes

For each activation shape of the ADM CIFAR-10 UNet in bf16 (POSITIONS_CHANNELS, at ``--batch`` images:
512 as the sampler, 128 as a training step) it times
(a) ``normalise_affine(..., silu=True, one_pass=False)`` jitted by XLA, (b) the same with
``one_pass=True``, and (c) the Triton kernel (``pallas_group_norm.forward(kernel='triton')``) at its
defaults, the Mosaic GPU kernel (``kernel='mosaic'``) where it runs and takes the shape (Hopper GPUs,
jax ≥ 0.11, no dropout), and the Triton kernel for every setting of the sweep (block_n positions per
tile × num_warps × padded channel width per program × tile layout, the settings the kernel rejects or whose
tile is outside [--min-tile, --max-tile] elements skipped), all with bf16 output. Before timing,
each kernel setting's float32 output (the Mosaic GPU kernel's bf16 one, relative to within a bf16 ulp: it
writes y in x's dtype) is checked against (a)'s (max abs difference; a setting over
--tolerance is reported and not timed). ``--direction training`` times instead the forward and backward
of one norm as a train step runs them (the gradients of ½Σy², :func:`gradients`): XLA two-pass,
one-pass, the forward and backward kernels at their defaults, and the backward kernel over the sweep's
settings (:func:`kernel_gradients`); float32 gradients are compared with (a)'s (there the difference is
the largest max abs difference relative to each gradient's largest value). ``--dropout`` applies the
ResBlocks' dropout inside the norm (the same seeds for every implementation, so the comparisons hold).

Timing: one jitted call runs the function on ``calls`` distinct inputs (so every call reads x from
DRAM, not L2, and host dispatch is paid once per ``calls``), chained by optimisation barriers so XLA
neither merges nor reorders them; ms per call is the median over ``--repeats`` timed calls after a
warm-up, divided by ``calls``. GB/s counts the ideal traffic: one read of x and one write of y (in
training also a read of x and dy and a write of dx). Results
go to ``--out`` as JSON with the device and the versions; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jdiff.models.group_norm import EPS, NUM_GROUPS, dropout_seeds, normalise_affine  # noqa: E402
from jdiff.models import mosaic_group_norm, pallas_group_norm  # noqa: E402
from jdiff.models.pallas_group_norm import unsupported_reason  # noqa: E402

POSITIONS_CHANNELS = [(1024, 128), (1024, 256), (1024, 384), (256, 256), (256, 512), (64, 256), (64, 512),
                      (16, 512)]  # (N = H·W, C) at 32², 16², 8², 4²
SMOKE_SHAPES = [(2, 16, 384), (2, 16, 128)]  # groups of 12 channels (masked lanes), of 4 (grouped tiles too)
DTYPE = jnp.bfloat16
INPUT_BYTES_PER_TIMING = 2 * 2**30  # distinct inputs per timed call: enough to dwarf L2 and dispatch


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def channels_for_width(channels: int, width: int, groups: int = NUM_GROUPS) -> int | None:
    """The most channels (whole groups dividing C) whose next power of two is ``width``, or None."""
    per_group = channels // groups
    fits = [k * per_group for k in range(1, groups + 1)
            if groups % k == 0 and width // 2 < k * per_group <= width]
    return max(fits) if fits else None


def inputs(shape: tuple[int, int, int], count: int, seed: int = 0):
    """``count`` distinct x (B, N, C) in bf16, with per-channel offsets and spreads, and a, b (B, C)."""
    batch, _, channels = shape
    key_a, key_b, key_x = jax.random.split(jax.random.key(seed), 3)
    a = 1.0 + 0.3 * jax.random.normal(key_a, (batch, channels))
    b = 0.5 * jax.random.normal(key_b, (batch, channels))
    xs = []
    for key in jax.random.split(key_x, count):
        k1, k2, k3 = jax.random.split(key, 3)
        offset = jax.random.normal(k1, (channels,))
        spread = jax.random.uniform(k2, (channels,), minval=0.5, maxval=3.0)
        xs.append((jax.random.normal(k3, shape) * spread + offset).astype(DTYPE))
    return xs, a, b


def chained(fn):
    """A jitted function running ``fn(x, *params)`` on each x of a list, one after the other."""
    fn = jax.jit(fn)  # lowered (and the kernel compiled) once, however many calls

    def run(xs, *params):
        ys = [fn(xs[0], *params)]
        for x in xs[1:]:
            # x becomes available only once the previous call's output exists: the calls stay separate
            x, _ = jax.lax.optimization_barrier((x, ys[-1]))
            ys.append(fn(x, *params))
        return ys
    return jax.jit(run)


def time_per_call(fn, xs, params: tuple, repeats: int) -> float:
    """Median seconds per call of ``fn(x, *params)`` over ``repeats`` runs of ``chained(fn)`` on xs, after a
    warm-up."""
    run = chained(fn)
    jax.block_until_ready(run(xs, *params))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(xs, *params))
        times.append((time.perf_counter() - start) / len(xs))
    return statistics.median(times)


def xla(one_pass: bool, out_dtype, drop: dict):
    return lambda x, a, b: normalise_affine(x, a, b, NUM_GROUPS, EPS, True, one_pass, out_dtype, "xla",
                                            drop.get("dropout", 0.0), drop.get("seeds"))


def pallas(setting: dict, out_dtype, interpret: bool, drop: dict):
    """The forward kernel with these settings: the Triton kernel unless ``setting`` names another."""
    return lambda x, a, b: pallas_group_norm.forward(x, a, b, silu=True, out_dtype=out_dtype,
                                                     interpret=interpret, **drop,
                                                     **{"kernel": "triton", **setting})[0]


BF16_ULP = 2.0**-7  # relative: a bf16 result rounded once is within half of it


def bf16_relative_diff(fn, reference, x, a, b) -> float:
    """max |y − reference| / max(|reference|, 0.01) for a bf16 output y against the float32 reference (below
    0.01 the float32 arithmetic's own differences would dominate a relative measure)."""
    y = jax.jit(fn)(x, a, b).astype(jnp.float32)
    return float(jnp.max(jnp.abs(y - reference) / jnp.maximum(jnp.abs(reference), 1e-2)))


def max_abs_diff(fn, reference, x, a, b) -> float:
    return float(jnp.max(jnp.abs(jax.jit(fn)(x, a, b) - reference)))


def settings(shape, args) -> list[dict]:
    """The kernel settings of the sweep that the kernel takes for this shape."""
    _, n, channels = shape
    out = []
    for width in args.widths:
        cpp = channels_for_width(channels, width)
        if cpp is None:
            continue
        for block_n in args.block_n:
            if not args.min_tile <= block_n * width <= args.max_tile:
                continue
            for layout in args.tile_layouts:
                if unsupported_reason(shape, DTYPE, block_n=block_n, channels_per_program=cpp,
                                      tile_layout=layout):
                    continue
                for num_warps in args.num_warps:
                    out.append(dict(block_n=block_n, channels_per_program=cpp, num_warps=num_warps,
                                    tile_layout=layout))
    return out


def gradients(implementation: str, one_pass: bool, out_dtype, drop: dict):
    """(dx, da, db) of ½Σy² for y = normalise_affine(x, a, b) with SiLU (and ``drop``'s dropout): one norm's
    forward and backward in a training step (dy = y)."""
    def loss(x, a, b):
        y = normalise_affine(x, a, b, NUM_GROUPS, EPS, True, one_pass, out_dtype, implementation,
                             drop.get("dropout", 0.0), drop.get("seeds"))
        return 0.5 * jnp.sum(jnp.square(y.astype(jnp.float32)))
    return jax.grad(loss, argnums=(0, 1, 2))


def max_relative_diff(fn, reference, x, a, b) -> float:
    """The largest of max |fn − reference| / max |reference| over the outputs (dx, da, db)."""
    got = jax.jit(fn)(x, a, b)
    return max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(got, reference))


def kernel_gradients(setting: dict, out_dtype, interpret: bool, drop: dict):
    """What ``gradients('pallas', ...)`` runs through normalise_affine's VJP, called directly so that the
    backward kernel's settings can be swept: the forward kernel at its defaults, then the backward with
    ``setting`` and dy = y (½Σy²'s cotangent)."""
    def run(x, a, b):
        y, mean, rstd = pallas_group_norm.forward(x, a, b, silu=True, out_dtype=out_dtype,
                                                  interpret=interpret, **drop)
        return pallas_group_norm.backward(x, y, a, b, mean, rstd, silu=True, interpret=interpret, **drop,
                                          **setting)
    return run


def bench_shape(shape, args) -> dict:
    """XLA two-pass, one-pass and the kernel over the sweep's settings: the forward, or (``--direction
    training``) the forward and backward, the sweep's settings applied to the backward kernel, plus the
    kernels at their defaults through normalise_affine as the UNet runs them."""
    training = args.direction == "training"
    tensor_bytes = np.prod(shape) * jnp.dtype(DTYPE).itemsize
    nbytes = (5 if training else 2) * tensor_bytes  # read x, write y; in training also read x, dy, write dx
    calls = 1 if args.smoke else int(np.clip(INPUT_BYTES_PER_TIMING // tensor_bytes, 2, 64))
    xs, a, b = inputs(shape, calls)
    drop = {}
    if args.dropout:
        drop = dict(dropout=args.dropout, seeds=dropout_seeds(jax.random.key(1), shape[0], shape[2]))

    def timed(label, fn, **extra) -> dict:
        seconds = time_per_call(fn, xs, (a, b), args.repeats)
        row = dict(extra, ms=seconds * 1e3, gbps=nbytes / seconds / 1e9)
        print(f"  {label} {json.dumps(row)}", flush=True)
        return row

    print(f"shape (B, N, C) = {shape}, {args.direction}, {calls} calls per timing", flush=True)
    result = dict(shape=list(shape), direction=args.direction, dropout=args.dropout, bytes=int(nbytes),
                  calls_per_timing=calls, pallas=[])
    if training:
        x = xs[0].astype(jnp.float32)
        reference = jax.jit(gradients("xla", False, jnp.float32, drop))(x, a, b)
        kernel = "pallas_interpret" if args.smoke else "pallas"
        result.update(xla_two_pass=timed("XLA two-pass", gradients("xla", False, DTYPE, drop)),
                      xla_one_pass=timed("XLA one-pass", gradients("xla", True, DTYPE, drop), max_diff_f32=(
                          max_relative_diff(gradients("xla", True, jnp.float32, drop), reference, x, a, b))))
        result["pallas"].append(timed("Pallas defaults", gradients(kernel, False, DTYPE, drop), ok=True,
                                      max_diff_f32=max_relative_diff(
                                          gradients(kernel, False, jnp.float32, drop), reference, x, a, b)))
        candidate, difference = kernel_gradients, max_relative_diff
    else:
        x = xs[0]
        reference = jax.jit(xla(False, jnp.float32, drop))(x, a, b)
        result.update(xla_two_pass=timed("XLA two-pass", xla(False, DTYPE, drop)),
                      xla_one_pass=timed("XLA one-pass", xla(True, DTYPE, drop), max_diff_f32=(
                          max_abs_diff(xla(True, jnp.float32, drop), reference, x, a, b))))
        candidate, difference = pallas, max_abs_diff
    # {}: the Triton kernel's defaults; the Mosaic GPU kernel where it runs and takes the shape
    mosaic = [dict(kernel="mosaic")] if (mosaic_group_norm.runs_here() and not args.dropout and (
        mosaic_group_norm.unsupported_reason(shape, DTYPE, DTYPE) is None)) else []
    sweep = settings(shape, args) if training else [{}] + mosaic + settings(shape, args)
    for setting in sweep:
        if setting.get("kernel") == "mosaic":  # y only in x's dtype: bf16 against (a)'s float32, relative
            diff, tolerance = bf16_relative_diff(candidate(setting, DTYPE, args.smoke, drop), reference, x, a,
                                                 b), BF16_ULP
        else:
            diff = difference(candidate(setting, jnp.float32, args.smoke, drop), reference, x, a, b)
            tolerance = args.tolerance
        if not diff <= tolerance:  # also NaN
            row = dict(setting, max_diff_f32=diff, ok=False)
            print(f"  Pallas {json.dumps(row)}: WRONG, not timed", flush=True)
        else:
            row = timed("Pallas", candidate(setting, DTYPE, args.smoke, drop), **setting, max_diff_f32=diff,
                        ok=True)
        result["pallas"].append(row)
    return result


def table(results: list[dict]) -> str:
    lines = ["| B, N, C | XLA two-pass ms (GB/s) | XLA one-pass ms (GB/s) | Pallas best ms (GB/s) "
             "| best setting (block_n, channels/program, warps, tile layout) | speed-up vs two-pass "
             "| its max diff from two-pass (training: relative) "
             "| settings wrong |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        two, one = r["xla_two_pass"], r["xla_one_pass"]
        ok = [p for p in r["pallas"] if p["ok"]]
        wrong = f"{len(r['pallas']) - len(ok)} of {len(r['pallas'])}"
        if ok:
            best = min(ok, key=lambda p: p["ms"])
            setting = (f"{best['block_n']}, {best['channels_per_program']}, {best['num_warps']}, "
                       f"{best['tile_layout']}" if "block_n" in best else best.get("kernel", "defaults"))
            diff = best["max_diff_f32"]
            pallas_cells = (f"{best['ms']:.3f} ({best['gbps']:.0f})", setting,
                            f"{two['ms'] / best['ms']:.2f}×", f"{diff:.1e}", wrong)
        else:
            pallas_cells = ("-", "-", "-", "-", wrong)
        lines.append(f"| {', '.join(map(str, r['shape']))} | {two['ms']:.3f} ({two['gbps']:.0f}) | "
                     f"{one['ms']:.3f} ({one['gbps']:.0f}) | " + " | ".join(pallas_cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, the kernel in Pallas's interpreter, one repeat: proves the script "
                             "runs")
    parser.add_argument("--block-n", type=parse_ints, default=[8, 16, 32, 64])
    parser.add_argument("--num-warps", type=parse_ints, default=[4, 8])
    parser.add_argument("--widths", type=parse_ints, default=[32, 64, 128],
                        help="padded channel widths per program (a power of two); each takes the most whole "
                             "groups that fit")
    parser.add_argument("--tile-layouts", type=lambda text: [v for v in text.split(",") if v],
                        default=["auto"],
                        help="the kernel's tile layouts to sweep (pallas_group_norm.TILE_LAYOUTS: auto, "
                             "lanes, groups); those a shape cannot take are skipped")
    parser.add_argument("--min-tile", type=int, default=1024,
                        help="fewest elements (block_n × width) per tile")
    parser.add_argument("--max-tile", type=int, default=4096, help="most elements (block_n × width) per tile")
    parser.add_argument("--direction", choices=("forward", "training"), default="forward",
                        help="the forward alone (with the kernel's sweep), or forward and backward as in "
                             "training")
    parser.add_argument("--batch", type=int, default=512, help="images per call (B)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout rate of the norm's output, as in the ResBlocks in training (same seeds "
                             "for XLA and the kernels, so their outputs and gradients are compared "
                             "as without)")
    parser.add_argument("--shapes", type=int, default=0, help="time only the first this many shapes (0: all)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest max difference of a correct setting's float32 output "
                             "(training: relative)")
    args = parser.parse_args(argv)
    unknown = set(args.tile_layouts) - set(pallas_group_norm.TILE_LAYOUTS)
    if unknown or not args.tile_layouts:
        parser.error(f"--tile-layouts: {sorted(unknown) or 'none given'}; choose from "
                     f"{', '.join(pallas_group_norm.TILE_LAYOUTS)}")
    if args.smoke:
        args.repeats, args.min_tile = 1, 1
        args.block_n, args.num_warps, args.widths = [8], [4], [32]
    shapes = SMOKE_SHAPES if args.smoke else [(args.batch, n, c) for n, c in POSITIONS_CHANNELS]
    shapes = shapes[:args.shapes] if args.shapes else shapes
    meta = dict(device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform, jax=jax.__version__,
                jaxlib=jaxlib.__version__, dtype=jnp.dtype(DTYPE).name, smoke=args.smoke,
                sweep=dict(block_n=args.block_n, num_warps=args.num_warps, widths=args.widths,
                           tile_layouts=args.tile_layouts, tile=[args.min_tile, args.max_tile]),
                repeats=args.repeats)
    print(json.dumps(meta), flush=True)
    results = []
    for shape in shapes:
        results.append(bench_shape(shape, args))
        with open(args.out, "w") as f:  # after every shape, so a run cut short keeps what it measured
            json.dump(dict(meta, results=results), f, indent=1)
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
