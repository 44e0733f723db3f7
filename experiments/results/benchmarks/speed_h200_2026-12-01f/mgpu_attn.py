"""Prototype v2: softmax((q + b_q)·kᵀ/√d)·v per image and head from one (B, L, heads, 3, d) q|k|v product, as a
persistent Pallas Mosaic GPU kernel (Hopper): two compute warpgroups, one TMA warpgroup, `stages` stages.

Options: bias 'kernel' (b_q added to q in registers, q then the wgmma's register operand) | 'writeback' (added
and written over q in shared memory, v1) | 'none' (q biased already); store 'tma' (through shared memory) |
'direct' (registers to global memory); auto_barriers (Pallas's barriers around shared-memory accesses);
pingpong (the two compute warpgroups alternate softmax and products through a schedule barrier)."""
import functools, math
import jax, jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

ROWS = 64  # q rows per wgmma block
WGMMA = plgpu.Layout.WGMMA


def _kernel(qkv_gmem, bias_gmem, out_gmem, q_s, k_s, v_s, o_s, stage_s, bias_s, q_bar, k_bar, v_bar, bias_bar,
            consumed, schedule, *, heads, tokens, d, items, ctas, qkv_axis, blocks_per_wg, stages, mode, layouts,
            bias, store, pingpong):
    cta = lax.axis_index("cta")
    wg = lax.axis_index("wg")
    interpreted = not layouts

    def load(ref, layout):
        return plgpu.load(ref, (), layout=layout, optimized=False) if layouts else ref[...]
    my_items = (items - cta + ctas - 1) // ctas

    def located(j):
        t = cta + ctas * j
        return t // heads, t % heads

    def source(b, h, which):
        index = [b, pl.ds(0, tokens), h]
        index.insert(qkv_axis, which)
        return qkv_gmem.at[tuple(index)]

    def rendezvous():
        plgpu.barrier_arrive(schedule)
        plgpu.barrier_wait(schedule)

    def operand(value, slot):
        """A register operand for wgmma; staged through shared memory in the interpreter, whose wgmma reads
        shared memory only."""
        if not interpreted:
            return value
        ref = stage_s[slot].at[wg]
        ref[...] = value
        plgpu.commit_smem()
        return ref

    @pl.when(wg == 2)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")
        if bias == "kernel":
            plgpu.copy_gmem_to_smem(bias_gmem, bias_s, bias_bar.at[0])

        @pl.loop(0, my_items)
        def _(j):
            stage = j % stages

            @pl.when(j >= stages)
            def _():
                plgpu.barrier_wait(consumed.at[stage])
            b, h = located(j)
            plgpu.copy_gmem_to_smem(source(b, h, 0), q_s.at[stage], q_bar.at[stage])
            plgpu.copy_gmem_to_smem(source(b, h, 1), k_s.at[stage], k_bar.at[stage])
            plgpu.copy_gmem_to_smem(source(b, h, 2), v_s.at[stage], v_bar.at[stage])

        @pl.loop(jnp.maximum(my_items - stages, 0), my_items)
        def _(j):  # every phase of the consumed barriers observed before they are released
            plgpu.barrier_wait(consumed.at[j % stages])

    @pl.when(wg < 2)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        c = math.log2(math.e) / math.sqrt(d)
        if bias == "kernel":
            plgpu.barrier_wait(bias_bar.at[0])
        if pingpong:
            pl.when(wg == 1)(rendezvous)

        @pl.loop(0, my_items)
        def _(j):
            stage = j % stages
            b, h = located(j)
            plgpu.barrier_wait(q_bar.at[stage])
            if bias == "writeback":
                b_q = load(bias_gmem.at[pl.ds(h * d, d)], WGMMA.reduce(0)).astype(jnp.float32)
                for blk in range(blocks_per_wg):
                    rows = q_s.at[stage, pl.ds((wg * blocks_per_wg + blk) * ROWS, ROWS)]
                    biased = load(rows, WGMMA).astype(jnp.float32) + lax.broadcast_in_dim(b_q, (ROWS, d), [1])
                    rows[...] = biased.astype(q_s.dtype)
                plgpu.commit_smem()
            elif bias == "kernel":
                b_q = load(bias_s.at[pl.ds(h * d, d)], WGMMA.reduce(0)).astype(jnp.float32)
            plgpu.barrier_wait(k_bar.at[stage])
            for blk in range(blocks_per_wg):
                r0 = (wg * blocks_per_wg + blk) * ROWS
                q_rows = q_s.at[stage, pl.ds(r0, ROWS)]
                if bias == "kernel":
                    q_rows = operand((load(q_rows, WGMMA).astype(jnp.float32) + lax.broadcast_in_dim(
                        b_q, (ROWS, d), [1])).astype(q_s.dtype), 0)

                def qk(acc_ref):
                    plgpu.wgmma(acc_ref, q_rows, k_s.at[stage].T)
                    if pingpong:
                        rendezvous()
                    return acc_ref[...]
                s = pl.run_scoped(qk, plgpu.ACC((ROWS, tokens), jnp.float32))
                m = s.max(axis=1) * c
                if mode == "no_exp":
                    p = s * c - lax.broadcast_in_dim(m, s.shape, [0])
                else:
                    p = jnp.exp2(s * c - lax.broadcast_in_dim(m, s.shape, [0]))
                l_sum = p.sum(axis=1)
                p16 = p.astype(q_s.dtype)
                if pingpong:
                    plgpu.barrier_arrive(schedule)
                if blk == 0:
                    plgpu.barrier_wait(v_bar.at[stage])
                if pingpong:
                    plgpu.barrier_wait(schedule)
                p_operand = operand(p16, 1)

                def pv(acc_ref):
                    plgpu.wgmma(acc_ref, p_operand, v_s.at[stage])
                    return acc_ref[...]
                acc = pl.run_scoped(pv, plgpu.ACC((ROWS, d), jnp.float32))
                if blk == blocks_per_wg - 1:
                    plgpu.barrier_arrive(consumed.at[stage])
                o = (acc * lax.broadcast_in_dim(1.0 / l_sum, acc.shape, [0])).astype(out_gmem.dtype)
                if store == "direct":
                    out_gmem.at[b, pl.ds(r0, ROWS), h][...] = o
                else:
                    plgpu.wait_smem_to_gmem(blocks_per_wg - 1, wait_read_only=True)
                    o_s.at[wg, blk][...] = o
                    plgpu.commit_smem()
                    plgpu.copy_smem_to_gmem(o_s.at[wg, blk], out_gmem.at[b, pl.ds(r0, ROWS), h])
        if pingpong:
            pl.when(wg == 0)(rendezvous)
        if store != "direct":
            plgpu.wait_smem_to_gmem(0)


