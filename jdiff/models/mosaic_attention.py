"""softmax((q + b_q)·kᵀ/√d)·v per image and head, read from the attention's one q|k|v product, as a
persistent Pallas Mosaic GPU kernel for Hopper GPUs: the UNet's 16×16 attention (L = 256 positions, 8 heads
of 32).

It computes :func:`jdiff.models.pallas_attention.attention_from_qkv`'s attention: for each image and head,
q + b_q rounded to q's dtype, logits (q + b_q)·kᵀ in float32, their softmax's numerators in float32,
rounded to q's dtype for the product with v, divided by their float32 sum, the output rounded to q's dtype;
the numerators of each key block are taken against the running row maximum (below), so their 16-bit
rounding differs from the Triton kernel's whole-row form by about an ulp of the output. q, k and v come
straight from the (B, L, 3C) product (no XLA slices of it written out), b_q is added in the kernel (XLA
would not fold a bias of the product into the product's epilogue: measured, it made a pass of its own).

Why: cuDNN's flash-attention kernel took 215–234 µs per call at batch 512 on an H200 at this shape (head
width 32, 4,096 (image, head) pairs of 256 positions), jdiff's Triton kernel for short sequences cannot hold
256 × 256 logits, and XLA's attention writes them out. Here:

- one CTA per SM stays resident and takes (image, head) items i, i + G, … (G CTAs); a producer warpgroup
  copies each item's q, k, v (L × d each) into shared memory by TMA, ``STAGES`` items ahead, each stage
  released by the compute warpgroups once they have read it;
- L/64 compute warpgroups (four at L = 256, two at 128) each own one block of 64 query rows (the wgmma
  tile's height): q + b_q into registers, then the keys in blocks of ``KEY_BLOCK`` with an online softmax
  (FlashAttention's running maximum and sum): per key block j, the 64 × KEY_BLOCK logits
  s_j = (q + b_q)·k_jᵀ with one tensor-core product, m' = max(m, max_row(s_j)/√d), α = exp(m − m'),
  p_j = exp(s_j/√d − m'), l = α·l + Σ_row p_j, acc = α·acc + (p_j rounded to q's dtype)·v_j (p_j from
  registers); the output acc / l through shared memory to a TMA store.

Holding 64 × KEY_BLOCK logits instead of a whole 64 × L row is what lets four compute warpgroups fit in an
SM's registers; the fourteenth session's kernel (two warpgroups, each with its two query blocks' whole rows
one after the other, in ping-pong) was latency-bound. On an H200 (docs/benchmarks.md, twenty-third session)
this scheme took 202 µs per call against 216–231 for that kernel at batch 512, and sampling ran 0.36–0.45%
faster; that kernel had taken 156–168 µs against cuDNN's 234 in the fourteenth session's harness.

It runs on NVIDIA GPUs of compute capability 9.x with jax ≥ 0.11 (:func:`jdiff.models.mosaic_gpu.runs_here`),
and in Mosaic GPU's interpreter (jax ≥ 0.10), where the products' register operands and kᵀ go through shared
memory (the interpreter's wgmma reads its operands from shared memory only, and jax 0.10's takes no
transposed view). It has no derivative of its own:
:mod:`jdiff.models.pallas_attention`'s custom VJP recomputes XLA's attention for the backward.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jdiff.models.mosaic_gpu import Registers, interpreter, runs_here, sm_count

Dtype = Any

ROWS = 64  # query rows per compute warpgroup: the wgmma tile's height
KEY_BLOCK = 64  # keys per step of the online softmax: 64 × 64 float32 logits take 32 registers per thread
STAGES = 2  # items whose q, k, v are in shared memory at once (3 were not consistently faster on an H200)
# per thread, by setmaxnreg, for each number of compute warpgroups (L/64) that has run on an H200, of an SM's
# 65,536: (compute, producer); 4 × 128 × 104 + 128 × 56 (112 and 40 hung), 2 × 128 × 232 + 128 × 40 (the
# fourteenth session's two warpgroups)
REGISTERS = {4: (104, 56), 2: (232, 40)}
TOKENS = tuple(sorted(warpgroups * ROWS for warpgroups in REGISTERS))
SMEM_BYTES = 200 * 1024  # of an SM's 227 KiB, for the stages and the output tiles
_TILE = plgpu.Layout.WGMMA


def _smem_bytes(tokens: int, head_channels: int, itemsize: int) -> int:
    """q, k, v of STAGES items and one output tile per query block."""
    return (3 * STAGES * tokens + tokens) * head_channels * itemsize


def unsupported_reason(shape: tuple[int, ...], dtype: Dtype) -> str | None:
    """Why the kernel cannot take q, k, v of this (B, L, heads, d) shape and dtype, or None if it can."""
    if len(shape) != 4:
        return f"q, k, v must be (B, L, heads, d), got shape {shape}"
    _, tokens, _, head_channels = shape
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"q, k, v must be bfloat16 or float16 (tensor-core products), got {jnp.dtype(dtype)}"
    if tokens not in TOKENS:
        return (f"the sequence length L = {tokens} must be one of {TOKENS} (one {ROWS}-row query block per "
                f"compute warpgroup, in the warpgroup counts whose register split has run on a GPU)")
    if head_channels not in (16, 32, 64):
        return f"the head width d = {head_channels} must be 16, 32 or 64 (one swizzled row of shared memory)"
    if _smem_bytes(tokens, head_channels, jnp.dtype(dtype).itemsize) > SMEM_BYTES:
        return f"q, k, v of {STAGES} items do not fit in {SMEM_BYTES // 1024} KiB of shared memory"
    return None


def preferred(shape: tuple[int, ...], dtype: Dtype) -> bool:
    """Whether jdiff's Pallas attention takes this kernel: where it runs and takes the shape."""
    return runs_here() and unsupported_reason(shape, dtype) is None


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The static shape of one call."""
    tokens: int
    heads: int
    head_channels: int
    items: int  # (image, head) pairs
    ctas: int
    qkv_axis: int  # the axis of q|k|v in the product's view: 2 (new order) or 3 (legacy)

    @property
    def warpgroups(self) -> int:  # compute warpgroups: one per query block
        return self.tokens // ROWS


def _attention_tma(qkv_gmem, bias_gmem, out_gmem, q_smem, k_smem, v_smem, out_smem, bias_smem, staged,
                   q_loaded, k_loaded, v_loaded, bias_loaded, consumed, *, shape: _Shape, compiled: bool):
    """One CTA's work (the module docstring has the scheme)."""
    tokens, d, warpgroups = shape.tokens, shape.head_channels, shape.warpgroups
    cta, wg = lax.axis_index("cta"), lax.axis_index("wg")
    my_items = (shape.items - cta + shape.ctas - 1) // shape.ctas

    def located(j):  # this CTA's item j: (image, head)
        item = cta + shape.ctas * j
        return item // shape.heads, item % shape.heads

    def source(image, head, which):  # q, k or v of an image and head, (L, d)
        index = [image, pl.ds(0, tokens), head]
        index.insert(shape.qkv_axis, which)
        return qkv_gmem.at[tuple(index)]

    load = Registers(compiled).load

    def operand(value, which):
        """A product's register operand; in the interpreter, whose wgmma reads shared memory only, staged
        there (``which`` picks the buffer: 0 q, 1 p, 2 kᵀ)."""
        if compiled:
            return value
        ref = staged[which].at[wg]
        ref[...] = value
        plgpu.commit_smem()
        return ref

    @pl.when(wg == warpgroups)
    def _copies():
        plgpu.set_max_registers(REGISTERS[warpgroups][1], action="decrease")
        plgpu.copy_gmem_to_smem(bias_gmem, bias_smem, bias_loaded.at[0])

        @pl.loop(0, my_items)
        def _(j):
            stage = j % STAGES

            @pl.when(j >= STAGES)
            def _():
                plgpu.barrier_wait(consumed.at[stage])
            image, head = located(j)
            for which, (buffer, loaded) in enumerate(((q_smem, q_loaded), (k_smem, k_loaded),
                                                      (v_smem, v_loaded))):
                plgpu.copy_gmem_to_smem(source(image, head, which), buffer.at[stage], loaded.at[stage])

        @pl.loop(jnp.maximum(my_items - STAGES, 0), my_items)
        def _(j):  # every phase of the consumed barriers observed before they are released
            plgpu.barrier_wait(consumed.at[j % STAGES])

    @pl.when(wg < warpgroups)
    def _compute():
        plgpu.set_max_registers(REGISTERS[warpgroups][0], action="increase")
        scale = math.log2(math.e) / math.sqrt(d)  # exp(x/√d) = 2^(x·scale)
        plgpu.barrier_wait(bias_loaded.at[0])
        row0 = wg * ROWS

        @pl.loop(0, my_items)
        def _(j):
            stage = j % STAGES
            image, head = located(j)
            plgpu.barrier_wait(q_loaded.at[stage])
            q_bias = lax.broadcast_in_dim(load(bias_smem.at[pl.ds(head * d, d)], _TILE.reduce(0)).astype(
                jnp.float32), (ROWS, d), [1])
            plgpu.barrier_wait(k_loaded.at[stage])
            q = (load(q_smem.at[stage, pl.ds(row0, ROWS)], _TILE).astype(jnp.float32) + q_bias)
            q = operand(q.astype(q_smem.dtype), 0)
            row_max = total = acc = None  # the online softmax's running m (scaled), l and acc
            for block in range(tokens // KEY_BLOCK):
                keys = pl.ds(block * KEY_BLOCK, KEY_BLOCK)
                k_block = k_smem.at[stage, keys].T if compiled else operand(k_smem.at[stage, keys][...].T, 2)

                def logits(acc_ref, k_block=k_block):
                    plgpu.wgmma(acc_ref, q, k_block)
                    return acc_ref[...]
                s = pl.run_scoped(logits, plgpu.ACC((ROWS, KEY_BLOCK), jnp.float32))
                block_max = s.max(axis=1) * scale
                new_max = block_max if row_max is None else jnp.maximum(row_max, block_max)
                p = jnp.exp2(s * scale - lax.broadcast_in_dim(new_max, s.shape, [0]))
                block_total = p.sum(axis=1)
                p = operand(p.astype(q_smem.dtype), 1)
                if block == 0:  # v's copy overlapped the first logits
                    plgpu.barrier_wait(v_loaded.at[stage])

                def weighted(acc_ref, p=p, keys=keys):
                    plgpu.wgmma(acc_ref, p, v_smem.at[stage, keys])
                    return acc_ref[...]
                block_out = pl.run_scoped(weighted, plgpu.ACC((ROWS, d), jnp.float32))
                if row_max is None:
                    total, acc = block_total, block_out
                else:
                    rescale = jnp.exp2(row_max - new_max)
                    total = total * rescale + block_total
                    acc = acc * lax.broadcast_in_dim(rescale, acc.shape, [0]) + block_out
                row_max = new_max
            plgpu.barrier_arrive(consumed.at[stage])
            out = acc * lax.broadcast_in_dim(1.0 / total, acc.shape, [0])
            # this warpgroup's tile was last stored one item ago: its store must have read it out
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            out_smem.at[wg][...] = out.astype(out_smem.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(out_smem.at[wg], out_gmem.at[image, pl.ds(row0, ROWS), head])
        plgpu.wait_smem_to_gmem(0)


def call(qkv: jax.Array, q_bias: jax.Array, *, new_order: bool, interpret: Any = False) -> jax.Array:
    """The kernel on ``qkv`` viewed as (B, L, 3, heads, d) (``new_order``) or (B, L, heads, 3, d) and q's bias
    (C,) in its dtype: (B, L, heads, d). Unchecked: :func:`jdiff.models.pallas_attention.attention_from_qkv`
    checks and calls it."""
    if new_order:
        batch, tokens, _, heads, d = qkv.shape
    else:
        batch, tokens, heads, _, d = qkv.shape
    items = batch * heads
    shape = _Shape(tokens=tokens, heads=heads, head_channels=d, items=items,
                   ctas=min(items, sm_count(interpret)), qkv_axis=2 if new_order else 3)
    itemsize = qkv.dtype.itemsize

    def smem(*dims):  # rows of the last dimension swizzled (bank-conflict free for the products and TMA)
        swizzle = min(dims[-1] * itemsize, 128)
        return plgpu.SMEM(dims, qkv.dtype, transforms=(plgpu.TilingTransform((8, swizzle // itemsize)),
                                                       plgpu.SwizzleTransform(swizzle)))

    compiled = not interpret
    warpgroups = shape.warpgroups
    kernel = functools.partial(_attention_tma, shape=shape, compiled=compiled)

    def body(qkv_gmem, bias_gmem, out_gmem):
        pl.run_scoped(
            lambda *scratch: kernel(qkv_gmem, bias_gmem, out_gmem, *scratch),
            smem(STAGES, tokens, d), smem(STAGES, tokens, d), smem(STAGES, tokens, d),
            smem(warpgroups, ROWS, d),
            plgpu.SMEM((heads * d,), qkv.dtype),
            None if compiled else (smem(warpgroups, ROWS, d), smem(warpgroups, ROWS, KEY_BLOCK),
                                   smem(warpgroups, d, KEY_BLOCK)),
            plgpu.Barrier(num_barriers=STAGES), plgpu.Barrier(num_barriers=STAGES),
            plgpu.Barrier(num_barriers=STAGES), plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_arrivals=warpgroups, num_barriers=STAGES),
            collective_axes="wg")

    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((batch, tokens, heads, d), qkv.dtype),
        grid=(shape.ctas,), grid_names=("cta",), kernel_name="mosaic_attention",  # in profiles
        num_threads=warpgroups + 1, thread_name="wg",
        # fast exp2 for the softmax, whose numerators are rounded to 16 bits; no automatic barriers around
        # shared-memory accesses: no thread reads and writes the same region, TMA copies are fenced
        compiler_params=plgpu.CompilerParams(approx_math=True, unsafe_no_auto_barriers=True),
        interpret=interpreter(interpret),
    )(qkv, q_bias)
