"""Where the time of a train step or a sampling step goes: a device trace and its kernel breakdown.

    python experiments/profile_step.py --out DIR [--config configs/cifar10_baseline.py] [--variant bf16-auto]
        [--what train,sample] [--train-batch 128] [--sample-batch 512] [--sample-steps 10] [--steps 5]
    python experiments/profile_step.py --summarize TRACE.json.gz --reps N [--hlo HLO.txt.gz]   # made earlier

After a warm-up it records ``--steps`` train steps (and/or one ``--sample-steps``-step sampling run) with
``jax.profiler`` and writes to DIR: the Perfetto trace (``<what>.trace.json.gz``), the optimised HLO of the
train step or the sampler (``<what>.hlo.txt.gz``, to look up what a fusion computes), and
``<what>.summary.json`` with, per repetition: the summed kernel time by category (cuDNN convolutions by
direction, matrix products, attention, and XLA's fusions by kind), by layer of the network (the HLO's
``op_name`` of each kernel's operation, cut to two module levels below ``--root``, the model's top
module; a backward pass's layers marked so), the span from the first kernel to the last, and the largest
idle gaps between kernels with the operations on either side, and the host time of XLA's GPU runtime
(``GpuExecutable::ExecuteThunks``, of which ``cuGraphLaunch`` and cuDNN calls): when it is as long as the
busy time, the step is bound by the host. Printed as a table too. Kernels launched inside XLA's CUDA-graph
command buffers name the buffer, not their operation, so their time goes to one unattributed line; run
with ``XLA_FLAGS=--xla_gpu_enable_command_buffer=`` to attribute it all (kernel times do not change).
Kernel times under the profiler are close to unprofiled ones; the span is not (the profiler adds host
work), so compare busy times, and wall-clock times from benchmark.py.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402  (sets sys.path for jdiff too)

import jax  # noqa: E402

from jdiff import sampling  # noqa: E402

CATEGORIES = (  # (category, pattern of the kernel name), first match wins
    ("attention (cuDNN)", r"sdpa|flash|cudnn::fusion"),  # before the convs: its kernels say "fprop" too
    ("conv forward", r"fprop"),
    ("conv input gradient", r"dgrad"),
    ("conv weight gradient", r"wgrad"),
    ("matrix product", r"^nvjet|gemm_fusion|cutlass|xmma_gemm|^sm90_xmma_gemm"),
)


def category(kernel: str) -> str:
    """The category of a kernel name: one of CATEGORIES, else XLA's fusion kind (``input_reduce_fusion``
    for ``input_reduce_fusion_12``)."""
    for name, pattern in CATEGORIES:
        if re.search(pattern, kernel):
            return name
    return re.sub(r"([._]\d+)+$", "", kernel)


HOST_EVENTS = ("GpuExecutable::ExecuteThunks", "cuGraphLaunch", "cudnn")  # host work of XLA's GPU runtime


def device_kernels(trace: dict) -> list[dict]:
    """The complete ('X') events on the accelerator's timelines of a Perfetto/Chrome trace, by start."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and "/device:" in e.get("args", {}).get("name", "")}
    if not devices:
        raise ValueError("the trace holds no device timeline ('/device:…' process): was it recorded on an "
                         "accelerator, inside jax.profiler.start_trace/stop_trace?")
    return sorted((e for e in events if e.get("pid") in devices and e.get("ph") == "X"),
                  key=lambda e: e["ts"])


IN_COMMAND_BUFFER = "(kernels inside CUDA-graph command buffers: not attributed)"
NO_METADATA = "(operations without an op_name in the HLO)"
OUTSIDE = "(outside the network)"


def op_names(hlo_text: str) -> dict[str, str]:
    """The ``op_name`` metadata of every instruction of an optimised HLO module's text, by instruction name
    (what a trace's kernels give as ``hlo_op``)."""
    pattern = re.compile(r'^\s*(?:ROOT )?%([^\s=]+) = .*?metadata=\{[^}]*?op_name="([^"]*)"', re.M)
    return {name: op_name for name, op_name in pattern.findall(hlo_text)}


