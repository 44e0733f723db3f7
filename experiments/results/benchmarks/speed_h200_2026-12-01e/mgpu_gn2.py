"""Probe 2: as mgpu_gn, with W warpgroups per CTA, each owning N/W of the slab's rows (its own TMA load,
statistics with its own shift, apply and TMA store); the warpgroups' per-channel means and M2 are combined
exactly (Chan et al.) after one barrier."""
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

WG = plgpu.Layout.WGMMA
COL = WG.reduce(0)
ROW = WG.reduce(1)


def _round_up(n, m):
    return -(-n // m) * m


def forward(x, a, b, *, groups=32, eps=1e-5, silu=True, cpp=64, rows=64, wgs=2, approx=False, interpret=False):
    batch, n, channels = x.shape
    per_group = channels // groups
    assert cpp % per_group == 0 and channels % cpp == 0 and cpp % 8 == 0
    own = n // wgs
    assert own % rows == 0
    tiles = own // rows
    groups_pad = _round_up(cpp // per_group, 8)
    lanes_pad = _round_up(cpp, 64)

    def body(x_gmem, a_gmem, b_gmem, y_gmem, mean_gmem, rstd_gmem, slab, vec, part, mean_s, rstd_s,
             loaded, partials_done):
        cb = lax.axis_index("c")
        img = lax.axis_index("b")
        wg = lax.axis_index("wg")
        cols = pl.ds(cb * cpp, cpp)
        mine = pl.ds(wg * own, own)
        plgpu.copy_gmem_to_smem(x_gmem.at[img, mine, cols], slab.at[mine], loaded.at[wg])

        def tile(i):
            return plgpu.load(slab.at[pl.ds(wg * own + i * rows, rows)], layout=WG,
                              optimized=False).astype(jnp.float32)

        def bcast(v):
            return lax.broadcast_in_dim(v, (rows, cpp), [1])

        plgpu.barrier_wait(loaded.at[wg])
        shift = tile(0).sum(axis=0) * (1.0 / rows)
        zeros = plgpu.layout_cast(jnp.zeros((rows, cpp), jnp.float32), WG)

        def step(i, acc):
            d = tile(i) - bcast(shift)
            return acc[0] + d, acc[1] + d * d
        acc = lax.fori_loop(0, tiles, step, (zeros, zeros))
        s1, s2 = acc[0].sum(axis=0), acc[1].sum(axis=0)
        part.at[wg, 0][...] = shift + s1 * (1.0 / own)
        part.at[wg, 1][...] = jnp.maximum(s2 - s1 * s1 * (1.0 / own), 0.0)
        plgpu.commit_smem()
        plgpu.barrier_arrive(partials_done)
        plgpu.barrier_wait(partials_done)
        means = [plgpu.load(part.at[w, 0], layout=COL, optimized=False) for w in range(wgs)]
        mean_c = sum(means[1:], means[0]) * (1.0 / wgs)
        m2_c = sum(plgpu.load(part.at[w, 1], layout=COL, optimized=False) + own * jnp.square(means[w] - mean_c)
                   for w in range(wgs))

        lane = plgpu.broadcasted_iota(jnp.int32, (lanes_pad, groups_pad), 0, layout=WG)
        first = plgpu.broadcasted_iota(jnp.int32, (lanes_pad, groups_pad), 1, layout=WG) * per_group
        member = (lane >= first) & (lane < first + per_group) & (lane < cpp)
        my_vec = vec.at[wg]

        def group_sum_on_lanes(v):
            my_vec.at[pl.ds(0, cpp)][...] = v
            plgpu.commit_smem()
            w = plgpu.load(my_vec, layout=ROW, optimized=False)
            g = jnp.where(member, lax.broadcast_in_dim(w, (lanes_pad, groups_pad), [0]), 0.0).sum(axis=0)
            back = jnp.where(member, lax.broadcast_in_dim(g, (lanes_pad, groups_pad), [1]), 0.0).sum(axis=1)
            plgpu.commit_smem()
            my_vec[...] = back
            plgpu.commit_smem()
            return plgpu.load(my_vec.at[pl.ds(0, cpp)], layout=COL, optimized=False)

        mean = group_sum_on_lanes(mean_c) * (1.0 / per_group)
        m2 = group_sum_on_lanes(m2_c + n * jnp.square(mean_c - mean))
        rstd = lax.rsqrt(m2 * (1.0 / (n * per_group)) + eps)
        scale = rstd * plgpu.load(a_gmem.at[img, cols], layout=COL, optimized=False)
        offset = plgpu.load(b_gmem.at[img, cols], layout=COL, optimized=False) - mean * scale

        @pl.loop(0, tiles)
        def _(i):
            z = tile(i) * bcast(scale) + bcast(offset)
            if silu:
                z = z / (1.0 + jnp.exp(-z))
            slab.at[pl.ds(wg * own + i * rows, rows)][...] = z.astype(slab.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(slab.at[mine], y_gmem.at[img, mine, cols])

        @pl.when(wg == 0)
        def _():
            mean_s[...] = mean
            rstd_s[...] = rstd
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(mean_s, mean_gmem.at[img, cols])
            plgpu.copy_smem_to_gmem(rstd_s, rstd_gmem.at[img, cols])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    per_channel = jax.ShapeDtypeStruct((batch, channels), jnp.float32)
    call = plgpu.kernel(
        body,
        out_type=(jax.ShapeDtypeStruct(x.shape, x.dtype), per_channel, per_channel),
        grid=(channels // cpp, batch),
        grid_names=("c", "b"),
        num_threads=wgs,
        thread_name="wg",
        scratch_types=[plgpu.SMEM((n, cpp), x.dtype), plgpu.SMEM((wgs, lanes_pad), jnp.float32),
                       plgpu.SMEM((wgs, 2, cpp), jnp.float32),
                       plgpu.SMEM((cpp,), jnp.float32), plgpu.SMEM((cpp,), jnp.float32),
                       plgpu.Barrier(num_barriers=wgs), plgpu.Barrier(num_arrivals=wgs)],
        compiler_params=plgpu.CompilerParams(approx_math=approx),
        interpret=interpret,
    )
    return call(x, a.astype(jnp.float32), b.astype(jnp.float32))
