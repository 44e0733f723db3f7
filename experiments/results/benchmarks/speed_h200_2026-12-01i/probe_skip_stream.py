"""Probe (seventeenth session): the decoder ResBlocks' 1×1 skip convolutions on a second CUDA stream.

A skip conv reads the block's input (the concatenation) and is read only by the block's last conv, as its
side input; between the two run the block's GroupNorms and its first 3×3 conv. On a stream of its own
(jax's compute_on('gpu_stream:1') around the conv's equation in the sampler's hoisted model, XLA's
--xla_gpu_experimental_stream_annotation) this memory-bound product could run beside them. Times the
sampler's model_fn at batch 512 per call, with and without; JSON to --out. XLA_FLAGS are the caller's."""
import argparse
import contextlib
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
from jax.extend.core import Literal

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "experiments"))

import benchmark  # noqa: E402
from jdiff import compilation, train  # noqa: E402
from jdiff.samplers import hoisting  # noqa: E402

STREAMED = []


def is_pointwise_conv(eqn):
    if eqn.primitive.name != "conv_general_dilated":
        return False
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
    return all(rhs[d] == 1 for d in spec[2:])


def evaluate_streamed(eqns, env):
    """hoisting._evaluate with every 1×1 convolution bound inside compute_on('gpu_stream:1')."""
    for eqn in eqns:
        values = [v.val if isinstance(v, Literal) else env[v] for v in eqn.invars]
        name = str(eqn.source_info.name_stack)
        params = eqn.primitive.get_bind_params(eqn.params)
        with jax.named_scope(name) if name else contextlib.nullcontext(), eqn.ctx.manager:
            if is_pointwise_conv(eqn):
                STREAMED.append(name)
                out = compute_on(lambda *a, e=eqn, p=params: e.primitive.bind(*a, **p),
                                 compute_type="gpu_stream:1", out_memory_spaces=core.MemorySpace.Device)(*values)
            else:
                out = eqn.primitive.bind(*values, **params)
        for var, value in zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]):
            env[var] = value


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="plain,skip-stream")
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

    shape = (args.batch,) + x0.shape[1:]
    options = compilation.compiler_options()
    results = dict(environment=benchmark.environment(), xla_flags=os.environ.get("XLA_FLAGS"), rows=[])
    x = jax.random.normal(jax.random.key(2), shape, jnp.float32)
    t = jnp.full((args.batch,), 500, jnp.int32)
    reference = None
    for name in args.variants.split(","):
        saved = hoisting._evaluate
        if name == "skip-stream":
            hoisting._evaluate = evaluate_streamed
        try:
            model_fn = hoisting.model_fn_with_hoisted_weights(apply, params, shape, jnp.float32)
            fn = jax.jit(model_fn, compiler_options=options)
            STREAMED.clear()
            row = dict(name=name)
            t_start = time.perf_counter()
            fn = fn.lower(x, t).compile()
            row["compile_s"] = time.perf_counter() - t_start
            print(name, "compiled in", row["compile_s"], "s", flush=True)
            out = jax.block_until_ready(fn(x, t))
            row["streamed"] = len(STREAMED)
        except Exception as e:  # noqa: BLE001 (a probe: record and go on)
            results["rows"].append(dict(name=name, error=repr(e)[:800]))
            print(results["rows"][-1], flush=True)
            continue
        finally:
            hoisting._evaluate = saved
        windows = []
        for _ in range(args.repeats):
            t_start = time.perf_counter()
            for _ in range(args.calls):
                out = fn(x, t)
            jax.block_until_ready(out)
            windows.append((time.perf_counter() - t_start) / args.calls)
        row.update(ms_per_call=statistics.median(windows) * 1e3,
                   spread=(max(windows) - min(windows)) / min(windows))
        out = np.asarray(out, np.float32)
        if reference is None:
            reference = out
        else:
            d = np.abs(out - reference)
            row.update(max_diff=float(d.max()), mean_diff=float(d.mean()))
        results["rows"].append(row)
        print(row, flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
