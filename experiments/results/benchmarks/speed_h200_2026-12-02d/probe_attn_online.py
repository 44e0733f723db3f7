"""Probe (twenty-third session): the prototype attention kernel (mgpu_attn_online.py: keys in blocks, an online
softmax, more compute warpgroups) against the library's Mosaic GPU kernel at the UNet's 16×16 shape (batch
512, L = 256, 8 heads of 32, bf16, q|k|v in the new order), µs per call in experiments/bench_group_norm.py's
harness (distinct inputs, calls chained by optimisation barriers); each variant's output against the
library kernel's and against float32 attention of the same rounded q + b_q, k, v.

    python probe_attn_online.py OUT.json [--smoke] [--only I]
--smoke: tiny shapes in the interpreter (CPU); --only I: one row per process (−1 the library kernel's, first;
then 0, 1, … the VARIANTS), each adding to OUT.json, so that a kernel that hangs stops only its row.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, "experiments")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_group_norm as bgn  # noqa: E402
import benchmark  # noqa: E402
import mgpu_attn_online as online  # noqa: E402
from jdiff.models import mosaic_attention  # noqa: E402

SMOKE = "--smoke" in sys.argv
ONLY = int(sys.argv[sys.argv.index("--only") + 1]) if "--only" in sys.argv else None  # -1: the library's row
B, L, H, D = (3, 256, 2, 32) if SMOKE else (512, 256, 8, 32)
VARIANTS = [online.Variant(4, 64), online.Variant(2, 128, ping_pong=True, compute_registers=232),
            online.Variant(2, 128, compute_registers=232),
            online.Variant(4, 64, compute_registers=104, producer_registers=56),
            online.Variant(2, 256, ping_pong=True, compute_registers=232)]  # the library's arithmetic


@jax.jit
def reference(qkv, q_bias):
    """float32 softmax attention of q + b_q (rounded to bf16), k, v: (B, L, H, D), by XLA on the device."""
    q, k, v = (qkv[:, :, i] for i in range(3))
    q = q + q_bias.reshape(H, D)
    q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(D)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v, precision="highest")


def main(out):
    results = dict(environment=benchmark.environment(), shape=dict(batch=B, tokens=L, heads=H, d=D), rows=[])
    count = 2 if SMOKE else 4
    keys = jax.random.split(jax.random.key(0), count + 1)
    xs = [(2.0 * jax.random.normal(k, (B, L, 3, H, D))).astype(jnp.bfloat16) for k in keys[:count]]
    q_bias = jax.random.normal(keys[-1], (H * D,)).astype(jnp.bfloat16)
    want = np.asarray(reference(xs[0], q_bias))
    library = None

    def row(name, fn, **extra):
        nonlocal library
        entry = dict(name=name, **extra)
        try:
            got = jax.jit(fn)(xs[0], q_bias)
            got32 = np.asarray(got, np.float32)
            entry["max_diff_float32"] = float(np.abs(got32 - want).max())
            if library is not None:
                entry["max_diff_library"] = float(np.abs(got32 - library).max())
            else:
                library = got32
            if not SMOKE:
                entry["us"] = bgn.time_per_call(fn, xs, (q_bias,), 7) * 1e6
        except Exception as e:  # noqa: BLE001 (a probe: record and go on)
            entry["error"] = repr(e)[:800]
        results["rows"].append(entry)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()}, flush=True)
        json.dump(results, open(out, "w"), indent=2)

    if ONLY is not None and os.path.exists(out):  # the rows of earlier processes
        results["rows"] = json.load(open(out))["rows"]
        library = np.load(out + ".library.npy")
    if ONLY in (None, -1):
        row("library", lambda x, b: mosaic_attention.call(x, b, new_order=True, interpret=SMOKE))
        if ONLY is not None:
            np.save(out + ".library.npy", library)
    for i, variant in enumerate(VARIANTS):
        if ONLY in (None, i):
            row("online", lambda x, b, variant=variant: online.call(x, b, new_order=True, variant=variant,
                                                                   interpret=SMOKE), **vars(variant))


if __name__ == "__main__":
    main(sys.argv[1])
