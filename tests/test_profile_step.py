"""experiments/profile_step.py's trace summary, on a hand-made trace whose numbers are known, and on a real
trace recorded here (CPU: no device timeline, which must be said, not summarised as zero)."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import profile_step  # noqa: E402


def kernel(name, ts, dur, op=None):
    return dict(ph="X", pid=1, tid=7, name=name, ts=ts, dur=dur, args={"hlo_op": op or name})


GPU = dict(ph="M", pid=1, name="process_name", args={"name": "/device:GPU:0"})


def two_repetitions(kernels_at):
    """The kernels that ``kernels_at(t0)`` gives for a repetition starting at t0 µs, at t0 = 0 and 1000."""
    return [e for t0 in (0, 1000) for e in kernels_at(t0)]


def test_summary_of_a_known_trace():
    events = [
        GPU,
        dict(ph="M", pid=2, name="process_name", args={"name": "/host:CPU"}),
        dict(ph="X", pid=2, tid=1, name="host work", ts=0, dur=10_000, args={}),   # not a kernel
        dict(ph="X", pid=2, tid=1, name="GpuExecutable::ExecuteThunks", ts=0, dur=300, args={}),
        dict(ph="X", pid=2, tid=1, name="GpuExecutable::ExecuteThunks", ts=1000, dur=500, args={}),
        # two repetitions of: a conv (100 µs), a reduction (50 µs), a gap of 30 µs, a cuBLAS product (20 µs)
        *two_repetitions(lambda t: (
            kernel("sm90_xmma_fprop_implicit_gemm_bf16", t, 100, "cudnn-conv.1"),
            kernel("input_reduce_fusion_12", t + 100, 50),
            kernel("nvjet_sm90_tst_128x128", t + 180, 20, "custom-call.3"),
        )),
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
        GPU,
        *two_repetitions(lambda t: (
            kernel("loop_add_fusion", t, 40, "loop_add_fusion.8"),
            kernel("nvjet_sm90_tst", t + 40, 30, "custom-call.3"),
            kernel("nvjet_sm90_tst", t + 70, 10, "custom-call.3"),
            kernel("cudnn_sdpa", t + 80, 20, "command_buffer_7"),
            kernel("loop_select_fusion", t + 100, 5, "select.2"),
            kernel("copy_1", t + 105, 2, "copy.1"),
        )),
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
    assert profile_step.category("mosaic_attention_mosaic_gpu_kernel") == "attention (jdiff, Mosaic GPU)"


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


WORK_HLO = "\n".join([
    "HloModule jit_generate",
    "%fused_rows (param_0.1: f32[64,32], param_1.2: f32[32]) -> f32[32] {",
    "  %param_0.1 = f32[64,32]{1,0} parameter(0)",
    "  %slice.1 = f32[1,32]{1,0} slice(%param_0.1), slice={[3:4], [0:32]}",
    "  %bitcast.9 = f32[32]{0} bitcast(%slice.1)",
    "  %param_1.2 = f32[32]{0} parameter(1)",
    "  ROOT %add.3 = f32[32]{0} add(%bitcast.9, %param_1.2)",
    "}",
    "%gemm_fusion_dot.4_computation (parameter_0.4: bf16[128,64], parameter_1.4: bf16[64,16]) "
    "-> bf16[128,16] {",
    "  %parameter_0.4 = bf16[128,64]{1,0} parameter(0)",
    "  %parameter_1.4 = bf16[64,16]{1,0} parameter(1)",
    "  ROOT %dot.2 = bf16[128,16]{1,0} dot(%parameter_0.4, %parameter_1.4), lhs_contracting_dims={1}, "
    "rhs_contracting_dims={0}",
    "}",
    "ENTRY %main (x: bf16[2,8,8,16]) -> bf16[2,8,8,32] {",
    "  %x = bf16[2,8,8,16]{3,2,1,0} parameter(0)",
    "  %w = bf16[32,3,3,16]{3,2,1,0} parameter(1)",
    "  %d = bf16[2,4,4,32]{3,2,1,0} parameter(2)",
    "  %wt = bf16[32,4,4,16]{3,2,1,0} parameter(3)",
    "  %p = f32[16,40]{1,0} parameter(4)",
    "  %r = f32[40,24]{1,0} parameter(5)",
    "  %a = bf16[128,64]{1,0} parameter(6)",
    "  %b = bf16[64,16]{1,0} parameter(7)",
    "  %q = bf16[2,16,4,8]{3,2,1,0} parameter(8)",
    "  %table = f32[64,32]{1,0} parameter(9)",
    "  %v = f32[32]{0} parameter(10)",
    "  %conv.1 = (bf16[2,8,8,32]{3,2,1,0}, u8[131]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, "
    'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"',
    "  %conv-bw-input.2 = (bf16[2,8,8,16]{3,2,1,0}, u8[0]{0}) custom-call(%d, %wt), "
    'window={size=4x4 stride=2x2 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, '
    'custom_call_target="__cudnn$convBackwardInput"',
    "  %mm.3 = (f32[16,24]{1,0}, s8[1024]{0}) custom-call(%p, %r), "
    'custom_call_target="__cublas$lt$matmul", '
    'backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_batch_dimensions":[],'
    '"lhs_contracting_dimensions":["1"],"rhs_batch_dimensions":[],"rhs_contracting_dimensions":["0"]}}}',
    "  %gemm_fusion_dot.4 = bf16[128,16]{1,0} fusion(%a, %b), kind=kCustom, "
    "calls=%gemm_fusion_dot.4_computation",
    "  %attention.5 = (bf16[2,4,16,8]{3,1,2,0}, u8[256]{0}) custom-call(%q, %q, %q), "
    'custom_call_target="__cudnn$fmhaSoftmax"',
    "  %loop_add_fusion.7 = f32[32]{0} fusion(%table, %v), kind=kLoop, calls=%fused_rows",
    "  ROOT %tuple.8 = (bf16[2,8,8,32]{3,2,1,0}) tuple(%conv.1#0)",
    "}",
])


def test_kernel_work_from_the_hlo():
    """Bytes read and written and FLOPs of each kind of instruction, against the formulas worked by hand."""
    instructions = profile_step.hlo_instructions(WORK_HLO)
    work = functools.partial(profile_step.kernel_work, instructions)
    assert instructions["conv.1"].computation == "main" and instructions["add.3"].computation == "fused_rows"
    assert instructions["conv.1"].arrays == (("bf16", (2, 8, 8, 32)), ("u8", (131,)))
    # x, w, y in bf16 (the u8 scratch left out); each of the 2·8·8·32 outputs sums 3·3·16 products
    assert work("conv.1") == (2 * (2 * 8 * 8 * 16 + 32 * 9 * 16 + 2 * 8 * 8 * 32),
                              2.0 * 2 * 8 * 8 * 32 * 9 * 16)
    # transposed: the forward conv's output is the operand, 2·4·4·32 sums over its 4·4·16-element window
    assert work("conv-bw-input.2")[1] == 2.0 * (2 * 4 * 4 * 32) * 4 * 4 * 16
    assert work("mm.3") == (4 * (16 * 40 + 40 * 24 + 16 * 24), 2.0 * 16 * 24 * 40)
    assert work("gemm_fusion_dot.4") == (2 * (128 * 64 + 64 * 16 + 128 * 16), 2.0 * 128 * 16 * 64)
    assert work("attention.5")[1] == 4.0 * (2 * 16 * 4 * 8) * 16  # 4·B·N·T²·H
    assert work("loop_add_fusion.7") == (4 * (32 + 32 + 32), 0.0)  # the table's one sliced row, not all 64
    # element widths from the type's name: 8-bit floats and 4-bit integers too
    narrow = profile_step.hlo_instructions("ENTRY %m {\n  %x = f8e4m3fn[6]{0} parameter(0)\n"
                                           "  %y = s4[6]{0} parameter(1)\n"
                                           "  ROOT %z = (f8e4m3fn[6]{0}, pred[2]{0}) custom-call(%x, %y)\n}")
    assert narrow["x"].arrays == (("f8e4m3fn", (6,)),)
    assert profile_step.kernel_work(narrow, "z") == (6 + 2 + 6 + 3, 0.0)


def test_floors_count_each_instruction_once_at_its_main_kernel():
    events = [
        GPU,
        *two_repetitions(lambda t: (
            kernel("Memset 3", t, 1, "conv.1"),
            kernel("nhwcAddPaddingKernel", t + 2, 3, "conv.1"),
            kernel("sm90_xmma_fprop_implicit_gemm", t + 5, 2000, "conv.1"),
            kernel("loop_add_fusion_7", t + 10, 1, "loop_add_fusion.7"),
            kernel("cudnn_sdpa", t + 20, 5, "command_buffer_3"),
        )),
    ]
    # at 1 GB/s and 1 GFLOP/s a floor is bytes/1000 or FLOPs/1000 µs
    s = profile_step.summarize({"traceEvents": events}, reps=2, hlo_text=WORK_HLO, bandwidth_tbps=1e-3,
                               peak_tflops=1e-3)
    by = {c["category"]: c for c in s["floors"]["categories"]}
    conv_bytes, conv_flops = profile_step.kernel_work(profile_step.hlo_instructions(WORK_HLO), "conv.1")
    assert by["conv forward"]["floor_ms"] == pytest.approx(conv_flops / 1e3 / 1e3)  # once per repetition
    assert by["conv forward"]["gb"] == pytest.approx(conv_bytes / 1e9)
    assert by["conv forward"]["tflop"] == pytest.approx(conv_flops / 1e12)
    assert by["Memset 3"]["floor_ms"] == 0 and by["nhwcAddPaddingKernel"]["floor_ms"] == 0
    assert by["loop_add_fusion"]["floor_ms"] == pytest.approx(4 * 96 / 1e3 / 1e3)
    assert by["attention (cuDNN)"]["floor_ms"] == 0  # in a command buffer: no instruction to read
    assert by["conv forward"]["ms"] == pytest.approx(2.0)
    assert "floors" not in profile_step.summarize({"traceEvents": events}, reps=2)