def layer_of(op_name: str, root: str = "UNet") -> str:
    """The layer of the network an operation belongs to: the two module levels below ``root`` in its
    ``op_name`` (``.../UNet/input_blocks_5_1/qkv/blc,chd->blhd/dot_general`` → ``input_blocks_5_1/qkv``;
    the last component, the primitive, is never a level), prefixed ``backward:`` when the root appears
    transposed (``transpose(jvp(UNet))``), ``root`` itself for operations at its top, and OUTSIDE when
    the operation is not inside it."""
    parts = op_name.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if re.fullmatch(r"(?:\w+\()*" + re.escape(root) + r"\)*", parts[i]):
            levels = parts[i + 1:-1][:2]
            prefix = "backward: " if "transpose(" in parts[i] else ""
            return prefix + ("/".join(levels) if levels else root)
    return OUTSIDE


def kernel_layer(hlo_op: str, names: dict[str, str], root: str) -> str:
    """The layer of a kernel from its ``hlo_op`` and the module's :func:`op_names`, or why it has none."""
    if hlo_op.startswith("command_buffer"):
        return IN_COMMAND_BUFFER
    return layer_of(names[hlo_op], root) if hlo_op in names else NO_METADATA


def summarize(trace: dict, reps: int, top: int = 25, hlo_text: str | None = None, root: str = "UNet") -> dict:
    """Kernel time per repetition by category and by operation, busy time, span and the largest idle gaps
    (µs → ms); with the optimised HLO's text, also by layer of the network (:func:`layer_of`)."""
    kernels = device_kernels(trace)
    if not kernels:
        raise ValueError("the trace's device timeline has no kernels")
    names = op_names(hlo_text) if hlo_text is not None else None
    busy, count, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    layer_time, layer_count = collections.Counter(), collections.Counter()
    for e in kernels:
        busy[category(e["name"])] += e["dur"]
        count[category(e["name"])] += 1
        hlo_op = e.get("args", {}).get("hlo_op", "")
        by_op[(hlo_op, e["name"][:80])] += e["dur"]
        if names is not None:
            layer = kernel_layer(hlo_op, names, root)
            layer_time[layer] += e["dur"]
            layer_count[layer] += 1
    gaps, idle = collections.Counter(), 0.0
    end = kernels[0]["ts"] + kernels[0]["dur"]
    for prev, e in zip(kernels, kernels[1:]):
        gap = e["ts"] - end
        if gap > 0:
            idle += gap
            ops = tuple(k.get("args", {}).get("hlo_op", k["name"])[:40] for k in (prev, e))
            gaps[ops] += gap
        end = max(end, e["ts"] + e["dur"])
    span = end - kernels[0]["ts"]
    per = 1e3 * reps
    host = collections.Counter()
    device_events = {id(e) for e in kernels}
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    for e in events:
        if e.get("ph") == "X" and id(e) not in device_events:
            for name in HOST_EVENTS:
                if name in e.get("name", ""):
                    host[name] += e["dur"]
    by_layer = {} if names is None else dict(by_layer=[
        dict(layer=name, ms=t / per, kernels=layer_count[name] / reps)
        for name, t in layer_time.most_common()])
    return dict(
        reps=reps, kernels_per_rep=len(kernels) / reps, busy_ms=sum(busy.values()) / per, span_ms=span / per,
        idle_ms=idle / per,
        categories=[dict(category=c, ms=t / per, kernels=count[c] / reps) for c, t in busy.most_common(top)],
        largest_gaps=[dict(after=a, before=b, ms=t / per) for (a, b), t in gaps.most_common(8)],
        # the costliest operations by name, to look up in the optimised HLO (<what>.hlo.txt.gz)
        top_operations=[dict(hlo_op=op, kernel=k, ms=t / per) for (op, k), t in by_op.most_common(4 * top)],
        host_ms={name: host[name] / per for name in HOST_EVENTS},
        **by_layer,
    )


def print_summary(name: str, s: dict) -> None:
    print(f"\n{name}: busy {s['busy_ms']:.2f} ms, span {s['span_ms']:.2f} ms, idle {s['idle_ms']:.2f} ms "
          f"per repetition ({s['kernels_per_rep']:.0f} kernels)")
    print("| category | ms | kernels |\n|---|---|---|")
    for c in s["categories"]:
        print(f"| {c['category'][:60]} | {c['ms']:.3f} | {c['kernels']:.0f} |")
    if "by_layer" in s:
        print("| layer | ms | kernels |\n|---|---|---|")
        for row in s["by_layer"][:30]:
            print(f"| {row['layer']} | {row['ms']:.3f} | {row['kernels']:.0f} |")
    print("host time:", ", ".join(f"{name} {ms:.2f} ms" for name, ms in s["host_ms"].items()))
    print("largest idle gaps:", ", ".join(f"{g['ms']:.2f} ms ({g['after']} → {g['before']})"
                                          for g in s["largest_gaps"][:3]))


