"""Probe 3: the GroupNorm forward as a persistent Pallas Mosaic GPU kernel with a ring of shared-memory chunk
buffers, so that the loads of the next slab overlap the statistics and apply of the current one.

G CTAs (one per SM), one warpgroup each; CTA c takes the slabs t = c, c + G, ... (t = image · blocks + channel
block). A slab (N, cpp) is K chunks of `chunk_rows` rows; chunk m of the CTA's sequence lives in ring buffer
m mod R. After the apply of chunk m is stored (TMA), the load of chunk m + R − 1 is issued into the buffer of
chunk m − 1, once that buffer's store has been read out (wait for at most one pending store group). R ≥ K + 1
makes a slab's K chunks loaded (or in flight) before its statistics start.
"""
import inspect

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

WG = plgpu.Layout.WGMMA
COL = WG.reduce(0)
ROW = WG.reduce(1)
_LOAD_PARAMS = inspect.signature(plgpu.load).parameters


def _load(ref, idx, layout):
    """ref[idx] as an array of this layout (jax 0.10's load takes the index, 0.11's a ref indexed with .at)."""
    if _LOAD_PARAMS["idx"].default is inspect.Parameter.empty:
        return plgpu.load(ref, idx, layout=layout, optimized=False)
    return plgpu.load(ref.at[idx], layout=layout, optimized=False)


