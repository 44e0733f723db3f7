"""Micro-benchmark of the UNet's convolutions: XLA's (cuDNN on GPUs) against one matrix product over patches.

    python experiments/bench_conv.py --out conv.json [--config configs/cifar10_baseline.py] [--batch 512]
        [--direction forward|training] [--repeats 7]
    python experiments/bench_conv.py --smoke --out /tmp/smoke.json     # CPU: a tiny UNet, one repeat

It traces the config's UNet (bf16 compute) at ``--batch`` images, collects every convolution it runs
(input and kernel shape, stride, padding, dtype) with how often each occurs, and times each distinct one
two ways: 'xla' (``lax.conv_general_dilated``, which XLA hands to cuDNN on GPUs) and 'matmul'
(:func:`patch_matmul_conv`, im2col: one matrix product of the gathered patches with the reshaped
kernel) — the forward alone, or (``--direction training``) the forward with the gradients of input and
kernel, as a train step runs them. Each one's float32 result is compared with XLA's at
``precision='highest'`` (relative max difference). Timing as in bench_group_norm.py (distinct inputs per
timed call, chained by optimisation barriers, median of ``--repeats``). The table gives per shape the time
of each, TFLOP/s, and the step's total (× occurrences). Results go to ``--out`` as JSON with the device and
versions.

It was written to test whether cuDNN is slow on the UNet's small (8×8, 4×4) feature maps, as an earlier
batch-128 forward-only measurement suggested; on an H200 it is not (docs/benchmarks.md, "Convolutions").
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402  (sets sys.path for jdiff too)
from bench_group_norm import INPUT_BYTES_PER_TIMING, time_per_call  # noqa: E402

from jdiff import train  # noqa: E402
from jdiff.models.unet import param_shapes  # noqa: E402


def patch_matmul_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                      padding: Sequence[tuple[int, int]], dimension_numbers=None,
                      precision=None) -> jax.Array:
    """y[b, i, j, f] = Σ_{u, v, c} x_pad[b, s·i + u, s·j + v, c] · w[u, v, c, f] for NHWC x and an HWIO
    kernel w: ``lax.conv_general_dilated``'s result as one matrix product of the (B·H'·W', kh·kw·C) patches
    with w reshaped to (kh·kw·C, F)."""
    if dimension_numbers not in (None, ("NHWC", "HWIO", "NHWC")):
        raise ValueError(f"patch_matmul_conv takes NHWC inputs and HWIO kernels, not {dimension_numbers}")
    kh, kw, channels, features = rhs.shape
    sh, sw = window_strides
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    batch, height, width, _ = x.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    # (u, v, c) along the last axis: the order of the HWIO kernel's first three axes
    patches = jnp.concatenate([
        lax.slice(x, (0, u, v, 0), (batch, u + (out_h - 1) * sh + 1, v + (out_w - 1) * sw + 1, channels),
                  (1, sh, sw, 1))
        for u in range(kh) for v in range(kw)], axis=-1)
    return lax.dot_general(patches, rhs.reshape(kh * kw * channels, features), (((3,), (0,)), ((), ())),
                           precision=precision)


IMPLEMENTATIONS = {"xla": lax.conv_general_dilated, "matmul": patch_matmul_conv}
ConvShape = collections.namedtuple("ConvShape", "input kernel strides padding dtype")


def sub_jaxprs(params: dict):
    """The jaxprs nested in an equation's parameters (pjit, custom_vjp, scan, cond, …)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def conv_shapes(jaxpr) -> collections.Counter:
    """How often each convolution (:class:`ConvShape`) occurs in a jaxpr, nested ones included."""
    found = collections.Counter()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            found[ConvShape(tuple(lhs.shape), tuple(rhs.shape), tuple(eqn.params["window_strides"]),
                            tuple(map(tuple, eqn.params["padding"])), jnp.dtype(lhs.dtype).name)] += 1
        for inner in sub_jaxprs(eqn.params):
            found.update(conv_shapes(inner))
    return found


def model_convs(config, batch: int) -> collections.Counter:
    """The convolutions of the config's UNet forward at ``batch`` images, in its compute dtype."""
    model = train.build_model(config)
    x, t, y = train.dummy_inputs(config, batch)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x, t, y, train=False))(param_shapes(model))
    return conv_shapes(jaxpr.jaxpr)


def conv_fn(implementation: str, shape: ConvShape, precision=None):
    conv = IMPLEMENTATIONS[implementation]
    numbers = ("NHWC", "HWIO", "NHWC")
    return lambda x, w: conv(x, w, shape.strides, shape.padding, dimension_numbers=numbers,
                             precision=precision)


def training_fn(forward):
    """The forward and the gradients of input and kernel for a given output cotangent, as in a train step."""
    def run(x, w, dy):
        y, vjp = jax.vjp(forward, x, w)
        return (y, *vjp(dy))
    return run


