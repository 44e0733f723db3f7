"""Probe: does a sampling step of batch 512 get faster when the UNet runs on chunks of the batch in turn
(each chunk's activations small enough to stay in the 50 MB L2 between a layer and the next)?

Times the sampler's model_fn (hoisted weights, train=False, bf16, 'auto' kernels) per call:
  - plain at batch B for B in --batches (per-image cost at each batch),
  - batch 512 split into k chunks, each chunk's forward ordered after the previous one's by an
    optimisation barrier (so XLA cannot interleave them), for k in --chunks.
Median of --repeats windows of --calls calls. Writes JSON to --out.
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

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))

import benchmark  # noqa: E402
from jdiff import compilation, train  # noqa: E402
from jdiff.samplers.hoisting import model_fn_with_hoisted_weights  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batches", default="64,128,256,512")
    p.add_argument("--chunks", default="2,4,8")
    p.add_argument("--total", type=int, default=512)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
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

    shape_tail = x0.shape[1:]
    options = compilation.compiler_options()
    results = dict(environment=benchmark.environment(), rows=[])

    def time_fn(name, fn, x, t):
        t_start = time.perf_counter()
        out = jax.block_until_ready(fn(x, t))
        compile_s = time.perf_counter() - t_start
        windows = []
        for _ in range(args.repeats):
            t_start = time.perf_counter()
            for _ in range(args.calls):
                out = fn(x, t)
            jax.block_until_ready(out)
            windows.append((time.perf_counter() - t_start) / args.calls)
        ms = statistics.median(windows) * 1e3
        row = dict(name=name, batch=x.shape[0], ms_per_call=ms, us_per_image=ms * 1e3 / x.shape[0],
                   spread=(max(windows) - min(windows)) / min(windows), compile_s=compile_s)
        results["rows"].append(row)
        print(row, flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        return out

    key = jax.random.key(2)
    reference = None
    for batch in [int(b) for b in args.batches.split(",")]:
        x = jax.random.normal(key, (batch,) + shape_tail, jnp.float32)
        t = jnp.full((batch,), 500, jnp.int32)
        model_fn = model_fn_with_hoisted_weights(apply, params, x.shape, jnp.float32)
        out = time_fn(f"plain-b{batch}", jax.jit(model_fn, compiler_options=options), x, t)
        if batch == args.total:
            reference = np.asarray(out)

    x = jax.random.normal(key, (args.total,) + shape_tail, jnp.float32)
    t = jnp.full((args.total,), 500, jnp.int32)
    for k in [int(c) for c in args.chunks.split(",")]:
        size = args.total // k
        model_fn = model_fn_with_hoisted_weights(apply, params, (size,) + shape_tail, jnp.float32)

        def chunked(x, t, model_fn=model_fn, size=size, k=k):
            outs = []
            for i in range(k):
                xi, ti = x[i * size:(i + 1) * size], t[i * size:(i + 1) * size]
                if outs:  # chunk i starts after chunk i-1 is done
                    xi, ti, _ = jax.lax.optimization_barrier((xi, ti, outs[-1]))
                outs.append(model_fn(xi, ti))
            return jnp.concatenate(outs)

        out = time_fn(f"chunks-{k}x{size}", jax.jit(chunked, compiler_options=options), x, t)
        if reference is not None:
            d = np.abs(np.asarray(out) - reference)
            results["rows"][-1].update(max_diff=float(d.max()), mean_diff=float(d.mean()))
            print("diff", d.max(), d.mean(), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
