"""Where the time of a train step or a sampling step goes: a device trace and its kernel breakdown.

    python experiments/profile_step.py --out DIR [--config configs/cifar10_baseline.py] [--variant bf16-auto]
        [--what train,sample] [--train-batch 128] [--sample-batch 512] [--sample-steps 10] [--steps 5]
    python experiments/profile_step.py --summarize TRACE.json.gz --reps N [--hlo HLO.txt.gz]   # made earlier
        [--floor-bandwidth-tbps 4.3] [--floor-peak-tflops 800]

After a warm-up it records ``--steps`` train steps (and/or one ``--sample-steps``-step sampling run) with
``jax.profiler`` and writes to DIR: the Perfetto trace (``<what>.trace.json.gz``), the optimised HLO of the
train step or the sampler (``<what>.hlo.txt.gz``, to look up what a fusion computes), and
``<what>.summary.json`` with, per repetition: the summed kernel time by category (cuDNN convolutions by
direction, matrix products, attention, and XLA's fusions by kind), by layer of the network (the HLO's
``op_name`` of each kernel's operation, cut to two module levels below ``--root``, the model's top module; a
backward pass's layers marked so), each category's floor (every kernel at max(the bytes it must move /
bandwidth, its FLOPs / matrix rate), from its instruction's shapes: :func:`kernel_work`, :func:`floors`; the
sum is a lower bound for the step as these kernels divide it), the span from the first kernel to the last, and
the largest idle gaps between kernels with the operations on either side, and the host time of XLA's GPU
runtime (``GpuExecutable::ExecuteThunks``, of which ``cuGraphLaunch`` and cuDNN calls): when it is as long as
the busy time, the step is bound by the host. Printed as a table too. Kernels launched inside XLA's CUDA-graph
command buffers name the buffer, not their operation, so their time goes to one unattributed line (and has no
floor); run with ``XLA_FLAGS=--xla_gpu_enable_command_buffer=`` to attribute it all (kernel times do not
change). Kernel times under the profiler are close to unprofiled ones; the span is not (the profiler adds host
work), so compare busy times, and wall-clock times from benchmark.py.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import shutil
import sys
import tempfile
from typing import NamedTuple

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
    ("attention (jdiff, Mosaic GPU)", r"^mosaic_attention"),
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


class Instruction(NamedTuple):
    """One instruction of an optimised HLO module's text."""
    arrays: tuple[tuple[str, tuple[int, ...]], ...]  # its result's arrays (dtype, dims), a tuple's in order
    opcode: str
    operands: tuple[str, ...]  # instruction names, ``name#k`` for element k of a tuple result
    arguments: str  # the operand list as written (a parameter's number)
    attributes: str  # the text after the operand list (metadata, custom-call target, backend config, ...)
    computation: str  # the computation it belongs to


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.*)$")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")  # dtype[dims], f8e4m3fn too


def _split_shape(rest: str) -> tuple[str, str]:
    """(shape, the rest) of an instruction's text after ``name = ``; a tuple shape ends at its parenthesis."""
    if not rest.startswith("("):
        shape, _, tail = rest.partition(" ")
        return shape, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return rest[:i + 1], rest[i + 1:].lstrip()
    return rest, ""


def hlo_instructions(hlo_text: str) -> dict[str, Instruction]:
    """Every instruction of an optimised HLO module's text by name (what a trace's kernels give as
    ``hlo_op``; names are unique in a module)."""
    instructions, computation = {}, ""
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            header = re.match(r"^(?:ENTRY )?%([^\s(]+).*\{\s*$", line)
            computation = header.group(1) if header else computation
            continue
        shape, tail = _split_shape(m.group(2))
        call = re.match(r"([\w\-$]+)\((.*?)\)(.*)$", tail)
        if call:
            arrays = tuple((t, tuple(int(d) for d in dims.split(",") if d))
                           for t, dims in _ARRAY.findall(shape))
            operands = tuple(re.findall(r"%([^\s,)]+)", call.group(2)))
            instructions[m.group(1)] = Instruction(arrays, call.group(1), operands, call.group(2),
                                                   call.group(3), computation)
    return instructions