def record(run, reps: int, out_dir: str, name: str, hlo_text: str | None = None, root: str = "UNet") -> dict:
    """Calls ``run(n)`` (n repetitions back to back, then wait for the device) for a warm-up and then
    under the profiler with n = ``reps``; saves and summarises the trace (and ``hlo_text``, the optimised
    HLO of what ``run`` calls, for the summary by layer). Waiting only at the end keeps the host's dispatch
    of the next repetition overlapped with the device's work, as in training, so the idle gaps in the
    trace are those of a real run."""
    if hlo_text is not None:
        with gzip.open(os.path.join(out_dir, f"{name}.hlo.txt.gz"), "wt") as f:
            f.write(hlo_text)
    run(2)
    log_dir = tempfile.mkdtemp(prefix=f"jdiff-profile-{name}-")
    jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
    run(reps)
    jax.profiler.stop_trace()
    found = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not found:
        raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {log_dir}")
    path = os.path.join(out_dir, f"{name}.trace.json.gz")
    shutil.copy(found[0], path)
    with gzip.open(path) as f:
        summary = summarize(json.load(f), reps, hlo_text=hlo_text, root=root)
    with open(os.path.join(out_dir, f"{name}.summary.json"), "w") as f:
        json.dump(dict(environment=benchmark.environment(), **summary), f, indent=1)
    print_summary(name, summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for traces and summaries")
    parser.add_argument("--summarize", help="summarise this trace (.json or .json.gz) instead of recording")
    parser.add_argument("--reps", type=int, default=1, help="repetitions in the trace given to --summarize")
    parser.add_argument("--hlo", help="with --summarize: the optimised HLO (.txt or .txt.gz) of the traced "
                                      "module, for the time by layer")
    parser.add_argument("--root", default="UNet", help="the model's top module in the HLO's op_name paths")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                         "cifar10_baseline.py"))
    parser.add_argument("--variant", default="bf16-auto", help="as benchmark.py's --variants, one of them")
    parser.add_argument("--what", default="train,sample")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--sample-batch", type=int, default=512)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="train steps recorded")
    args = parser.parse_args()

    if args.summarize:
        def read(path, mode):
            return (gzip.open if path.endswith(".gz") else open)(path, mode)
        hlo_text = None
        if args.hlo:
            with read(args.hlo, "rt") as f:
                hlo_text = f.read()
        with read(args.summarize, "rb") as f:
            summary = summarize(json.load(f), args.reps, hlo_text=hlo_text, root=args.root)
        print_summary(args.summarize, summary)
        return
    if not args.out:
        parser.error("--out is required when recording")
    os.makedirs(args.out, exist_ok=True)
    what = args.what.split(",")
    if "train" in what:
        config = benchmark.load_config(args.config)
        options = benchmark.apply_variant(config, args.variant)
        compiled, state, batch, _, _ = benchmark.compile_train_step(config, args.train_batch, **options)
        box = [state]

        def train_steps(n):
            for _ in range(n):
                box[0], metrics = compiled(box[0], batch)
            jax.block_until_ready(metrics)

        record(train_steps, args.steps, args.out, "train", compiled.as_text(), args.root)
    if "sample" in what:
        config = benchmark.load_config(args.config)
        benchmark.apply_variant(config, args.variant)
        generate_fn, params, indices = benchmark.build_sampler(config, args.sample_batch, args.sample_steps)
        # compiled once, for the run and its HLO; λ as generate_fn's default (build_sampler set the config's)
        compiled = generate_fn.lower(params, indices, None).compile()
        eps_scaling = sampling.eps_scaling_from_config(config.sampling)

        def sample_runs(n):
            for _ in range(n):
                images = compiled(params, indices, None, eps_scaling)
            jax.block_until_ready(images)

        record(sample_runs, 1, args.out, "sample", compiled.as_text(), args.root)


if __name__ == "__main__":
    main()
