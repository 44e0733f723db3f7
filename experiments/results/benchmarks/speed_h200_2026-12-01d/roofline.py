"""Each kernel of a recorded step against its own floor: max(bytes it must move / bandwidth, FLOPs / peak).

    python roofline.py TRACE.json.gz HLO.txt.gz --reps 10 [--bandwidth-tbps 4.3] [--peak-tflops 800]

Reads a profile_step.py recording made with every kernel attributed (XLA_FLAGS=--xla_gpu_enable_command_buffer=)
and the optimised HLO of the same program. Per kernel, from the HLO instruction its trace event names: the
bytes of its operands and results (each read once, written once; scratch buffers left out) and, for
convolutions, products and cuDNN's attention, its FLOPs. Prints per category the measured time per
repetition, the bytes and FLOPs, and the sum of the kernels' floors: a lower bound for this decomposition
into kernels, whatever each kernel's implementation.
"""

import argparse
import collections
import gzip
import json
import re
import sys

BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "f64": 8, "s64": 8}
ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


def arrays(shape: str) -> list[tuple[str, list[int]]]:
    return [(t, [int(d) for d in dims.split(",") if d]) for t, dims in ARRAY.findall(shape)]


def nbytes(shape_arrays) -> int:
    total = 0
    for dtype, dims in shape_arrays:
        n = 1
        for d in dims:
            n *= d
        total += n * BYTES.get(dtype, 4)
    return total


def parse_hlo(text: str):
    """name → (shape arrays, opcode, operand names, the rest of the line); computation name → its lines."""
    instructions, computations, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$", line)
        if head:
            current = head.group(1)
            continue
        m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$", line)
        if not m:
            continue
        name, rest = m.groups()
        if rest.startswith("("):  # a tuple shape: up to the matching parenthesis
            depth = 0
            for i, ch in enumerate(rest):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    break
            shape, tail = rest[:i + 1], rest[i + 1:].lstrip()
        else:
            shape, _, tail = rest.partition(" ")
        op = re.match(r"([\w\-$]+)\((.*?)\)(.*)$", tail)
        if not op:
            continue
        operands = re.findall(r"%([\w.\-]+(?:#\d+)?)", op.group(2))
        instructions[name] = (arrays(shape), op.group(1), operands, op.group(3))
        computations[current].append(name)
    return instructions, computations


def operand_arrays(instructions, operand: str):
    name, _, index = operand.partition("#")
    shape = instructions.get(name, ([], "", [], ""))[0]
    return [shape[int(index)]] if index and int(index) < len(shape) else shape


def dot_flops(instructions, name: str) -> float:
    shape, _, operands, rest = instructions[name]
    out = nbytes([(shape[0][0], shape[0][1])]) / BYTES.get(shape[0][0], 4)
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    lhs = operand_arrays(instructions, operands[0])[0][1]
    k = 1
    for d in (contracting.group(1).split(",") if contracting else []):
        k *= lhs[int(d)]
    return 2.0 * out * k


def kernel_cost(instructions, computations, name: str) -> tuple[int, float]:
    """(bytes, FLOPs) of the instruction a kernel runs."""
    shape, opcode, operands, rest = instructions[name]
    results = [a for a in shape if a[0] != "u8"]  # scratch buffers are not data
    moved = nbytes(results) + sum(nbytes(operand_arrays(instructions, o)) for o in operands)
    flops = 0.0
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    target = target.group(1) if target else ""
    if target.startswith("__cudnn$conv"):
        window = re.search(r"window=\{size=(\d+)x(\d+)", rest)
        kh, kw = (int(window.group(1)), int(window.group(2))) if window else (1, 1)
        kernel = operand_arrays(instructions, operands[1])[0][1]  # o01i
        big = results[0][1] if "Forward" in target else operand_arrays(instructions, operands[0])[0][1]
        flops = 2.0 * big[0] * big[1] * big[2] * kernel[0] * kh * kw * kernel[3]
    elif target == "__cudnn$fmhaSoftmax":
        b, length, heads, d = operand_arrays(instructions, operands[0])[0][1]
        flops = 4.0 * b * heads * length * length * d
    elif target.startswith("__cublas"):
        b = nbytes([results[0]]) / BYTES.get(results[0][0], 4)
        dims = re.search(r'"lhs_contracting_dimensions":\["(\d+)"', rest)
        lhs = operand_arrays(instructions, operands[0])[0][1]
        flops = 2.0 * b * (lhs[int(dims.group(1))] if dims else 1)
    elif opcode == "fusion" and "gemm_fusion" in name:
        called = re.search(r"calls=%([\w.\-]+)", rest)
        dots = [n for n in computations.get(called.group(1) if called else "", [])
                if instructions[n][1] == "dot"]
        flops = sum(dot_flops(instructions, n) for n in dots)
    return moved, flops