def max_relative_diff(outputs, references) -> float:
    return max(float(jnp.max(jnp.abs(o - r)) / jnp.max(jnp.abs(r))) for o, r in zip(outputs, references))


def bench_conv(shape: ConvShape, count: int, args) -> dict:
    training = args.direction == "training"
    dtype = jnp.dtype(shape.dtype)
    batch, height, width, channels = shape.input
    kh, kw, _, features = shape.kernel
    probe = jax.eval_shape(conv_fn("xla", shape), jax.ShapeDtypeStruct(shape.input, dtype),
                           jax.ShapeDtypeStruct(shape.kernel, dtype))
    flops = 2 * np.prod(probe.shape) * kh * kw * channels * (3 if training else 1)
    calls = 1 if args.smoke else int(np.clip(INPUT_BYTES_PER_TIMING
                                             // (np.prod(shape.input) * dtype.itemsize), 2, 64))
    keys = jax.random.split(jax.random.key(0), calls + 2)
    xs = [jax.random.normal(k, shape.input, dtype) for k in keys[2:]]
    w = (jax.random.normal(keys[0], shape.kernel) / np.sqrt(kh * kw * channels)).astype(dtype)
    params = (w, jax.random.normal(keys[1], probe.shape, dtype)) if training else (w,)
    wrap = training_fn if training else (lambda f: f)

    def outputs(implementation, precision, cast):
        fn = jax.jit(wrap(conv_fn(implementation, shape, precision)))
        result = fn(cast(xs[0]), *map(cast, params))
        return result if training else (result,)

    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    reference = outputs("xla", "highest", f32)
    row = dict(input=list(shape.input), kernel=list(shape.kernel), strides=list(shape.strides),
               padding=[list(p) for p in shape.padding], dtype=shape.dtype, output=list(probe.shape),
               count=count, gflop=flops / 1e9, calls_per_timing=calls)
    for implementation in IMPLEMENTATIONS:
        seconds = time_per_call(wrap(conv_fn(implementation, shape)), xs, params, args.repeats)
        row[implementation] = dict(
            ms=seconds * 1e3, tflops=flops / seconds / 1e12,
            max_relative_diff_f32=max_relative_diff(outputs(implementation, None, f32), reference))
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| input (B, H, W, C) | kernel | stride | count | XLA ms (TFLOP/s) | matmul ms (TFLOP/s) "
             "| speed-up | step total XLA / matmul / best ms |", "|---|---|---|---|---|---|---|---|"]
    totals = collections.Counter()
    for r in rows:
        xla, matmul = r["xla"]["ms"], r["matmul"]["ms"]
        step = {"xla": r["count"] * xla, "matmul": r["count"] * matmul, "best": r["count"] * min(xla, matmul)}
        totals.update(step)
        lines.append(f"| {', '.join(map(str, r['input']))} | "
                     f"{r['kernel'][0]}×{r['kernel'][1]}, {r['kernel'][3]} "
                     f"| {r['strides'][0]} | {r['count']} | {xla:.3f} ({r['xla']['tflops']:.0f}) "
                     f"| {matmul:.3f} ({r['matmul']['tflops']:.0f}) | {xla / matmul:.2f}× "
                     f"| {step['xla']:.2f} / {step['matmul']:.2f} / {step['best']:.2f} |")
    lines.append(f"| all | | | {sum(r['count'] for r in rows)} | | | | "
                 f"{totals['xla']:.2f} / {totals['matmul']:.2f}"
                 f" / {totals['best']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                         "cifar10_baseline.py"))
    parser.add_argument("--batch", type=int, default=512, help="images (512 as the sampler, 128 as training)")
    parser.add_argument("--direction", choices=("forward", "training"), default="forward")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny UNet at 2 images, its first two convolutions, "
                             "one repeat: proves the script runs")
    args = parser.parse_args(argv)
    config = benchmark.load_config(args.config)
    config.model.compute_dtype = "bfloat16"
    if args.smoke:
        args.repeats, args.batch = 1, 2
        config.data.image_size, config.model.model_channels, config.model.num_res_blocks = 8, 32, 1
        config.model.channel_mult, config.model.attention_resolutions = (1, 2), (4,)
    meta = dict(device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform, jax=jax.__version__,
                jaxlib=jaxlib.__version__, config=os.path.basename(args.config), batch=args.batch,
                direction=args.direction, repeats=args.repeats, smoke=args.smoke)
    print(json.dumps(meta), flush=True)
    rows = []
    convs = sorted(model_convs(config, args.batch).items(), key=lambda item: -item[0].input[1])
    for shape, count in convs[:2] if args.smoke else convs:
        rows.append(bench_conv(shape, count, args))
        with open(args.out, "w") as f:  # after every shape, so a run cut short keeps what it measured
            json.dump(dict(meta, results=rows), f, indent=1)
    print(table(rows), flush=True)


if __name__ == "__main__":
    main()
