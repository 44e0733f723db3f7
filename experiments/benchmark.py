"""Benchmarks on whatever devices are present: the train step, sampling, and FID feature extraction.

    python experiments/benchmark.py --out results.json [--config configs/cifar10_baseline.py]
        [--train-batch 128] [--sample-batch 512] [--sample-steps 100] [--samplers ddpm,ddim]
        [--variants bf16-auto,bf16-xla,f32-xla]
        [--what train,sample,fid,maxbatch] [--interleave] [--memory-limit-gib G] [--compare-images F.npy]

For every variant (compute dtype × attention kernel × options, see :func:`apply_variant`) it compiles the
jitted train step of the config's model (synthetic data on the devices, so the input pipeline is not
measured), reports the compile time, then times ``--repeats`` windows of ``--steps`` steps after a
warm-up and keeps the median (with ``--interleave``: all variants compiled first, then timed in turn,
window by window, with each one's step-time ratio to the first variant's): images/s,
the step's FLOPs from XLA's cost analysis, the achieved TFLOP/s and peak device memory. Sampling times
one full ``--sample-steps``-step run with Epsilon Scaling of each of ``--samplers`` (DDPM by default); FID times the Inception features of
32×32 uint8 images (random weights: speed does not depend on them). ``maxbatch`` finds the largest
training batch that fits in device memory (:func:`largest_train_batch`). Results go to ``--out`` as JSON with
the device and the versions, and a markdown table is printed. The samples of every variant after the first
are compared with the first's (same parameters and noise); ``--compare-images`` compares the first with a
file, or writes it there: run from two checkouts of the code, it says how far a change moves the samples.
"""  # noqa: E501

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
from jdiff.flat_params import FlatLayout  # noqa: E402


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


VARIANT_OPTIONS = {
    "onepass": "GroupNorm statistics in one read (model.norm_variance=one_pass)",
    "pallasnorm": "GroupNorms by the Triton kernels (model.norm_implementation=pallas)",
    "xlanorm": "GroupNorms by XLA (model.norm_implementation=xla; neither: 'auto')",
    "hwioflat": "conv kernels in flax's HWIO order in the flat train state (default on GPUs: OHWI)",
    "nocmdbuf": "no CUDA-graph command buffers (compiler option xla_gpu_enable_command_buffer='')",
}  # nocmdbuf changes the train step only; sampling ignores it


def apply_variant(config, variant: str) -> dict:
    """'<bf16|f16|f32>-<auto|xla|cudnn>[-option]…' with options from VARIANT_OPTIONS: sets the config's
    compute dtype, attention kernel and GroupNorm variance and kernel, and returns the train-step
    options (``compiler_options``, ``conv_order``) for :func:`compile_train_step`. 'f16' (float16
    compute) is for timing the sampler: the config refuses it, and the train step has no loss scaling."""
    dtype, attention, *options = variant.split("-")
    config.model.compute_dtype = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
    config.model.attention_implementation = attention
    unknown = set(options) - set(VARIANT_OPTIONS)
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown options {sorted(unknown)} "
                         f"(known: {sorted(VARIANT_OPTIONS)})")
    config.model.norm_variance = "one_pass" if "onepass" in options else "two_pass"
    for option, implementation in (("pallasnorm", "pallas"), ("xlanorm", "xla")):
        if option in options:
            config.model.norm_implementation = implementation
    return dict(compiler_options={"xla_gpu_enable_command_buffer": ""} if "nocmdbuf" in options else None,
                conv_order="HWIO" if "hwioflat" in options else None)


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


_initial_states: dict = {}  # (kind, structure and shapes) → initialised train state or sampler parameters


def initial_state_key(kind: str, abstract) -> tuple[str, str, str]:
    """The key of :data:`_initial_states` for a tree of shapes: variants that build the same tree share it."""
    return kind, str(jax.tree.structure(abstract)), str(jax.tree.leaves(abstract))