def op_names(hlo: str | dict[str, Instruction]) -> dict[str, str]:
    """The ``op_name`` metadata of every instruction of an optimised HLO module (its text, or
    :func:`hlo_instructions` of it), by instruction name (what a trace's kernels give as ``hlo_op``)."""
    instructions = hlo_instructions(hlo) if isinstance(hlo, str) else hlo
    names = {}
    for name, instruction in instructions.items():
        found = re.search(r'metadata=\{[^}]*?op_name="([^"]*)"', instruction.attributes)
        if found:
            names[name] = found.group(1)
    return names


def _item_bytes(dtype: str) -> float:
    """Bytes per element of an HLO element type, from the bit width in its name (bf16 → 2, f8e4m3fn → 1,
    s4 → ½); pred is a byte, a token holds no data."""
    if dtype == "pred":
        return 1
    bits = re.match(r"[a-z]+(\d+)", dtype)
    return int(bits.group(1)) / 8 if bits else 0


def _operand_arrays(instructions: dict[str, Instruction], operand: str):
    name, _, index = operand.partition("#")
    arrays = instructions[name].arrays if name in instructions else ()
    return arrays[int(index):int(index) + 1] if index else arrays


def _bytes(arrays) -> int:
    return sum(math.prod(dims) * _item_bytes(t) for t, dims in arrays)


def _fused(instructions: dict[str, Instruction], instruction: Instruction) -> dict[str, Instruction]:
    """The instructions of the computation a fusion calls (none for other instructions)."""
    called = instruction.opcode == "fusion" and re.search(r"calls=%([^\s,]+)", instruction.attributes)
    return {n: i for n, i in instructions.items() if i.computation == called.group(1)} if called else {}


def _operand_bytes(instructions: dict[str, Instruction], instruction: Instruction) -> int:
    """The bytes an instruction reads of its operands: each whole, except a fusion's operand that its fused
    computation only slices, which counts as the slices' sizes."""
    inner, sliced = _fused(instructions, instruction), {}
    for name, parameter in inner.items():
        if parameter.opcode == "parameter":
            users = [i for i in inner.values() if name in i.operands]
            if users and all(i.opcode in ("slice", "dynamic-slice") for i in users):
                sliced[int(parameter.arguments)] = sum(_bytes(i.arrays) for i in users)
    return sum(sliced[k] if k in sliced else _bytes(_operand_arrays(instructions, o))
               for k, o in enumerate(instruction.operands))


def _dot_flops(instructions: dict[str, Instruction], instruction: Instruction,
               contracting: list[int]) -> float:
    """2·(output elements)·K, K the product of the first operand's contracting dimensions."""
    lhs = _operand_arrays(instructions, instruction.operands[0])
    k = math.prod(lhs[0][1][d] for d in contracting) if lhs else 0
    return 2.0 * math.prod(instruction.arrays[0][1]) * k


def _conv_flops(instructions: dict[str, Instruction], instruction: Instruction, target: str) -> float:
    """2·(forward output elements)·(kernel elements / output channels): each output element is a dot
    product over the kernel's window and input channels, whichever of the three convolutions cuDNN runs."""
    labels = re.search(r"dim_labels=\w+_(\w+)->", instruction.attributes)
    operand = [a for o in instruction.operands for a in _operand_arrays(instructions, o)]
    if "BackwardFilter" in target:
        kernel, output = instruction.arrays[0][1], operand[1][1]
    else:
        kernel = operand[1][1]
        output = instruction.arrays[0][1] if "BackwardInput" not in target else operand[0][1]
    out_channels = kernel[labels.group(1).index("o")] if labels else 1
    return 2.0 * math.prod(output) * math.prod(kernel) / out_channels


