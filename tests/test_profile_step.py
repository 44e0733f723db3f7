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
    assert [o["hlo_op"] for o in s["top_operations"]] == ["cudnn-conv.1", "input_reduce_fusion_12",
                                                          "custom-call.3"]
    largest = s["largest_gaps"][0]
    assert (largest["after"], largest["before"], largest["ms"]) == ("custom-call.3", "cudnn-conv.1",
                                                                    pytest.approx(0.4))


G = "jit(generate)/while/body/eval_jaxpr/UNet/input_blocks_5_1"  # op_name paths as jax writes them
T = "jit(train_step)/transpose(jvp(UNet))/input_blocks_1_0"
HLO = f"""
HloModule jit_generate
%fused_add.8 (p0: bf16[4], p1: bf16[4]) -> bf16[4] {{
  ROOT %add.1 = bf16[4]{{0}} add(%p0, %p1), metadata={{op_name="{G}/add"}}
}}
ENTRY %main {{
  %loop_add_fusion.8 = bf16[4]{{0}} fusion(%a, %b), kind=kLoop, metadata={{op_name="{G}/add" x="y"}}
  %custom-call.3 = (bf16[4]{{0}}) custom-call(%a), metadata={{op_name="{G}/qkv/blc,chd->blhd/dot_general"}}
  %cudnn-conv.1 = (bf16[4]{{0}}) custom-call(%a), metadata={{op_name="{T}/in_layers_2/conv_general_dilated"}}
  %select.2 = f32[4]{{0}} select(%p, %a, %b), metadata={{op_name="jit(generate)/while/jit(_where)/select_n"}}
  ROOT %copy.1 = f32[4]{{0}} copy(%select.2)
}}
"""


def test_op_names_and_layers():
    names = profile_step.op_names(HLO)
    assert names["loop_add_fusion.8"] == G + "/add"
    assert names["add.1"] == G + "/add"  # the ROOT of a computation
    assert "copy.1" not in names  # no metadata
    layer = profile_step.layer_of
    assert layer(names["loop_add_fusion.8"]) == "input_blocks_5_1"  # the primitive is not a level
    assert layer(names["custom-call.3"]) == "input_blocks_5_1/qkv"  # two levels, the einsum scope cut
    assert layer(names["cudnn-conv.1"]) == "backward: input_blocks_1_0/in_layers_2"
    assert layer("jit(train_step)/jvp(UNet)/out_2/dot_general") == "out_2"
    assert layer("jit(generate)/UNet/concatenate") == "UNet"  # at the root's top level
    assert layer(names["select.2"]) == profile_step.OUTSIDE
    assert layer("jit(f)/UNetX/conv/add") == profile_step.OUTSIDE  # whole module names only
    assert layer("jit(f)/Classifier/head/dot_general", root="Classifier") == "head"


def test_summary_by_layer():
    events = [
        dict(ph="M", pid=1, name="process_name", args={"name": "/device:GPU:0"}),
        *[e for r in range(2) for e in (
            kernel("loop_add_fusion", 1000 * r, 40, "loop_add_fusion.8"),
            kernel("nvjet_sm90_tst", 1000 * r + 40, 30, "custom-call.3"),
            kernel("nvjet_sm90_tst", 1000 * r + 70, 10, "custom-call.3"),
            kernel("cudnn_sdpa", 1000 * r + 80, 20, "command_buffer_7"),
            kernel("loop_select_fusion", 1000 * r + 100, 5, "select.2"),
            kernel("copy_1", 1000 * r + 105, 2, "copy.1"),
        )],
    ]
    s = profile_step.summarize({"traceEvents": events}, reps=2, hlo_text=HLO)
    got = {row["layer"]: (row["ms"], row["kernels"]) for row in s["by_layer"]}
    assert got == {"input_blocks_5_1/qkv": (pytest.approx(0.040), 2),
                   "input_blocks_5_1": (pytest.approx(0.040), 1),
                   profile_step.IN_COMMAND_BUFFER: (pytest.approx(0.020), 1),
                   profile_step.OUTSIDE: (pytest.approx(0.005), 1),
                   profile_step.NO_METADATA: (pytest.approx(0.002), 1)}
    assert sum(row["ms"] for row in s["by_layer"]) == pytest.approx(s["busy_ms"])
    assert "by_layer" not in profile_step.summarize({"traceEvents": events}, reps=2)


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
