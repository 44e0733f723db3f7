"""Probe (written in the twenty-third session, for the next): the library's 16×16 Mosaic attention kernel
(jdiff/models/mosaic_attention.py, online softmax, four compute warpgroups at L = 256) under other settings of
its module constants: KEY_BLOCK (keys per online-softmax step), STAGES (items in shared memory) and the
register split of four compute warpgroups. Batch 512, L = 256, 8 heads of 32, bf16, q|k|v in the new order; µs
per call in experiments/bench_group_norm.py's harness (distinct inputs, calls chained); each output against
the default settings' and XLA's float32 attention.

    python probe_attn_settings.py OUT.json --only I [--smoke]
I: the row of SETTINGS (0 = the defaults); one row per process, each adding to OUT.json, so that a setting that
hangs the GPU (as a 112/40 register split did) stops only its row. --smoke: tiny shapes in the interpreter.
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
from jdiff.models import mosaic_attention  # noqa: E402
from probe_attn_online import reference  # noqa: E402  (XLA's float32 attention, the same shapes)

SMOKE = "--smoke" in sys.argv
ONLY = int(sys.argv[sys.argv.index("--only") + 1])
B, L, H, D = (3, 256, 2, 32) if SMOKE else (512, 256, 8, 32)
SETTINGS = [  # module constants to set; the first row is the library's defaults
    {},
    {"KEY_BLOCK": 32},
    {"KEY_BLOCK": 128},
    {"STAGES": 3},
    {"REGISTERS": {4: (96, 88), 2: (232, 40)}},
    {"KEY_BLOCK": 32, "STAGES": 3},
]


def main(out):
    results = (json.load(open(out)) if os.path.exists(out) else
               dict(environment=benchmark.environment(), shape=dict(batch=B, tokens=L, heads=H, d=D), rows=[]))
    keys = jax.random.split(jax.random.key(0), 5)
    xs = [(2.0 * jax.random.normal(k, (B, L, 3, H, D))).astype(jnp.bfloat16) for k in keys[:2 if SMOKE else 4]]
    q_bias = jax.random.normal(keys[-1], (H * D,)).astype(jnp.bfloat16)
    setting = SETTINGS[ONLY]
    for name, value in setting.items():
        setattr(mosaic_attention, name, value)
    entry = dict(row=ONLY, **{k: str(v) for k, v in setting.items()})
    try:
        def attend(x, b):
            return mosaic_attention.call(x, b, new_order=True, interpret=SMOKE)
        got = np.asarray(jax.jit(attend)(xs[0], q_bias), np.float32)
        entry["max_diff_float32"] = float(np.abs(got - np.asarray(reference(xs[0], q_bias))).max())
        if ONLY == 0:
            np.save(out + ".default.npy", got)
        elif os.path.exists(out + ".default.npy"):
            entry["max_diff_default"] = float(np.abs(got - np.load(out + ".default.npy")).max())
        if not SMOKE:
            entry["us"] = bgn.time_per_call(attend, xs, (q_bias,), 7) * 1e6
    except Exception as e:  # noqa: BLE001 (a probe: record and go on)
        entry["error"] = repr(e)[:800]
    results["rows"].append(entry)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()}, flush=True)
    json.dump(results, open(out, "w"), indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
