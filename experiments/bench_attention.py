"""Micro-benchmark of the UNet's self-attention kernel: cuDNN and XLA (``jax.nn.dot_product_attention``)
against jdiff's one-tile kernel for short sequences (``jdiff.models.pallas_attention``, where it applies),
jdiff's Mosaic GPU kernel (``jdiff.models.mosaic_attention``, forward only, on Hopper GPUs with jax ≥ 0.11,
reading q, k, v from one (B, S, 3C) product as in the UNet, with a zero q bias) and the Pallas/Triton
flash-attention kernel that ships with JAX (``jax.experimental.pallas.ops.gpu.attention.mha``) over its
block sizes.

    python experiments/bench_attention.py --out attention.json [--batch 512] [--repeats 5]
    python experiments/bench_attention.py --out attention.json --direction training --batch 128
    python experiments/bench_attention.py --smoke --out /tmp/smoke.json   # CPU: XLA and the interpreters

The ADM CIFAR-10 UNet attends over 16×16, 8×8 and (the middle block) 4×4 positions with 8 heads of 32
channels (SHAPES). cuDNN's kernel is built for head widths of 64–128, so at 32 it runs far below the GPU's
matrix throughput; whether another kernel does better is what this measures. ``--direction forward``
times softmax(q·kᵀ/√d)·v at ``--batch`` images (the sampler's 512), ``training`` the gradients of ½Σo²
with respect to q, k, v (a train step's forward and backward, at 128). Every Pallas setting's float32
result is first compared with XLA's (max abs difference, relative to the largest value); one over
``--tolerance`` is reported and not timed. Timing as ``bench_group_norm.py``: distinct inputs per call
chained by optimisation barriers, median over ``--repeats``. TFLOP/s counts 4·B·H·S²·d per forward (and
2.5× that for forward + backward). Results as JSON with the device and versions; a markdown table is
printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_group_norm import INPUT_BYTES_PER_TIMING, parse_ints, time_per_call  # noqa: E402
from jdiff.models import mosaic_attention, pallas_attention  # noqa: E402

SHAPES = [(256, 8, 32), (64, 8, 32), (16, 8, 32)]  # (S = H·W positions, heads, head width) at 16², 8², 4²
SMOKE_SHAPES = {"forward": [(16, 2, 16), (128, 1, 16)], "training": [(16, 2, 16)]}  # the second: Mosaic
DTYPE = jnp.bfloat16
BACKWARD_FLOP_FACTOR = 2.5  # forward + backward ≈ 2.5 forwards for flash attention (recomputed S, P)


def pallas_mha():
    from jax.experimental.pallas.ops.gpu import attention
    return attention


def inputs(shape: tuple[int, int, int, int], count: int, seed: int = 0) -> list[tuple[jax.Array, ...]]:
    """``count`` distinct (q, k, v), each (B, S, heads, d) in bf16 with unit-variance entries."""
    keys = jax.random.split(jax.random.key(seed), 3 * count)
    return [tuple(jax.random.normal(keys[3 * i + j], shape, DTYPE) for j in range(3)) for i in range(count)]


def attention(implementation: str, setting: dict | None = None, interpret: bool = False):
    """(q, k, v) → softmax(q·kᵀ/√d)·v (B, S, heads, d) by ``implementation``: 'xla', 'cudnn', 'short'
    (jdiff's Triton kernel), 'mosaic' (jdiff's Mosaic GPU kernel, which takes (the (B, S, 3C) product, q's
    bias) instead: :func:`fused`) or 'pallas' (JAX's; ``setting``: block_q, block_k, backward blocks,
    num_warps, num_stages)."""
    if implementation in ("xla", "cudnn"):
        return lambda qkv: jax.nn.dot_product_attention(*qkv, implementation=implementation)
    if implementation == "short":
        return lambda qkv: pallas_attention.attention(*qkv, interpret=interpret)
    if implementation == "mosaic":  # setting: the number of heads
        return lambda product: pallas_attention.attention_from_qkv(
            *product, heads=setting["heads"], new_order=False, kernel="mosaic", interpret=interpret)
    attn = pallas_mha()
    setting = dict(setting or {})
    backward = setting.pop("backward_block", None)  # the backward kernels' blocks (training only)
    blocks = attn.BlockSizes(block_q=setting.pop("block_q"), block_k=setting.pop("block_k"),
                             block_q_dkv=backward, block_kv_dkv=backward, block_q_dq=backward,
                             block_kv_dq=backward)

    def run(qkv):
        q, k, v = qkv
        return attn.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, block_sizes=blocks, interpret=interpret,
                        **setting)
    return run


def fused(qkv: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    """(q, k, v) (B, S, heads, d) as the Mosaic kernel reads them: one (B, S, 3C) product in the legacy
    channel order (head, q|k|v, channel), and a zero q bias."""
    q, k, v = qkv
    batch, seq, heads, width = q.shape
    product = jnp.stack([q, k, v], axis=3).reshape(batch, seq, 3 * heads * width)
    return product, jnp.zeros((heads * width,), q.dtype)


def gradients(fn):
    """(dq, dk, dv) of ½Σo² for o = fn((q, k, v)): one attention's forward and backward in a train step."""
    return jax.grad(lambda qkv: 0.5 * jnp.sum(jnp.square(fn(qkv).astype(jnp.float32))))


