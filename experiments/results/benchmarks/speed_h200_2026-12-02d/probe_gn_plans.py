"""Probe (twenty-third session): the Mosaic GPU GroupNorm forward at the UNet's 32×32 shapes (batch 512, bf16,
SiLU) under other plans than the default one: more CTAs per SM through smaller ring chunks and a larger
shared-memory budget. At C = 384 (whole groups of 12 channels make 48-channel slabs) the default plan fits
one CTA per SM, and the sampling profile's norm there took 350 µs against ~190 for one read and one write.

Each plan is forced by replacing ``mosaic_group_norm.plan`` (jax's caches cleared in between), and its y,
mean and rstd are compared with the default plan's (the sums run in the same order: equal bit for bit is
expected). Timing: experiments/bench_group_norm.py's harness (distinct inputs chained by optimisation
barriers, so every call reads x from DRAM; median over repeats), µs per call. Also XLA's negation of x
(one read, one write) and the Triton kernel, for scale.

    python probe_gn_plans.py OUT.json [--smoke]   # --smoke: tiny shapes in the interpreter (CPU)
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
sys.path.insert(0, "experiments")
import bench_group_norm as bgn  # noqa: E402
import benchmark  # noqa: E402
from jdiff.models import mosaic_group_norm as mgn, pallas_group_norm as pgn  # noqa: E402
from jdiff.models.mosaic_group_norm import Plan  # noqa: E402

SMOKE = "--smoke" in sys.argv
B = 2 if SMOKE else 512
# (N, the parts' channels, a and b shared) at 32×32: the encoder's and decoder's 128-channel norms, the
# decoder's 128 + 128 parts, the block after the up-sampling (256 + 128, concatenated: 384)
SHAPES = [(64, (128,), True), (64, (128, 128), True)] if SMOKE else [
    (1024, (128,), False), (1024, (128,), True), (1024, (128, 128), True), (1024, (256,), False),
    (1024, (384,), True)]
# (channels per CTA → plans): (chunk rows, ring buffers, CTAs per SM); the first is the default plan
PLANS = {
    32: [(256, 6, 2), (128, 12, 2), (64, 24, 2), (128, 9, 3), (64, 17, 3), (256, 5, 2)],
    48: [(256, 8, 1), (128, 16, 1), (128, 9, 2), (64, 17, 2), (64, 24, 1)],
}
SMOKE_PLANS = {32: [(64, 3, 1), (64, 2, 2)]}


def main(out):
    results = dict(environment=benchmark.environment(), batch=B, rows=[])
    default_plan = mgn.plan
    for n, parts, shared in SHAPES:
        channels = sum(parts)
        xs, a, b = bgn.inputs((B, n, channels), 2 if SMOKE else max(2, bgn.INPUT_BYTES_PER_TIMING // (
            B * n * channels * 2)))
        if shared:
            a, b = a[0], b[0]
        split = tuple(np.cumsum(parts)[:-1])
        # the parts are separate arrays before the timed program, as the decoder's are
        xs_in = [tuple(jnp.split(x, split, axis=-1)) for x in xs] if len(parts) > 1 else xs
        shape = dict(n=n, parts=parts, shared=shared)
        repeats = 1 if SMOKE else 7

        def row(name, fn, reference=None, inputs=xs_in, **extra):
            entry = dict(name=name, **shape, **extra)
            try:
                got = jax.jit(fn)(inputs[0], a, b)
                jax.block_until_ready(got)
                if reference is not None:
                    entry["max_diff"] = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
                                            for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(reference)))
                entry["us"] = bgn.time_per_call(lambda x, a, b: jax.tree.leaves(fn(x, a, b))[0], inputs, (a, b),
                                                repeats) * 1e6
            except Exception as e:  # noqa: BLE001 (a probe: record and go on)
                entry["error"] = repr(e)[:600]
                got = None
            results["rows"].append(entry)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in entry.items()}, flush=True)
            json.dump(results, open(out, "w"), indent=2)
            return got

        interpret = SMOKE
        if not SMOKE:
            row("xla negation", lambda x, a, b: -x, inputs=xs)
            row("triton", lambda x, a, b: pgn.forward(x, a, b, silu=True, kernel="triton")[0])
        cpp = default_plan(n, channels, 2).channels_per_cta
        reference = None
        for chunk_rows, ring, ctas in (SMOKE_PLANS if SMOKE else PLANS)[cpp]:
            forced = Plan(channels_per_cta=cpp, chunk_rows=chunk_rows, ring=ring, ctas_per_sm=ctas)
            mgn.plan = lambda *args, forced=forced, **kwargs: forced
            jax.clear_caches()
            budget = ring * ctas * chunk_rows * cpp * 2  # distinct static settings per plan
            got = row("mosaic", lambda x, a, b: mgn.forward(x, a, b, silu=True, interpret=interpret,
                                                            chunk_rows=chunk_rows, ring_bytes_per_sm=budget),
                      reference, chunk_rows=chunk_rows, ring=ring, ctas_per_sm=ctas,
                      smem_kib=budget / ctas / 1024)
            reference = got if reference is None else reference
        mgn.plan = default_plan
        jax.clear_caches()


if __name__ == "__main__":
    main(sys.argv[1])
