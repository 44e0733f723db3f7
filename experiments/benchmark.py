"""Benchmarks on whatever devices are present: the train step, sampling, and FID feature extraction.

    python experiments/benchmark.py --out results.json [--config configs/cifar10_baseline.py]
        [--train-batch 128] [--sample-batch 512] [--sample-steps 100] [--variants bf16-xla,bf16-cudnn,f32-xla]
        [--what train,sample,fid]

For every variant (compute dtype × attention kernel) it compiles the jitted train step of the config's
model (synthetic data on the devices, so the input pipeline is not measured), reports the compile time,
then times ``--repeats`` windows of ``--steps`` steps after a warm-up and keeps the median: images/s,
the step's FLOPs from XLA's cost analysis, the achieved TFLOP/s and peak device memory. Sampling times
one full ``--sample-steps``-step DDPM run with Epsilon Scaling; FID times the Inception features of
32×32 uint8 images (random weights: speed does not depend on them). Results go to ``--out`` as JSON with
the device and the versions, and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jdiff import sharding, train  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def block(tree):
    return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def peak_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def cost_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return (analysis or {}).get("flops")


def apply_variant(config, variant: str) -> None:
    """'<bf16|f32>-<xla|cudnn>[-onepass]': compute dtype, attention kernel, one-pass GroupNorm variance."""
    dtype, attention, *options = variant.split("-")
    config.model.compute_dtype = {"bf16": "bfloat16", "f32": "float32"}[dtype]
    config.model.attention_implementation = "" if attention == "xla" else attention
    unknown = set(options) - {"onepass"}
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown options {sorted(unknown)} (known: onepass)")
    config.model.norm_variance = "one_pass" if "onepass" in options else "two_pass"


@contextlib.contextmanager
def timing_lock(path: str | None):
    """Holds an exclusive lock on ``path`` (if given) while timing, so that benchmark processes that
    share a machine compile at the same time but never time at the same time."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bench_train(config, batch: int, steps: int, repeats: int, lock_path: str | None = None) -> dict:
    config.training.batch_size = batch
    mesh = sharding.make_mesh()
    model = train.build_model(config)
    tx = train.make_optimizer(config.training)
    _, shardings = train.abstract_train_state(config, model, tx, mesh)
    t0 = time.perf_counter()
    init = jax.jit(lambda k: train.init_train_state(k, config, model, tx), out_shardings=shardings)
    state = block(init(train.run_keys(config.seed)[0]))
    init_seconds = time.perf_counter() - t0
    step_fn = train.make_train_step(config, model, tx, train.build_schedule(config), mesh, shardings)
    k = config.training.steps_per_call
    shape = (batch, config.data.image_size, config.data.image_size, config.data.channels)
    if k > 1:
        shape = (k,) + shape
    images = jax.random.uniform(jax.random.key(1), shape, jnp.float32, -1, 1)
    batch_data = {"images": jax.device_put(images, jax.sharding.NamedSharding(
        mesh, jax.P(None, "data") if k > 1 else jax.P("data")))}
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch_data).compile()
    compile_seconds = time.perf_counter() - t0
    flops = cost_flops(compiled)
    calls = max(1, steps // k)
    times = []
    with timing_lock(lock_path):
        for _ in range(3):
            state, metrics = compiled(state, batch_data)
        block(metrics)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                state, metrics = compiled(state, batch_data)
            block(metrics)
            times.append((time.perf_counter() - t0) / (calls * k))
    step_seconds = statistics.median(times)
    result = dict(batch=batch, steps_per_call=k, step_ms=step_seconds * 1e3, images_per_sec=batch / step_seconds,
                  compile_seconds=compile_seconds, init_seconds=init_seconds, peak_memory_gib=peak_memory_gib(),
                  loss=float(metrics["loss"]), spread=(max(times) - min(times)) / step_seconds)
    if flops:
        per_step = flops / k
        result.update(flops_per_step=per_step, tflops_per_sec=per_step / step_seconds / 1e12,
                      gflop_per_image=per_step / batch / 1e9)
    return result


def bench_sample(config, batch: int, steps: int, repeats: int, lock_path: str | None = None) -> dict:
    from jdiff import sampling

    config.sampling.respacing = str(steps)
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.017
    mesh = sharding.make_mesh()
    model = train.build_model(config)
    params = jax.jit(lambda k: model.init({"params": k}, *train.dummy_inputs(config), train=False)["params"],
                     out_shardings=sharding.replicated(mesh))(jax.random.key(0))
    generate_fn = sampling.make_generate_fn(config, model, mesh)
    indices = jnp.arange(batch, dtype=jnp.int32)
    times = []
    with timing_lock(lock_path):      # the first call compiles (seconds) and runs: held under the lock too
        t0 = time.perf_counter()
        block(generate_fn(params, indices, None))
        first_call = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            block(generate_fn(params, indices, None))
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    compile_seconds = first_call - seconds
    return dict(batch=batch, steps=steps, images_per_sec=batch / seconds, seconds_per_batch=seconds,
                compile_seconds=compile_seconds, minutes_per_50k=50_000 / (batch / seconds) / 60,
                peak_memory_gib=peak_memory_gib())


def bench_fid(batch: int, repeats: int) -> dict:
    from jdiff.evaluation import inception, fid

    state = inception.random_inception_state_dict(0)
    variables = inception.convert_state_dict(state)
    feature_fn = fid.make_feature_fn(variables, batch_size=batch)
    images = np.random.default_rng(0).integers(0, 256, (batch * 4, 32, 32, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    feature_fn(images[:batch])
    compile_seconds = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pool, _ = feature_fn(images)
        np.asarray(pool)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    rate = len(images) / seconds
    return dict(batch=batch, images_per_sec=rate, seconds_per_50k=50_000 / rate, compile_seconds=compile_seconds)


def environment() -> dict:
    import flax
    import optax

    device = jax.devices()[0]
    return dict(device=getattr(device, "device_kind", str(device)), device_count=jax.device_count(),
                backend=jax.default_backend(), jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                python=platform.python_version(), time=time.strftime("%Y-%m-%d %H:%M:%S"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                         "cifar10_baseline.py"))
    parser.add_argument("--what", default="train,sample,fid")
    parser.add_argument("--variants", default="bf16-xla,bf16-cudnn")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--steps-per-call", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=-1.0, help="override config.model.dropout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample-batch", type=int, default=512)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--fid-batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timing-lock", default=None,
                        help="a file locked while timing, for several benchmark processes on one "
                             "machine (e.g. CUDA_VISIBLE_DEVICES=0 beside all devices, for scaling)")
    args = parser.parse_args()

    results = dict(environment=environment(), train={}, sample={}, fid={})
    what = args.what.split(",")

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)

    for variant in args.variants.split(","):
        if "train" in what:
            config = load_config(args.config)
            apply_variant(config, variant)
            config.training.steps_per_call = args.steps_per_call
            if args.dropout >= 0:
                config.model.dropout = args.dropout
            key = f"{variant}-b{args.train_batch}-k{args.steps_per_call}-drop{config.model.dropout:g}"
            results["train"][key] = bench_train(config, args.train_batch, args.steps, args.repeats,
                                                  args.timing_lock)
            print("train", key, results["train"][key], flush=True)
            save()
        if "sample" in what:
            config = load_config(args.config)
            apply_variant(config, variant)
            key = f"{variant}-b{args.sample_batch}-n{args.sample_steps}"
            results["sample"][key] = bench_sample(config, args.sample_batch, args.sample_steps,
                                                    max(1, args.repeats - 1), args.timing_lock)
            print("sample", key, results["sample"][key], flush=True)
            save()
    if "fid" in what:
        results["fid"][f"b{args.fid_batch}"] = bench_fid(args.fid_batch, args.repeats)
        print("fid", results["fid"], flush=True)
        save()

    print(f"\n{results['environment']}\n")
    print("| what | variant | img/s | ms/step or s/batch | TFLOP/s | compile s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for key, r in results["train"].items():
        print(f"| train | {key} | {r['images_per_sec']:.0f} | {r['step_ms']:.1f} | {r.get('tflops_per_sec', 0):.0f} "
              f"| {r['compile_seconds']:.0f} | {r['peak_memory_gib'] or 0:.1f} |")
    for key, r in results["sample"].items():
        print(f"| sample | {key} | {r['images_per_sec']:.0f} | {r['seconds_per_batch']:.2f} | | "
              f"{r['compile_seconds']:.0f} | {r['peak_memory_gib'] or 0:.1f} |")
    for key, r in results["fid"].items():
        print(f"| fid | {key} | {r['images_per_sec']:.0f} | 50k in {r['seconds_per_50k']:.0f} s | | "
              f"{r['compile_seconds']:.0f} | |")


if __name__ == "__main__":
    main()