def category(kernel: str, hlo_op: str, instructions) -> str:
    if kernel.startswith("Memset") or kernel.startswith("Memcpy"):
        return kernel.split()[0].lower()
    rest = instructions.get(hlo_op, ([], "", [], ""))[3]
    if "__cudnn$convBackwardInput" in rest:
        return "transposed convolutions (cuDNN)"
    if "__cudnn$conv" in rest:
        return "convolutions (cuDNN)"
    if "fmha" in rest:
        return "attention 16×16 (cuDNN)"
    if "__cublas" in rest or "gemm_fusion" in hlo_op:
        return "matrix products"
    if "group_norm" in kernel:
        return "GroupNorm kernels"
    if "short_attention" in kernel:
        return "attention 8×8, 4×4 (jdiff)"
    if "concatenate" in kernel:
        return "concatenations"
    return "other XLA fusions"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("hlo")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--bandwidth-tbps", type=float, default=4.3)
    parser.add_argument("--peak-tflops", type=float, default=800.0)
    args = parser.parse_args()
    with gzip.open(args.hlo, "rt") if args.hlo.endswith(".gz") else open(args.hlo) as f:
        instructions, computations = parse_hlo(f.read())
    with gzip.open(args.trace, "rt") if args.trace.endswith(".gz") else open(args.trace) as f:
        events = json.load(f)["traceEvents"]
    gpu = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
           and "GPU" in e.get("args", {}).get("name", "")}
    rows = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])  # kernels, µs, bytes, flops, floor µs
    unknown = 0
    for e in events:
        if e.get("ph") != "X" or e["pid"] not in gpu:
            continue
        hlo_op = e.get("args", {}).get("hlo_op", "")
        cat = category(e["name"], hlo_op, instructions)
        row = rows[cat]
        row[0] += 1
        row[1] += e["dur"]
        if cat in ("memset", "memcpy") or hlo_op not in instructions:
            unknown += cat not in ("memset", "memcpy")
            continue
        moved, flops = kernel_cost(instructions, computations, hlo_op)
        row[2] += moved
        row[3] += flops
        row[4] += max(moved / (args.bandwidth_tbps * 1e6), flops / (args.peak_tflops * 1e6))
    reps = args.reps
    print(f"floors at {args.bandwidth_tbps} TB/s and {args.peak_tflops} TFLOP/s; per repetition "
          f"(kernels without an HLO instruction: {unknown})")
    print("| category | kernels | measured ms | GB moved | TFLOP | floor ms | above the floor ms |")
    print("|---|---|---|---|---|---|---|")
    total = [0.0] * 5
    for cat, (n, us, moved, flops, floor) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        gap = us - floor
        print(f"| {cat} | {n / reps:.0f} | {us / reps / 1e3:.2f} | {moved / reps / 1e9:.2f} | "
              f"{flops / reps / 1e12:.2f} | {floor / reps / 1e3:.2f} | {gap / reps / 1e3:.2f} |")
        for i, v in enumerate((n, us, moved, flops, floor)):
            total[i] += v
    n, us, moved, flops, floor = total
    print(f"| all | {n / reps:.0f} | {us / reps / 1e3:.2f} | {moved / reps / 1e9:.2f} | {flops / reps / 1e12:.2f} | "
          f"{floor / reps / 1e3:.2f} | {(us - floor) / reps / 1e3:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
