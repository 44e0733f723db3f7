"""Prototype (twenty-third session): jdiff's 16×16 Mosaic GPU attention (jdiff/models/mosaic_attention.py) with
the keys in blocks and an online softmax, so that each compute warpgroup holds 64 × ``key_block`` float32
logits instead of 64 × L, and more compute warpgroups fit in an SM's registers (four at key blocks of 64,
each owning one 64-row query block of an item, instead of two owning two blocks each, one after the other).

Per query block: m = running row maximum (scaled), l = running row sum, acc = running p·v; for each key block
kb: s = q·k_kbᵀ (float32), m' = max(m, max_row(s)·c), α = 2^(m − m'), p = 2^(s·c − m') (c = log2(e)/√d),
l = l·α + Σ_row p, acc = acc·α + (p rounded to 16 bits)·v_kb; out = acc / l, rounded to 16 bits. With one
key block of all L keys it is the library kernel's arithmetic (there without the α terms).

The TMA producer warpgroup, the stages and the output tiles are the library kernel's; ``ping_pong`` keeps its
schedule barrier between two compute warpgroups (for more warpgroups they run freely). Compared in
``probe_attn_online.py`` with the library kernel."""
import dataclasses
import functools
import math
import sys

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

sys.path.insert(0, ".")
from jdiff.models.mosaic_attention import ROWS, STAGES, _Shape  # noqa: E402
from jdiff.models.mosaic_gpu import Registers, interpreter, sm_count  # noqa: E402

_TILE = plgpu.Layout.WGMMA
_ROW = _TILE.reduce(1)


@dataclasses.dataclass(frozen=True)
class Variant:
    warpgroups: int = 4
    key_block: int = 64
    ping_pong: bool = False
    compute_registers: int = 112
    producer_registers: int = 40