def attention(qkv, q_bias, *, new_order=False, stages=2, interpret=None, sm_count=None, mode="full",
              profile_dir=None, bias="kernel", store="tma", auto_barriers=False, pingpong=False):
    """qkv (B, L, heads, 3, d) legacy or (B, L, 3, heads, d) new order, q_bias (heads·d,) → (B, L, heads, d)."""
    if new_order:
        batch, tokens, _, heads, d = qkv.shape
        qkv_axis = 2
    else:
        batch, tokens, heads, _, d = qkv.shape
        qkv_axis = 3
    assert tokens % (2 * ROWS) == 0
    blocks_per_wg = tokens // (2 * ROWS)
    items = batch * heads
    sm_count = sm_count or jax.devices()[0].core_count
    ctas = min(items, sm_count)
    item = qkv.dtype.itemsize

    def smem(*shape, minor=None):
        swizzle = (minor or shape[-1]) * item
        return plgpu.SMEM(shape, qkv.dtype, transforms=(plgpu.TilingTransform((8, swizzle // item)),
                                                        plgpu.SwizzleTransform(swizzle)))

    interpreted = bool(interpret)
    kernel = functools.partial(_kernel, heads=heads, tokens=tokens, d=d, items=items, ctas=ctas,
                               qkv_axis=qkv_axis, blocks_per_wg=blocks_per_wg, stages=stages,
                               mode=mode, layouts=not interpreted, bias=bias, store=store, pingpong=pingpong)

    def body(qkv_gmem, bias_gmem, out_gmem):
        pl.run_scoped(
            lambda *scratch: kernel(qkv_gmem, bias_gmem, out_gmem, *scratch),
            smem(stages, tokens, d), smem(stages, tokens, d), smem(stages, tokens, d),
            smem(2, blocks_per_wg, ROWS, d) if store == "tma" else None,
            (smem(2, ROWS, d), smem(2, ROWS, tokens, minor=64)) if interpreted else None,
            plgpu.SMEM((heads * d,), qkv.dtype) if bias == "kernel" else None,
            plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
            plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=1),
            plgpu.Barrier(num_arrivals=2, num_barriers=stages),
            plgpu.Barrier(num_arrivals=2),
            collective_axes="wg")

    params = dict(approx_math=True, unsafe_no_auto_barriers=not auto_barriers)
    if profile_dir:
        params.update(profile_space=2048, profile_dir=profile_dir)
    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((batch, tokens, heads, d), qkv.dtype),
        grid=(ctas,), grid_names=("cta",), num_threads=3, thread_name="wg",
        compiler_params=plgpu.CompilerParams(**params),
        interpret=interpret,
    )(qkv, q_bias)


def reference(qkv, q_bias, new_order=False):
    axis = 2 if new_order else 3
    q, k, v = (jnp.take(qkv, i, axis=axis) for i in range(3))
    q = q + q_bias.reshape(q.shape[2:])
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