def max_relative_diff(fn, reference, qkv) -> float:
    got = jax.tree.leaves(jax.jit(fn)(qkv))
    return max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)) / jnp.max(jnp.abs(r)))
               for g, r in zip(got, jax.tree.leaves(reference)))


def settings(seq: int, args) -> list[dict]:
    out = []
    for block_q, block_k, warps, stages, backward in itertools.product(
            args.block_q, args.block_k, args.num_warps, args.num_stages,
            args.backward_block if args.direction == "training" else [None]):
        if block_q > seq or block_k > seq or (backward or 0) > seq:
            continue
        setting = dict(block_q=block_q, block_k=block_k, num_warps=warps, num_stages=stages)
        out.append(setting if backward is None else dict(setting, backward_block=backward))
    return out


def bench_shape(shape, args) -> dict:
    training = args.direction == "training"
    batch, seq, heads, width = shape
    tensor_bytes = int(np.prod(shape)) * jnp.dtype(DTYPE).itemsize
    calls = 1 if args.smoke else int(np.clip(INPUT_BYTES_PER_TIMING // (3 * tensor_bytes), 2, 64))
    xs = inputs(shape, calls)
    flop = 4 * batch * heads * seq * seq * width * (BACKWARD_FLOP_FACTOR if training else 1)
    wrap = gradients if training else (lambda fn: fn)
    reference = jax.jit(wrap(attention("xla")))(tuple(t.astype(jnp.float32) for t in xs[0]))

    def timed(label, fn, inputs_=xs, **extra) -> dict:
        seconds = time_per_call(lambda qkv: fn(qkv), inputs_, (), args.repeats)
        row = dict(extra, ms=seconds * 1e3, tflops=flop / seconds / 1e12)
        print(f"  {label} {json.dumps(row)}", flush=True)
        return row

    print(f"shape (B, S, heads, d) = {shape}, {args.direction}, {calls} calls per timing", flush=True)
    result = dict(shape=list(shape), direction=args.direction, flop=flop, calls_per_timing=calls, pallas=[])
    implementations = ["xla"] if args.smoke else ["xla", "cudnn"]
    if pallas_attention.unsupported_reason(shape, DTYPE) is None:
        implementations.append("short")
    for name in implementations:
        fn = wrap(attention(name, interpret=args.smoke))
        result[name] = timed(name, fn, max_diff=max_relative_diff(fn, reference, xs[0]))
    mosaic = (mosaic_attention.unsupported_reason(shape, DTYPE) is None if args.smoke
              else mosaic_attention.preferred(shape, DTYPE))
    if mosaic and not training:  # its backward is XLA's: nothing of its own to time in training
        fn = attention("mosaic", dict(heads=heads), interpret=args.smoke)
        products = [fused(qkv) for qkv in xs]
        result["mosaic"] = timed("mosaic", fn, products,
                                 max_diff=max_relative_diff(fn, reference, products[0]))
    for setting in settings(seq, args):
        fn = wrap(attention("pallas", setting, args.smoke))
        try:
            diff = max_relative_diff(fn, reference, xs[0])
        except Exception as error:  # a block size the kernel or Triton rejects: reported, not timed
            row = dict(setting, ok=False, error=f"{type(error).__name__}: {str(error)[:200]}")
            print(f"  Pallas {json.dumps(row)}", flush=True)
            result["pallas"].append(row)
            continue
        if not diff <= args.tolerance:
            row = dict(setting, max_diff=diff, ok=False)
            print(f"  Pallas {json.dumps(row)}: WRONG, not timed", flush=True)
        else:
            row = timed("Pallas", fn, **setting, max_diff=diff, ok=True)
        result["pallas"].append(row)
    return result


def table(results: list[dict]) -> str:
    lines = ["| B, S, heads, d | direction | XLA ms (TFLOP/s) | cuDNN ms (TFLOP/s) "
             "| jdiff short ms (TFLOP/s) | jdiff Mosaic ms (TFLOP/s) | Pallas best ms (TFLOP/s) "
             "| best setting | vs cuDNN |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [f"{r[k]['ms']:.3f} ({r[k]['tflops']:.0f})" if k in r else "-"
                 for k in ("xla", "cudnn", "short", "mosaic")]
        ok = [p for p in r["pallas"] if p.get("ok")]
        if ok:
            best = min(ok, key=lambda p: p["ms"])
            setting = ", ".join(f"{k}={best[k]}" for k in ("block_q", "block_k", "num_warps", "num_stages",
                                                           "backward_block") if k in best)
            base = r.get("cudnn", r["xla"])["ms"]
            cells += [f"{best['ms']:.3f} ({best['tflops']:.0f})", setting, f"{base / best['ms']:.2f}×"]
        else:
            cells += ["-", "-", "-"]
        lines.append(f"| {', '.join(map(str, r['shape']))} | {r['direction']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shape, Pallas in its interpreter, one repeat")
    parser.add_argument("--direction", choices=("forward", "training"), default="forward")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block-q", type=parse_ints, default=[64, 128])
    parser.add_argument("--block-k", type=parse_ints, default=[64, 128, 256])
    parser.add_argument("--num-warps", type=parse_ints, default=[4, 8])
    parser.add_argument("--num-stages", type=parse_ints, default=[1, 2])
    parser.add_argument("--backward-block", type=parse_ints, default=[32, 64],
                        help="training: the backward kernels' q and kv blocks (all four the same)")
    parser.add_argument("--tolerance", type=float, default=2e-2,
                        help="largest max difference from XLA's float32 result, relative to its "
                             "largest value")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.block_q, args.block_k, args.num_warps, args.num_stages = 1, [16], [16], [4], [1]
        args.backward_block = [16]
    shapes = [(2 if args.smoke else args.batch, *s) for s in (SMOKE_SHAPES[args.direction] if args.smoke
                                                              else SHAPES)]
    meta = dict(device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform, jax=jax.__version__,
                jaxlib=jaxlib.__version__, dtype=jnp.dtype(DTYPE).name, smoke=args.smoke,
                repeats=args.repeats)
    print(json.dumps(meta), flush=True)
    results = []
    for shape in shapes:
        results.append(bench_shape(shape, args))
        with open(args.out, "w") as f:
            json.dump(dict(meta, results=results), f, indent=1)
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