def compile_train_step(config, batch: int, *, compiler_options: dict | None = None,
                       conv_order: str | None = None):
    """The config's jitted train step compiled for ``batch`` images (synthetic, already on the devices):
    (compiled step, fresh train state, batch, seconds to initialise, seconds to compile).

    Variants whose train states have the same structure and shapes (they differ in how the step computes,
    not in the parameters) share one initialisation; each gets its own copy, as the step donates it."""
    config.training.batch_size = batch
    mesh = sharding.make_mesh()
    model = train.build_model(config)
    tx = train.make_optimizer(config.training)
    abstract, shardings = train.abstract_train_state(config, model, tx, mesh, conv_order)
    t0 = time.perf_counter()
    init_key = initial_state_key("train", abstract)
    if init_key not in _initial_states:
        _initial_states[init_key] = block(train.initial_train_state(config, model, tx, shardings, conv_order))
    state = block(jax.tree.map(jnp.copy, _initial_states[init_key]))
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
    compiled = step_fn.lower(state, batch_data).compile(compiler_options=compiler_options)
    return compiled, state, batch_data, init_seconds, time.perf_counter() - t0


class TrainRun:
    """One variant's compiled train step and state, timed in windows of ``steps`` steps."""

    def __init__(self, config, batch: int, steps: int, **options):
        self.batch, self.k = batch, config.training.steps_per_call
        (self.compiled, self.state, self.data, self.init_seconds,
         self.compile_seconds) = compile_train_step(config, batch, **options)
        self.calls = max(1, steps // self.k)
        self.times: list[float] = []
        self.metrics = None

    def warm_up(self) -> None:
        for _ in range(3):
            self.state, self.metrics = self.compiled(self.state, self.data)
        block(self.metrics)

    def window(self) -> float:
        """Seconds per optimiser step over one window (dispatched back to back, waited for at the end)."""
        t0 = time.perf_counter()
        for _ in range(self.calls):
            self.state, self.metrics = self.compiled(self.state, self.data)
        block(self.metrics)
        self.times.append((time.perf_counter() - t0) / (self.calls * self.k))
        return self.times[-1]

    def result(self) -> dict:
        step_seconds = statistics.median(self.times)
        result = dict(batch=self.batch, steps_per_call=self.k, step_ms=step_seconds * 1e3,
                      images_per_sec=self.batch / step_seconds, compile_seconds=self.compile_seconds,
                      init_seconds=self.init_seconds, peak_memory_gib=peak_memory_gib(),
                      loss=float(self.metrics["loss"]),
                      spread=(max(self.times) - min(self.times)) / step_seconds,
                      windows_ms=[t * 1e3 for t in self.times])
        # layout changes XLA makes between the state and the kernels (e.g. conv kernels for cuDNN)
        result["hlo_transposes"] = self.compiled.as_text().count(" transpose(")
        flops = cost_flops(self.compiled)
        if flops:
            per_step = flops / self.k
            result.update(flops_per_step=per_step, tflops_per_sec=per_step / step_seconds / 1e12,
                          gflop_per_image=per_step / self.batch / 1e9)
        return result


def bench_train(config, batch: int, steps: int, repeats: int, lock_path: str | None = None,
                **options) -> dict:
    run = TrainRun(config, batch, steps, **options)
    with timing_lock(lock_path):
        run.warm_up()
        for _ in range(repeats):
            run.window()
    return run.result()


def bench_train_interleaved(runs: dict[str, TrainRun], repeats: int) -> dict[str, dict]:
    """Times compiled variants in turn, window by window, so that a drift of the machine (clocks, other
    tenants) falls on all of them alike; adds each variant's median ratio of step time to the first
    variant's in the same rounds."""
    for run in runs.values():
        run.warm_up()
    for round_ in range(repeats):
        times = {name: run.window() * 1e3 for name, run in runs.items()}
        # printed as it goes, so that a run cut short by a time limit still leaves its numbers
        print(f"round {round_}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in times.items()),
              flush=True)
    results = {name: run.result() for name, run in runs.items()}
    first = next(iter(runs.values()))
    for name, run in runs.items():
        results[name]["step_time_ratio_to_first"] = statistics.median(
            a / b for a, b in zip(run.times, first.times))
    return results


def build_sampler(config, batch: int, steps: int, sampler: str = "ddpm"):
    """A jitted ``steps``-step sampler (``sampling.sampler``: DDPM by default) with Epsilon Scaling
    (λ = 1.017) for the config's model with
    fresh parameters plus noise of 0.01 (ADM initialises its output convolutions to zero, so a fresh
    network predicts ε = 0 and every kernel would give the same images): (generate_fn, params, indices
    of ``batch`` images)."""
    from jdiff import sampling

    config.sampling.sampler = sampler
    config.sampling.respacing = str(steps)
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.017
    mesh = sharding.make_mesh()
    model = train.build_model(config)
    abstract = jax.eval_shape(lambda k: model.init({"params": k}, *train.dummy_inputs(config), train=False),
                              jax.random.key(0))
    cache_key = initial_state_key("sampler", abstract)
    if cache_key not in _initial_states:  # variants of one network share one initialisation
        def init(key):
            params = train.for_host_initialisation(model).init(
                {"params": key}, *train.dummy_inputs(config), train=False)["params"]
            layout = FlatLayout.of(params)  # one draw for all leaves: one RNG op to compile, not hundreds
            noise = jax.random.normal(jax.random.fold_in(key, 1), (layout.size,), layout.dtype)
            return layout.unravel(layout.ravel(params) + 0.01 * noise)

        _initial_states[cache_key] = sharding.computed_on_host(init, train.run_keys(config.seed)[0],
                                                               out_shardings=sharding.replicated(mesh))
    params = _initial_states[cache_key]
    return sampling.make_generate_fn(config, model, mesh), params, jnp.arange(batch, dtype=jnp.int32)


def bench_sample(config, batch: int, steps: int, repeats: int, lock_path: str | None = None,
                 sampler: str = "ddpm") -> dict:
    """Times the sampler; returns the timings and the images (``"images"``, to compare variants)."""
    generate_fn, params, indices = build_sampler(config, batch, steps, sampler)
    times = []
    with timing_lock(lock_path):      # the first call compiles (seconds) and runs: held under the lock too
        t0 = time.perf_counter()
        images = np.asarray(generate_fn(params, indices, None))
        first_call = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            block(generate_fn(params, indices, None))
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    compile_seconds = first_call - seconds
    return dict(batch=batch, steps=steps, images_per_sec=batch / seconds, seconds_per_batch=seconds,
                compile_seconds=compile_seconds, minutes_per_50k=50_000 / (batch / seconds) / 60,
                peak_memory_gib=peak_memory_gib(), images=images)


def executable_bytes(compiled) -> int:
    """Device memory an executable holds while it runs, from XLA's memory analysis: its arguments and
    outputs (less the donated buffers its outputs reuse) and its temporaries."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)


def device_memory_limit() -> int | None:
    """Bytes the allocator of the first local device may hand out (XLA's ``bytes_limit``), if it says."""
    return (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")


def is_out_of_memory(error: Exception) -> bool:
    """Whether an error is the device allocator's (XLA's RESOURCE_EXHAUSTED), not a bug."""
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def largest_batch(probe, limit_bytes: float, base: int, multiple: int) -> dict:
    """The largest batch, a multiple of ``multiple``, for which ``probe`` fits in ``limit_bytes``.

    ``probe(batch, run)`` compiles for ``batch`` and returns the bytes XLA's memory analysis gives the
    executable; with ``run`` it also runs it once when they fit, and raises the allocator's error when the
    device says otherwise. The bytes at ``base`` and ``2·base`` give a fixed part and a part per image;
    the batch they predict is run to confirm it, and if it does not fit, 10% fewer images are tried, up to
    three more times."""
    need = {batch: probe(batch, False) for batch in (base, 2 * base)}
    per_image = (need[2 * base] - need[base]) / base
    fixed = need[base] - per_image * base
    if per_image <= 0 or fixed + per_image * multiple > limit_bytes:
        raise ValueError(f"cannot fit {multiple} images in {limit_bytes / 2**30:.2f} GiB: the analysis gives "
                         f"{fixed / 2**30:.2f} GiB fixed and {per_image / 2**20:.2f} MiB per image")
    predicted = int((limit_bytes - fixed) / per_image) // multiple * multiple
    result = dict(limit_gib=limit_bytes / 2**30, mib_per_image=per_image / 2**20, fixed_gib=fixed / 2**30,
                  predicted_batch=predicted, attempts=[], largest_batch=None)
    batch = predicted
    for _ in range(4):
        attempt = dict(batch=batch)
        try:
            need = probe(batch, True)
            attempt.update(executable_gib=need / 2**30, ran=need <= limit_bytes)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            attempt.update(ran=False, error=str(error).splitlines()[0][:300])
        result["attempts"].append(attempt)
        if attempt["ran"]:
            result["largest_batch"] = batch
            break
        batch = int(batch * 0.9) // multiple * multiple
        if batch < multiple:
            break
    return result


def largest_train_batch(config, limit_bytes: float, base: int, **options) -> dict:
    """:func:`largest_batch` of the config's train step (global batch, 8 images per device at least)."""
    def probe(batch, run):
        start = time.perf_counter()
        compiled, state, data, _, _ = compile_train_step(config, batch, **options)
        need = executable_bytes(compiled)   # of the partitioned program: per device
        print(f"maxbatch: batch {batch} needs {need / 2**30:.2f} GiB per device (compiled in "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
        if run and need <= limit_bytes:
            block(compiled(state, data))
        return need

    return largest_batch(probe, limit_bytes, base, 8 * jax.device_count())


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
    return dict(batch=batch, images_per_sec=rate, seconds_per_50k=50_000 / rate,
                compile_seconds=compile_seconds)


def environment() -> dict:
    import flax
    import optax

    device = jax.devices()[0]
    return dict(device=getattr(device, "device_kind", str(device)), device_count=jax.device_count(),
                backend=jax.default_backend(), jax=jax.__version__, flax=flax.__version__,
                optax=optax.__version__, python=platform.python_version(),
                time=time.strftime("%Y-%m-%d %H:%M:%S"))


def image_differences(images: np.ndarray, reference: np.ndarray, name: str) -> dict:
    """How far ``images`` are from ``reference`` (the same parameters and noise), in [-1, 1] units."""
    difference = np.abs(images.astype(np.float64) - reference)
    return {f"images_max_abs_diff_to_{name}": float(difference.max()),
            f"images_mean_abs_diff_to_{name}": float(difference.mean()),
            f"pixels_differing_by_a_uint8_level_from_{name}": float(np.mean(difference > 1 / 127.5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                         "cifar10_baseline.py"))
    parser.add_argument("--what", default="train,sample,fid")
    parser.add_argument("--variants", default="bf16-auto")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--steps-per-call", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=-1.0, help="override config.model.dropout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample-batch", type=int, default=512)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--samplers", default="ddpm",
                        help="sampling.sampler values to time, e.g. ddpm,ddim,heun")
    parser.add_argument("--fid-batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-images", default=None,
                        help="a .npy file: the first variant's samples (first sampler) are written there if "
                             "it does not exist, else compared with it (same parameters and noise: how far "
                             "another version of the code moves the samples)")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="for --what maxbatch: device memory to fill (default: the allocator's limit, "
                             "which a CPU does not report)")
    parser.add_argument("--interleave", action="store_true",
                        help="compile every variant's train step first, then time them in turn, window by "
                             "window (the way to compare variants: see docs/benchmarks.md)")
    parser.add_argument("--timing-lock", default=None,
                        help="a file locked while timing, for several benchmark processes on one "
                             "machine (e.g. CUDA_VISIBLE_DEVICES=0 beside all devices, for scaling). "
                             "A process that compiles meanwhile still runs autotuning kernels on the "
                             "GPU and slows the one timing: start timing after all have compiled")
    parser.add_argument("--compilation-cache", default=None,
                        help="a folder for JAX's persistent compilation cache (jdiff.compilation): a second "
                             "run of the same code loads its programs instead of compiling them (its "
                             "'compile s' is then the time to load them); default: none")
    args = parser.parse_args()
    if args.compilation_cache:
        from jdiff import compilation

        compilation.enable_persistent_cache(args.compilation_cache)

    results = dict(environment=environment(), compilation_cache=args.compilation_cache, train={}, sample={},
                   fid={}, largest_batch={})
    what = args.what.split(",")

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)

    def train_config(variant):
        config = load_config(args.config)
        options = apply_variant(config, variant)
        config.training.steps_per_call = args.steps_per_call
        if args.dropout >= 0:
            config.model.dropout = args.dropout
        key = f"{variant}-b{args.train_batch}-k{args.steps_per_call}-drop{config.model.dropout:g}"
        return config, options, key

    variants = args.variants.split(",")
    first_images = {}  # per sampler: the first variant's images
    if "train" in what and args.interleave:
        runs = {}
        for variant in variants:
            config, options, key = train_config(variant)
            runs[key] = TrainRun(config, args.train_batch, args.steps, **options)
            print("compiled", key, f"{runs[key].compile_seconds:.0f} s", flush=True)
        with timing_lock(args.timing_lock):
            results["train"] = bench_train_interleaved(runs, args.repeats)
        del runs
        save()
    for variant in variants:
        if "train" in what and not args.interleave:
            config, options, key = train_config(variant)
            results["train"][key] = bench_train(config, args.train_batch, args.steps, args.repeats,
                                                args.timing_lock, **options)
            print("train", key, results["train"][key], flush=True)
            save()
        for sampler in (args.samplers.split(",") if "sample" in what else []):
            config = load_config(args.config)
            apply_variant(config, variant)
            key = f"{variant}-{sampler}-b{args.sample_batch}-n{args.sample_steps}"
            result = bench_sample(config, args.sample_batch, args.sample_steps, max(1, args.repeats - 1),
                                  args.timing_lock, sampler)
            images = result.pop("images")
            if sampler not in first_images:
                first_images[sampler] = images
                if args.compare_images and len(first_images) == 1:
                    if os.path.exists(args.compare_images):
                        result.update(image_differences(images, np.load(args.compare_images), "file"))
                    else:
                        np.save(args.compare_images, images)
            else:  # same parameters and noise: how far another kernel moves the samples
                result.update(image_differences(images, first_images[sampler], "first"))
            results["sample"][key] = result
            print("sample", key, results["sample"][key], flush=True)
            save()
    if "maxbatch" in what:
        limit = args.memory_limit_gib * 2**30 if args.memory_limit_gib else device_memory_limit()
        if not limit:
            parser.error("--what maxbatch: the device does not report its memory limit; "
                         "give --memory-limit-gib")
        for variant in variants:
            config, options, _ = train_config(variant)
            key = f"{variant}-k{args.steps_per_call}-drop{config.model.dropout:g}"
            results["largest_batch"][key] = largest_train_batch(config, int(limit), args.train_batch,
                                                                **options)
            print("largest batch", key, results["largest_batch"][key], flush=True)
            save()
    if "fid" in what:
        results["fid"][f"b{args.fid_batch}"] = bench_fid(args.fid_batch, args.repeats)
        print("fid", results["fid"], flush=True)
        save()

    print(f"\n{results['environment']}\n")
    print("| what | variant | img/s | ms/step or s/batch | TFLOP/s | compile s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for key, r in results["train"].items():
        ratio = (f" (×{1 / r['step_time_ratio_to_first']:.3f} speed)" if "step_time_ratio_to_first" in r
                 else "")
        print(f"| train | {key}{ratio} | {r['images_per_sec']:.0f} | {r['step_ms']:.1f} "
              f"| {r.get('tflops_per_sec', 0):.0f} "
              f"| {r['compile_seconds']:.0f} | {r['peak_memory_gib'] or 0:.1f} |")
    for key, r in results["sample"].items():
        print(f"| sample | {key} | {r['images_per_sec']:.0f} | {r['seconds_per_batch']:.2f} | | "
              f"{r['compile_seconds']:.0f} | {r['peak_memory_gib'] or 0:.1f} |")
    for key, r in results["fid"].items():
        print(f"| fid | {key} | {r['images_per_sec']:.0f} | 50k in {r['seconds_per_50k']:.0f} s | | "
              f"{r['compile_seconds']:.0f} | |")


if __name__ == "__main__":
    main()
