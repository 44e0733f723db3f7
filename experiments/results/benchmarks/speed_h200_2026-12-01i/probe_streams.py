"""Probe (seventeenth session): can two halves of the sampler's batch overlap on two CUDA streams?

The UNet's small kernels (8×8 and 4×4 maps, norms, the attention) leave most SMs idle; with the batch's halves
on two streams (jax's compute_on('gpu_stream:k'), XLA's --xla_gpu_experimental_stream_annotation) one half's
small kernels could run beside the other's convolutions. Times the sampler's model_fn (hoisted weights,
train=False, bf16, 'auto' kernels) per call: plain at batch 512 and 256, the halves in one program on the
default stream, and the halves on streams 1 and 2. Median of --repeats windows of --calls calls; JSON to --out.
"""
import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core
from jax.experimental.compute_on import compute_on

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))

import benchmark  # noqa: E402
from jdiff import compilation, train  # noqa: E402
from jdiff.samplers.hoisting import model_fn_with_hoisted_weights  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--total", type=int, default=512)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="plain,plain-half,halves,streams")
    p.add_argument("--config", default="configs/cifar10_baseline.py")
    p.add_argument("--small", action="store_true", help="CPU smoke: a tiny model")
    args = p.parse_args()

    config = benchmark.load_config(args.config)
    benchmark.apply_variant(config, "bf16-auto")
    if args.small:
        config.model.model_channels = 32
        config.model.num_res_blocks = 1
    model = train.build_model(config)
    x0, t0, _ = train.dummy_inputs(config)
    params = model.init({"params": jax.random.key(0)}, x0, t0, train=False)["params"]
    params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)

    def apply(params, x, t):
        return model.apply({"params": params}, x, t, None, train=False)

    tail = x0.shape[1:]
    options = compilation.compiler_options()
    results = dict(environment=benchmark.environment(), xla_flags=os.environ.get("XLA_FLAGS"), rows=[])

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)

    def time_fn(name, fn, x, t, reference=None):
        row = dict(name=name, batch=x.shape[0])
        try:
            t_start = time.perf_counter()
            out = jax.block_until_ready(fn(x, t))
            row["compile_s"] = time.perf_counter() - t_start
        except Exception as e:  # noqa: BLE001 (a probe: record and go on)
            row["error"] = repr(e)[:600]
            results["rows"].append(row)
            print(row, flush=True)
            save()
            return None
        windows = []
        for _ in range(args.repeats):
            t_start = time.perf_counter()
            for _ in range(args.calls):
                out = fn(x, t)
            jax.block_until_ready(out)
            windows.append((time.perf_counter() - t_start) / args.calls)
        ms = statistics.median(windows) * 1e3
        row.update(ms_per_call=ms, us_per_image=ms * 1e3 / x.shape[0],
                   spread=(max(windows) - min(windows)) / min(windows))
        if reference is not None:
            d = np.abs(np.asarray(out, np.float32) - reference)
            row.update(max_diff=float(d.max()), mean_diff=float(d.mean()))
        results["rows"].append(row)
        print(row, flush=True)
        save()
        return np.asarray(out, np.float32)

    key = jax.random.key(2)
    half = args.total // 2
    x = jax.random.normal(key, (args.total,) + tail, jnp.float32)
    t = jnp.full((args.total,), 500, jnp.int32)
    full_fn = model_fn_with_hoisted_weights(apply, params, x.shape, jnp.float32)
    half_fn = model_fn_with_hoisted_weights(apply, params, (half,) + tail, jnp.float32)
    variants = args.variants.split(",")
    reference = None
    if "plain" in variants:
        reference = time_fn("plain", jax.jit(full_fn, compiler_options=options), x, t)
    if "plain-half" in variants:
        time_fn("plain-half", jax.jit(half_fn, compiler_options=options), x[:half], t[:half])

    def halves(x, t, streams):
        outs = []
        for i, stream in enumerate(streams):
            f = half_fn if stream is None else compute_on(
                half_fn, compute_type=f"gpu_stream:{stream}", out_memory_spaces=core.MemorySpace.Device)
            outs.append(f(x[i * half:(i + 1) * half], t[i * half:(i + 1) * half]))
        return jnp.concatenate(outs)

    for name, streams in (("halves", (None, None)), ("streams", (1, 2)), ("stream-1-default", (1, None))):
        if name in variants:
            time_fn(name, jax.jit(lambda x, t, s=streams: halves(x, t, s), compiler_options=options), x, t,
                    reference)
    save()


if __name__ == "__main__":
    main()