def kernel_work(instructions: dict[str, Instruction], name: str) -> tuple[float, float]:
    """(bytes, FLOPs) that instruction ``name`` must at least move and compute: its operands read once (a
    fusion's operand that it only slices: the slices) and its result written once (custom calls' u8/s8
    scratch buffers left out), and 2 FLOPs per multiply-add of its convolutions (cuDNN), products (cuBLAS,
    or a dot inside a fusion: Triton's) or attention (cuDNN, q and k laid out (B, T, N, H) as JAX's cuDNN
    path passes them: 4·B·N·T_q·T_k·H)."""
    instruction = instructions[name]
    target = re.search(r'custom_call_target="([^"]+)"', instruction.attributes)
    target = target.group(1) if target else ""
    results = [a for a in instruction.arrays if not (target and a[0] in ("u8", "s8"))]
    moved = _bytes(results) + _operand_bytes(instructions, instruction)
    flops = 0.0
    if target.startswith("__cudnn$conv"):
        flops = _conv_flops(instructions, instruction, target)
    elif target.startswith("__cudnn$fmha"):
        q, k = (_operand_arrays(instructions, o)[0][1] for o in instruction.operands[:2])
        flops = 4.0 * math.prod(q) * k[1]
    elif target.startswith("__cublas"):
        contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attributes)
        dims = [int(d) for d in re.findall(r"\d+", contracting.group(1))] if contracting else []
        flops = _dot_flops(instructions, instruction, dims)
    for inner in _fused(instructions, instruction).values():
        if inner.opcode == "dot":
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inner.attributes)
            dims = re.findall(r"\d+", contracting.group(1)) if contracting else []
            flops += _dot_flops(instructions, inner, [int(d) for d in dims])
    return moved, flops


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


def floors(kernels: list[dict], instructions: dict[str, Instruction], bandwidth_tbps: float,
           peak_tflops: float) -> dict[str, tuple[float, float, float]]:
    """Per category, the (bytes, FLOPs, µs) floor of its kernels: each kernel at max(bytes / bandwidth,
    FLOPs / peak) of the instruction it runs (:func:`kernel_work`). An instruction that launches several
    kernels counts once per launch of its main one (the name with most of its time); the others (memsets,
    padding, split reductions) have a floor of 0, and so have kernels of no instruction (command buffers)."""
    time_by_name = collections.defaultdict(collections.Counter)
    for e in kernels:
        if not e["name"].startswith(("Memset", "Memcpy")):
            time_by_name[e.get("args", {}).get("hlo_op", "")][e["name"]] += e["dur"]
    main = {op: names.most_common(1)[0][0] for op, names in time_by_name.items()}
    work, out = {}, collections.defaultdict(lambda: (0.0, 0.0, 0.0))
    for e in kernels:
        op = e.get("args", {}).get("hlo_op", "")
        if op not in instructions or main.get(op) != e["name"]:
            continue
        if op not in work:
            work[op] = kernel_work(instructions, op)
        moved, flops = work[op]
        total = out[category(e["name"])]
        out[category(e["name"])] = (total[0] + moved, total[1] + flops, total[2] + max(
            moved / (bandwidth_tbps * 1e6), flops / (peak_tflops * 1e6)))
    return dict(out)


