"""experiments/profile_step.py's trace summary, on a hand-made trace whose numbers are known, and on a real
trace recorded here (CPU: no device timeline, which must be said, not summarised as zero)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import profile_step  # noqa: E402


def kernel(name, ts, dur, op=None):
    return dict(ph="X", pid=1, tid=7, name=name, ts=ts, dur=dur, args={"hlo_op": op or name})


def test_summary_of_a_known_trace():
    events = [
        dict(ph="M", pid=1, name="process_name", args={"name": "/device:GPU:0"}),
        dict(ph="M", pid=2, name="process_name", args={"name": "/host:CPU"}),
        dict(ph="X", pid=2, tid=1, name="host work", ts=0, dur=10_000, args={}),   # not a kernel
        dict(ph="X", pid=2, tid=1, name="GpuExecutable::ExecuteThunks", ts=0, dur=300, args={}),
        dict(ph="X", pid=2, tid=1, name="GpuExecutable::ExecuteThunks", ts=1000, dur=500, args={}),
        # two repetitions of: a conv (100 µs), a reduction (50 µs), a gap of 30 µs, a cuBLAS product (20 µs)
        *[e for r in range(2) for e in (
            kernel("sm90_xmma_fprop_implicit_gemm_bf16", 1000 * r, 100, "cudnn-conv.1"),
            kernel("input_reduce_fusion_12", 1000 * r + 100, 50),
            kernel("nvjet_sm90_tst_128x128", 1000 * r + 180, 20, "custom-call.3"),
        )],
    ]
    s = profile_step.summarize({"traceEvents": events}, reps=2)
    assert s["busy_ms"] == pytest.approx(0.170)
    assert s["span_ms"] == pytest.approx((1200 / 2) / 1e3)   # 0 … 1200 µs over two repetitions
    assert s["idle_ms"] == pytest.approx((30 + 800 + 30) / 2 / 1e3)
    by = {c["category"]: c for c in s["categories"]}
    assert by["conv forward"]["ms"] == pytest.approx(0.100) and by["conv forward"]["kernels"] == 1
    assert by["input_reduce_fusion"]["ms"] == pytest.approx(0.050)
    assert by["matrix product"]["ms"] == pytest.approx(0.020)
    assert s["host_ms"]["GpuExecutable::ExecuteThunks"] == pytest.approx(0.4)
    assert s["host_ms"]["cuGraphLaunch"] == 0
    top = s["top_operations"][0]
    assert (top["hlo_op"], top["kernel"], top["ms"]) == ("cudnn-conv.1", "sm90_xmma_fprop_implicit_gemm_bf16",
                                                         pytest.approx(0.100))
    assert [o["hlo_op"] for o in s["top_operations"]] == ["cudnn-conv.1", "input_reduce_fusion_12", "custom-call.3"]
    largest = s["largest_gaps"][0]
    assert (largest["after"], largest["before"], largest["ms"]) == ("custom-call.3", "cudnn-conv.1",
                                                                     pytest.approx(0.4))


def test_categories():
    assert profile_step.category("sm90_xmma_dgrad_implicit_gemm") == "conv input gradient"
    assert profile_step.category("sm90_xmma_wgrad_indexed_implicit_gemm") == "conv weight gradient"
    assert profile_step.category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention (cuDNN)"
    assert profile_step.category("loop_convert_fusion_106") == "loop_convert_fusion"
    assert profile_step.category("gemm_fusion_dot_3") == "matrix product"


def test_a_trace_without_a_device_timeline_is_refused(tmp_path):
    f = jax.jit(lambda x: jnp.tanh(x) @ x)
    x = jnp.ones((64, 64))

    def run(n):
        for _ in range(n):
            y = f(x)
        jax.block_until_ready(y)

    if jax.default_backend() != "cpu":
        pytest.skip("on an accelerator the trace has a device timeline")
    with pytest.raises(ValueError, match="no device timeline"):
        profile_step.record(run, 2, str(tmp_path), "toy")
    assert (tmp_path / "toy.trace.json.gz").exists()   # the trace is kept even when it cannot be summarised