def _kernel(qkv_gmem, bias_gmem, out_gmem, q_smem, k_smem, v_smem, out_smem, bias_smem, staged,
            q_loaded, k_loaded, v_loaded, bias_loaded, consumed, schedule, *, shape: _Shape, compiled: bool,
            variant: Variant):
    tokens, d = shape.tokens, shape.head_channels
    wgs, kb_size = variant.warpgroups, variant.key_block
    blocks = tokens // (wgs * ROWS)
    cta, wg = lax.axis_index("cta"), lax.axis_index("wg")
    my_items = (shape.items - cta + shape.ctas - 1) // shape.ctas

    def located(j):
        item = cta + shape.ctas * j
        return item // shape.heads, item % shape.heads

    def source(image, head, which):
        index = [image, pl.ds(0, tokens), head]
        index.insert(shape.qkv_axis, which)
        return qkv_gmem.at[tuple(index)]

    load = Registers(compiled).load

    def operand(value, which):
        if compiled:
            return value
        ref = staged[which].at[wg]
        ref[...] = value
        plgpu.commit_smem()
        return ref

    def rendezvous():
        plgpu.barrier_arrive(schedule)
        plgpu.barrier_wait(schedule)

    @pl.when(wg == wgs)
    def _copies():
        plgpu.set_max_registers(variant.producer_registers, action="decrease")
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
        def _(j):
            plgpu.barrier_wait(consumed.at[j % STAGES])

    @pl.when(wg < wgs)
    def _compute():
        plgpu.set_max_registers(variant.compute_registers, action="increase")
        scale = math.log2(math.e) / math.sqrt(d)
        plgpu.barrier_wait(bias_loaded.at[0])
        if variant.ping_pong:
            pl.when(wg == 1)(rendezvous)

        @pl.loop(0, my_items)
        def _(j):
            stage = j % STAGES
            image, head = located(j)
            plgpu.barrier_wait(q_loaded.at[stage])
            q_bias = lax.broadcast_in_dim(load(bias_smem.at[pl.ds(head * d, d)], _TILE.reduce(0)).astype(
                jnp.float32), (ROWS, d), [1])
            plgpu.barrier_wait(k_loaded.at[stage])
            for block in range(blocks):
                row0 = (wg * blocks + block) * ROWS
                q = (load(q_smem.at[stage, pl.ds(row0, ROWS)], _TILE).astype(jnp.float32) + q_bias)
                q = operand(q.astype(q_smem.dtype), 0)
                m = total = acc = None
                for kb in range(tokens // kb_size):
                    keys_ref = k_smem.at[stage, pl.ds(kb * kb_size, kb_size)]
                    keys = keys_ref.T if compiled else operand(keys_ref[...].T, 2)

                    def logits(acc_ref, keys=keys):
                        plgpu.wgmma(acc_ref, q, keys)
                        if variant.ping_pong and kb == 0:
                            rendezvous()
                        return acc_ref[...]
                    s = pl.run_scoped(logits, plgpu.ACC((ROWS, kb_size), jnp.float32))
                    block_max = s.max(axis=1) * scale
                    m_new = block_max if m is None else jnp.maximum(m, block_max)
                    p = jnp.exp2(s * scale - lax.broadcast_in_dim(m_new, s.shape, [0]))
                    block_total = p.sum(axis=1)
                    p = operand(p.astype(q_smem.dtype), 1)
                    last = kb == tokens // kb_size - 1
                    if variant.ping_pong and last:
                        plgpu.barrier_arrive(schedule)
                    if block == 0 and kb == 0:
                        plgpu.barrier_wait(v_loaded.at[stage])
                    if variant.ping_pong and last:
                        plgpu.barrier_wait(schedule)

                    def weighted(acc_ref, p=p, kb=kb):
                        plgpu.wgmma(acc_ref, p, v_smem.at[stage, pl.ds(kb * kb_size, kb_size)])
                        return acc_ref[...]
                    pv = pl.run_scoped(weighted, plgpu.ACC((ROWS, d), jnp.float32))
                    if m is None:
                        total, acc = block_total, pv
                    else:
                        alpha = jnp.exp2(m - m_new)
                        total = total * alpha + block_total
                        acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0]) + pv
                    m = m_new
                if block == blocks - 1:
                    plgpu.barrier_arrive(consumed.at[stage])
                out = acc * lax.broadcast_in_dim(1.0 / total, acc.shape, [0])
                plgpu.wait_smem_to_gmem(blocks - 1, wait_read_only=True)
                out_smem.at[wg, block][...] = out.astype(out_smem.dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(out_smem.at[wg, block], out_gmem.at[image, pl.ds(row0, ROWS), head])
        if variant.ping_pong:
            pl.when(wg == 0)(rendezvous)
        plgpu.wait_smem_to_gmem(0)


def call(qkv: jax.Array, q_bias: jax.Array, *, new_order: bool, variant: Variant = Variant(),
         interpret=False) -> jax.Array:
    """As jdiff.models.mosaic_attention.call, with this prototype's scheme."""
    if new_order:
        batch, tokens, _, heads, d = qkv.shape
    else:
        batch, tokens, heads, _, d = qkv.shape
    assert tokens % (variant.warpgroups * ROWS) == 0 and tokens % variant.key_block == 0
    assert not variant.ping_pong or variant.warpgroups == 2
    items = batch * heads
    shape = _Shape(tokens=tokens, heads=heads, head_channels=d, items=items,
                   ctas=min(items, sm_count(interpret)), qkv_axis=2 if new_order else 3)
    itemsize = qkv.dtype.itemsize

    def smem(*dims):
        swizzle = min(dims[-1] * itemsize, 128)
        return plgpu.SMEM(dims, qkv.dtype, transforms=(plgpu.TilingTransform((8, swizzle // itemsize)),
                                                       plgpu.SwizzleTransform(swizzle)))

    compiled = not interpret
    wgs, kb_size = variant.warpgroups, variant.key_block
    blocks = tokens // (wgs * ROWS)
    kernel = functools.partial(_kernel, shape=shape, compiled=compiled, variant=variant)

    def body(qkv_gmem, bias_gmem, out_gmem):
        pl.run_scoped(
            lambda *scratch: kernel(qkv_gmem, bias_gmem, out_gmem, *scratch),
            smem(STAGES, tokens, d), smem(STAGES, tokens, d), smem(STAGES, tokens, d),
            smem(wgs, blocks, ROWS, d),
            plgpu.SMEM((heads * d,), qkv.dtype),
            None if compiled else (smem(wgs, ROWS, d), smem(wgs, ROWS, kb_size), smem(wgs, d, kb_size)),
            plgpu.Barrier(num_barriers=STAGES), plgpu.Barrier(num_barriers=STAGES),
            plgpu.Barrier(num_barriers=STAGES), plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_arrivals=wgs, num_barriers=STAGES),
            plgpu.Barrier(num_arrivals=wgs),
            collective_axes="wg")

    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((batch, tokens, heads, d), qkv.dtype),
        grid=(shape.ctas,), grid_names=("cta",), kernel_name="mosaic_attention_online",
        num_threads=wgs + 1, thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True, unsafe_no_auto_barriers=True),
        interpret=interpreter(interpret),
    )(qkv, q_bias)