def _round_up(n, m):
    return -(-n // m) * m


def forward(x, a, b, *, groups=32, eps=1e-5, silu=True, cpp=64, chunk_rows=256, ring_bytes=192 * 1024,
            ctas=132, rows=64, approx=False, interpret=False):
    batch, n, channels = x.shape
    per_group = channels // groups
    assert cpp % per_group == 0 and channels % cpp == 0 and cpp % 8 == 0
    chunk_rows = min(chunk_rows, n)
    assert n % chunk_rows == 0 and chunk_rows % rows == 0
    k_chunks = n // chunk_rows
    ring = ring_bytes // (chunk_rows * cpp * x.dtype.itemsize)
    assert ring >= k_chunks + 1, (ring, k_chunks)
    tiles = chunk_rows // rows
    blocks = channels // cpp
    slabs = batch * blocks
    ctas = min(ctas, slabs)
    groups_pad = _round_up(cpp // per_group, 8)
    lanes_pad = _round_up(cpp, 64)

    def body(x_gmem, a_gmem, b_gmem, y_gmem, mean_gmem, rstd_gmem, buf, vec, mean_s, rstd_s, loaded):
        cta = lax.axis_index("cta")
        my_slabs = (slabs - cta + ctas - 1) // ctas
        my_chunks = my_slabs * k_chunks

        def where_is(m):  # chunk m of this CTA: (image, channel offset, first row)
            t = cta + ctas * (m // k_chunks)
            return t // blocks, (t % blocks) * cpp, (m % k_chunks) * chunk_rows

        def issue_load(m):
            @pl.when(m < my_chunks)
            def _():
                img, col0, row0 = where_is(m)
                slot = m % ring
                plgpu.copy_gmem_to_smem(x_gmem.at[img, pl.ds(row0, chunk_rows), pl.ds(col0, cpp)],
                                        buf.at[slot], loaded.at[slot])

        for m in range(ring - 1):
            issue_load(jnp.int32(m))

        lane = plgpu.broadcasted_iota(jnp.int32, (lanes_pad, groups_pad), 0, layout=WG)
        first = plgpu.broadcasted_iota(jnp.int32, (lanes_pad, groups_pad), 1, layout=WG) * per_group
        member = (lane >= first) & (lane < first + per_group) & (lane < cpp)

        def group_sum_on_lanes(v):
            plgpu.commit_smem()  # every thread is done with vec's last contents
            vec.at[pl.ds(0, cpp)][...] = v
            plgpu.commit_smem()
            w = _load(vec, (slice(None),), ROW)
            g = jnp.where(member, lax.broadcast_in_dim(w, (lanes_pad, groups_pad), [0]), 0.0).sum(axis=0)
            back = jnp.where(member, lax.broadcast_in_dim(g, (lanes_pad, groups_pad), [1]), 0.0).sum(axis=1)
            plgpu.commit_smem()
            vec[...] = back
            plgpu.commit_smem()
            return _load(vec, (pl.ds(0, cpp),), COL)

        def bcast(v):
            return lax.broadcast_in_dim(v, (rows, cpp), [1])

        @pl.loop(0, my_slabs)
        def _(s):
            m0 = s * k_chunks
            img, col0, _ = where_is(m0)
            cols = pl.ds(col0, cpp)

            def tile(m, i):
                return _load(buf.at[m % ring], (pl.ds(i * rows, rows), slice(None)), WG).astype(jnp.float32)

            plgpu.barrier_wait(loaded.at[m0 % ring])
            shift = tile(m0, 0).sum(axis=0) * (1.0 / rows)
            zeros = plgpu.layout_cast(jnp.zeros((rows, cpp), jnp.float32), WG)
            acc = (zeros, zeros)
            for k in range(k_chunks):
                if k:
                    plgpu.barrier_wait(loaded.at[(m0 + k) % ring])

                def step(i, acc, m=m0 + k):
                    d = tile(m, i) - bcast(shift)
                    return acc[0] + d, acc[1] + d * d
                acc = lax.fori_loop(0, tiles, step, acc)
            s1, s2 = acc[0].sum(axis=0), acc[1].sum(axis=0)
            mean_c = shift + s1 * (1.0 / n)
            m2_c = jnp.maximum(s2 - s1 * s1 * (1.0 / n), 0.0)
            mean = group_sum_on_lanes(mean_c) * (1.0 / per_group)
            m2 = group_sum_on_lanes(m2_c + n * jnp.square(mean_c - mean))
            rstd = lax.rsqrt(m2 * (1.0 / (n * per_group)) + eps)
            scale = rstd * _load(a_gmem.at[img], (cols,), COL)
            offset = _load(b_gmem.at[img], (cols,), COL) - mean * scale
            parity = s % 2
            mean_s.at[parity][...] = mean
            rstd_s.at[parity][...] = rstd
            for k in range(k_chunks):
                m = m0 + k
                slot = m % ring

                @pl.loop(0, tiles)
                def _(i):
                    z = tile(m, i) * bcast(scale) + bcast(offset)
                    if silu:
                        z = z / (1.0 + jnp.exp(-z))
                    buf.at[slot, pl.ds(i * rows, rows)][...] = z.astype(buf.dtype)
                plgpu.commit_smem()
                if k == 0:
                    plgpu.copy_smem_to_gmem(mean_s.at[parity], mean_gmem.at[img, cols], commit_group=False)
                    plgpu.copy_smem_to_gmem(rstd_s.at[parity], rstd_gmem.at[img, cols], commit_group=False)
                plgpu.copy_smem_to_gmem(buf.at[slot], y_gmem.at[img, pl.ds(k * chunk_rows, chunk_rows), cols])
                plgpu.wait_smem_to_gmem(1, wait_read_only=True)
                issue_load(m + ring - 1)

        plgpu.wait_smem_to_gmem(0)

    per_channel = jax.ShapeDtypeStruct((batch, channels), jnp.float32)
    call = plgpu.kernel(
        body,
        out_type=(jax.ShapeDtypeStruct(x.shape, x.dtype), per_channel, per_channel),
        grid=(ctas,),
        grid_names=("cta",),
        scratch_types=[plgpu.SMEM((ring, chunk_rows, cpp), x.dtype), plgpu.SMEM((lanes_pad,), jnp.float32),
                       plgpu.SMEM((2, cpp), jnp.float32), plgpu.SMEM((2, cpp), jnp.float32),
                       plgpu.Barrier(num_barriers=ring)],
        compiler_params=plgpu.CompilerParams(approx_math=approx),
        interpret=interpret,
    )
    return call(x, a.astype(jnp.float32), b.astype(jnp.float32))