def summarize(trace: dict, reps: int, top: int = 25, hlo_text: str | None = None, root: str = "UNet",
              bandwidth_tbps: float = 4.3, peak_tflops: float = 800.0) -> dict:
    """Kernel time per repetition by category and by operation, busy time, span and the largest idle gaps
    (µs → ms); with the optimised HLO's text, also by layer of the network (:func:`layer_of`) and each
    category's floor (:func:`floors`, at ``bandwidth_tbps`` and ``peak_tflops``: by default an H200's best
    copy rate measured and the bf16 matrix rate of the speed issue)."""
    kernels = device_kernels(trace)
    if not kernels:
        raise ValueError("the trace's device timeline has no kernels")
    instructions = hlo_instructions(hlo_text) if hlo_text is not None else None
    names = op_names(instructions) if instructions is not None else None
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
    if instructions is not None:
        floor = floors(kernels, instructions, bandwidth_tbps, peak_tflops)
        by_layer["floors"] = dict(bandwidth_tbps=bandwidth_tbps, peak_tflops=peak_tflops, categories=[
            dict(category=c, ms=t / per, floor_ms=floor.get(c, (0, 0, 0))[2] / per,
                 gb=floor.get(c, (0, 0, 0))[0] / 1e9 / reps, tflop=floor.get(c, (0, 0, 0))[1] / 1e12 / reps)
            for c, t in busy.most_common()])
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
    if "floors" in s:
        f = s["floors"]
        print(f"floors at {f['bandwidth_tbps']} TB/s and {f['peak_tflops']} TFLOP/s:")
        print("| category | ms | floor ms | above ms | GB | TFLOP |\n|---|---|---|---|---|---|")
        total = dict(category="all", **{key: sum(c[key] for c in f["categories"])
                                        for key in ("ms", "floor_ms", "gb", "tflop")})
        for c in f["categories"] + [total]:
            print(f"| {c['category'][:60]} | {c['ms']:.3f} | {c['floor_ms']:.3f} | "
                  f"{c['ms'] - c['floor_ms']:.3f} | {c['gb']:.2f} | {c['tflop']:.3f} |")
    if "by_layer" in s:
        print("| layer | ms | kernels |\n|---|---|---|")
        for row in s["by_layer"][:30]:
            print(f"| {row['layer']} | {row['ms']:.3f} | {row['kernels']:.0f} |")
    print("host time:", ", ".join(f"{name} {ms:.2f} ms" for name, ms in s["host_ms"].items()))
    print("largest idle gaps:", ", ".join(f"{g['ms']:.2f} ms ({g['after']} → {g['before']})"
                                          for g in s["largest_gaps"][:3]))


def record(run, reps: int, out_dir: str, name: str, hlo_text: str | None = None, root: str = "UNet",
           **floor_rates: float) -> dict:
    """Calls ``run(n)`` (n repetitions back to back, then wait for the device) for a warm-up and then
    under the profiler with n = ``reps``; saves and summarises the trace (and ``hlo_text``, the optimised
    HLO of what ``run`` calls, for the summary by layer and the floors, at ``floor_rates``:
    :func:`summarize`'s ``bandwidth_tbps`` and ``peak_tflops``). Waiting only at the end keeps the host's
    dispatch of the next repetition overlapped with the device's work, as in training, so the idle gaps in
    the trace are those of a real run."""
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
        summary = summarize(json.load(f), reps, hlo_text=hlo_text, root=root, **floor_rates)
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
    parser.add_argument("--floor-bandwidth-tbps", type=float, default=4.3,
                        help="memory bandwidth of the floors (default: an H200's best copy rate measured)")
    parser.add_argument("--floor-peak-tflops", type=float, default=800.0,
                        help="matrix rate of the floors (default: the bf16 rate the speed issue measured)")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                         "cifar10_baseline.py"))
    parser.add_argument("--variant", default="bf16-auto", help="as benchmark.py's --variants, one of them")
    parser.add_argument("--what", default="train,sample")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--sample-batch", type=int, default=512)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="train steps recorded")
    args = parser.parse_args()
    floor_rates = dict(bandwidth_tbps=args.floor_bandwidth_tbps, peak_tflops=args.floor_peak_tflops)

    if args.summarize:
        def read(path, mode):
            return (gzip.open if path.endswith(".gz") else open)(path, mode)
        hlo_text = None
        if args.hlo:
            with read(args.hlo, "rt") as f:
                hlo_text = f.read()
        with read(args.summarize, "rb") as f:
            summary = summarize(json.load(f), args.reps, hlo_text=hlo_text, root=args.root, **floor_rates)
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

        record(train_steps, args.steps, args.out, "train", compiled.as_text(), args.root, **floor_rates)
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

        record(sample_runs, 1, args.out, "sample", compiled.as_text(), args.root, **floor_rates)


if __name__ == "__main__":
    main()
