"""Probe: GroupNorm + scale-shift + SiLU forward as a Pallas Mosaic GPU kernel that reads each slab once.

One CTA (one warpgroup) per (channel block, image): TMA copies the slab x[b, :, cols] (N, cpp) into shared
memory in `chunks` pieces, each with its own barrier, so that the shifted sums of chunk k start while the
later chunks are still arriving; the group statistics are combined with a membership mask; the apply
overwrites the slab in shared memory chunk by chunk, and each chunk leaves by TMA as soon as it is written.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

WG = plgpu.Layout.WGMMA
COL = WG.reduce(0)   # one value per column of a (rows, cpp) tile
ROW = WG.reduce(1)   # one value per row


def _round_up(n, m):
    return -(-n // m) * m


def forward(x, a, b, *, groups=32, eps=1e-5, silu=True, cpp=64, rows=64, chunks=4, interpret=False,
            optimized=False, approx=False, copy_only=False):
    batch, n, channels = x.shape
    per_group = channels // groups
    assert cpp % per_group == 0 and channels % cpp == 0 and cpp % 8 == 0
    assert n % (chunks * rows) == 0
    chunk_rows = n // chunks
    tiles_per_chunk = chunk_rows // rows
    groups_here = cpp // per_group
    groups_pad = _round_up(groups_here, 8)
    lanes_pad = _round_up(cpp, 64)

    def body(x_gmem, a_gmem, b_gmem, y_gmem, mean_gmem, rstd_gmem, slab, vec, mean_s, rstd_s, barriers):
        cb = lax.axis_index("c")
        img = lax.axis_index("b")
        cols = pl.ds(cb * cpp, cpp)
        for k in range(chunks):
            plgpu.copy_gmem_to_smem(x_gmem.at[img, pl.ds(k * chunk_rows, chunk_rows), cols],
                                    slab.at[pl.ds(k * chunk_rows, chunk_rows)], barriers.at[k])

        def tile(i):
            return plgpu.load(slab.at[pl.ds(i * rows, rows)], layout=WG, optimized=optimized).astype(jnp.float32)

        def bcast(v):  # (cpp,) COL -> (rows, cpp)
            return lax.broadcast_in_dim(v, (rows, cpp), [1])

        if copy_only:
            for k in range(chunks):
                plgpu.barrier_wait(barriers.at[k])
                plgpu.copy_smem_to_gmem(slab.at[pl.ds(k * chunk_rows, chunk_rows)],
                                        y_gmem.at[img, pl.ds(k * chunk_rows, chunk_rows), cols])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            return
        plgpu.barrier_wait(barriers.at[0])
        shift = tile(0).sum(axis=0) * (1.0 / rows)
        zeros = plgpu.layout_cast(jnp.zeros((rows, cpp), jnp.float32), WG)
        acc = (zeros, zeros)
        for k in range(chunks):
            if k:
                plgpu.barrier_wait(barriers.at[k])

            def step(i, acc):
                d = tile(i) - bcast(shift)
                return acc[0] + d, acc[1] + d * d
            acc = lax.fori_loop(k * tiles_per_chunk, (k + 1) * tiles_per_chunk, step, acc)
        s1, s2 = acc[0].sum(axis=0), acc[1].sum(axis=0)
        mean_c = shift + s1 * (1.0 / n)
        m2_c = jnp.maximum(s2 - s1 * s1 * (1.0 / n), 0.0)

        lane = plgpu.broadcasted_iota(jnp.int32, (lanes_pad, groups_pad), 0, layout=WG)
        first = plgpu.broadcasted_iota(jnp.int32, (lanes_pad, groups_pad), 1, layout=WG) * per_group
        member = (lane >= first) & (lane < first + per_group) & (lane < cpp)

        def group_sum_on_lanes(v):
            vec.at[pl.ds(0, cpp)][...] = v
            plgpu.commit_smem()
            w = plgpu.load(vec, layout=ROW, optimized=False)
            g = jnp.where(member, lax.broadcast_in_dim(w, (lanes_pad, groups_pad), [0]), 0.0).sum(axis=0)
            back = jnp.where(member, lax.broadcast_in_dim(g, (lanes_pad, groups_pad), [1]), 0.0).sum(axis=1)
            plgpu.commit_smem()  # every thread has read vec
            vec[...] = back
            plgpu.commit_smem()
            return plgpu.load(vec.at[pl.ds(0, cpp)], layout=COL, optimized=False)

        mean = group_sum_on_lanes(mean_c) * (1.0 / per_group)
        m2 = group_sum_on_lanes(m2_c + n * jnp.square(mean_c - mean))
        rstd = lax.rsqrt(m2 * (1.0 / (n * per_group)) + eps)
        scale = rstd * plgpu.load(a_gmem.at[img, cols], layout=COL, optimized=False)
        offset = plgpu.load(b_gmem.at[img, cols], layout=COL, optimized=False) - mean * scale
        mean_s[...] = mean
        rstd_s[...] = rstd
        for k in range(chunks):
            @pl.loop(k * tiles_per_chunk, (k + 1) * tiles_per_chunk)
            def _(i):
                z = tile(i) * bcast(scale) + bcast(offset)
                if silu:
                    z = z / (1.0 + jnp.exp(-z))
                slab.at[pl.ds(i * rows, rows)][...] = z.astype(slab.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(slab.at[pl.ds(k * chunk_rows, chunk_rows)],
                                    y_gmem.at[img, pl.ds(k * chunk_rows, chunk_rows), cols])
        plgpu.copy_smem_to_gmem(mean_s, mean_gmem.at[img, cols])
        plgpu.copy_smem_to_gmem(rstd_s, rstd_gmem.at[img, cols])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    per_channel = jax.ShapeDtypeStruct((batch, channels), jnp.float32)
    call = plgpu.kernel(
        body,
        out_type=(jax.ShapeDtypeStruct(x.shape, x.dtype), per_channel, per_channel),
        grid=(channels // cpp, batch),
        grid_names=("c", "b"),
        scratch_types=[plgpu.SMEM((n, cpp), x.dtype), plgpu.SMEM((lanes_pad,), jnp.float32),
                       plgpu.SMEM((cpp,), jnp.float32), plgpu.SMEM((cpp,), jnp.float32),
                       plgpu.Barrier(num_barriers=chunks)],
        compiler_params=plgpu.CompilerParams(approx_math=approx),
        interpret=interpret,
    )
    return call(x, a.astype(jnp.float32), b.astype(jnp.float32))


def reference(x, a, b, groups=32, eps=1e-5, silu=True):
    batch, n, channels = x.shape
    xf = x.astype(jnp.float32).reshape(batch, n, groups, channels // groups)
    mean = xf.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(xf - mean).mean(axis=(1, 3), keepdims=True)
    z = ((xf - mean) * lax.rsqrt(var + eps)).reshape(batch, n, channels) * a[:, None] + b[:, None]
    return (jax.nn.silu(z) if silu else z).astype(x.dtype)
