"""The forward of :func:`jdiff.models.group_norm.normalise_affine` as a persistent Pallas Mosaic GPU kernel
for Hopper GPUs, which reads each activation from DRAM once.

It computes what :func:`jdiff.models.pallas_group_norm.forward` computes (the equations are in
group_norm.py's docstring): y = [SiLU](x̂·a + b) for x (B, N, C), x̂ standardised over the N positions and
C/G channels of each group of each image, a and b float32 (B, C) or (C,) for all images, optionally of
x + c for a per-channel shift c (C,); y in x's dtype, and each channel's group mean (less c) and
(σ² + ε)^(−1/2) as (B, C) float32 for the backward kernel. The statistics are one-pass shifted sums, per
channel Σ(x − K) and Σ(x − K)² with K the channel's mean over the slab's first 64 positions (so that the
sums do not cancel when the mean is large against the spread), combined over a group's channels exactly
(Chan et al.: M2_g = Σ_c M2_c + N·Σ_c (μ_c − μ_g)²).

Why: the Triton kernel reads every slab (all N positions of a block of channels of one image) twice, for
the statistics and for the apply, counting on L2 for the second read; at the UNet's 32×32 resolution it
takes 1.5× the time of one XLA pass over x. Here the TMA engine copies the slab into shared memory, where
both passes read it:

- ``ctas_per_sm`` CTAs per SM (one warpgroup each) stay resident, and CTA i takes the slabs
  t = i, i + G, i + 2G, … of the B·C/channels_per_cta slabs (t = image · blocks + channel block; G CTAs);
- a slab is K chunks of ``chunk_rows`` positions, and a CTA's chunks go round a ring of R ≥ K + 1
  shared-memory buffers: its chunk m is loaded into buffer m mod R; once the apply of chunk m has been
  written over it and handed to the TMA engine for storing, the load of chunk m + R − 1 goes into the
  buffer of chunk m − 1, as soon as that buffer's store has been read out. The next slab's loads are in
  flight while the current slab is normalised, and DRAM sees one read and one write of every element.

On an H200 (docs/benchmarks.md, thirteenth session) it took 12–17% less time than the Triton kernel at
N = 1024 (C = 128, 256, 384) on inputs read from DRAM, 21–30% less on calls back to back on one input (as
in the UNet, where a norm's input was just written), within 12% of one XLA pass over x; and more time at
N ≤ 256, where the Triton kernel's slabs are small: :func:`preferred` says where jdiff uses it.

It runs on NVIDIA GPUs of compute capability 9.x (TMA, sm_90a code) with jax ≥ 0.11 (the Mosaic GPU API it
is written against), and in Mosaic GPU's interpreter (``interpret=True``, jax ≥ 0.10, any backend).
Dropout is not implemented: the Triton kernel takes those norms.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jdiff.models.group_norm import (EPS, NUM_GROUPS, Parts, channel_parts, check_affine, concatenation_shape,
                                     forward_sharding_rule, shift_operands, whole_blocks_reason)
from jdiff.models.mosaic_gpu import (Registers, check_runs, interpreter, runs_here, sm_count,
                                     unpartitioned_if_interpreted)
from jdiff.models.per_image import partitioned_per_image

Dtype = Any

ROWS = 64  # positions per register tile: the WGMMA register layout's tile height
CHUNK_ROWS = 256  # positions per ring buffer (one TMA copy)
RING_BYTES_PER_SM = 192 * 1024  # of an SM's 227 KiB of shared memory, for the rings of its CTAs
MIN_CHANNELS = 32  # channels per CTA: slab rows of at least 64 bytes for the TMA copies
MIN_POSITIONS = 1024  # N from which it is preferred to the Triton kernel (measured faster only there)
_TILE = plgpu.Layout.WGMMA  # (64·k, 8·l) register tiles, whose column sums are one value per column
_PER_COLUMN = _TILE.reduce(0)
_PER_ROW = _TILE.reduce(1)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the kernel covers x (B, N, C): slabs of ``channels_per_cta`` channels of one image, ``ctas_per_sm``
    resident CTAs per SM, each with a ring of ``ring`` buffers of ``chunk_rows`` positions."""
    channels_per_cta: int
    chunk_rows: int
    ring: int
    ctas_per_sm: int


def plan(n: int, channels: int, itemsize: int, groups: int = NUM_GROUPS, chunk_rows: int = CHUNK_ROWS,
         ring_bytes_per_sm: int = RING_BYTES_PER_SM) -> Plan | None:
    """The fewest whole groups with at least MIN_CHANNELS channels and a multiple of 8 (the register
    tile's width) per slab; two CTAs per SM if each one's ring can hold a slab and one chunk more, else one;
    None when no whole number of groups qualifies or even one CTA's ring is too small. (Timed on an H200 at
    the UNet's 32×32 shapes, twenty-third session: three CTAs per SM on 128-position chunks, or at C = 384
    two CTAs with 216 KiB of rings, were slower than these plans: a deeper ring counted more than more
    CTAs.)"""
    per_group = channels // groups
    chunk_rows = min(chunk_rows, n)
    for k in range(1, groups + 1):
        cpp = k * per_group
        if groups % k or cpp < MIN_CHANNELS or cpp % 8:
            continue
        for ctas_per_sm in (2, 1):
            ring = ring_bytes_per_sm // ctas_per_sm // (chunk_rows * cpp * itemsize)
            if ring >= n // chunk_rows + 1:
                return Plan(channels_per_cta=cpp, chunk_rows=chunk_rows, ring=ring, ctas_per_sm=ctas_per_sm)
        return None
    return None


def unsupported_reason(x_shape: tuple[int, ...], dtype: Dtype, out_dtype: Dtype, *, groups: int = NUM_GROUPS,
                       dropout: float = 0.0, chunk_rows: int = CHUNK_ROWS,
                       ring_bytes_per_sm: int = RING_BYTES_PER_SM,
                       parts: tuple[int, ...] | None = None) -> str | None:
    """Why the kernel cannot take x of this shape and dtype, or None if it can; with ``parts``, x given as
    parts of these channel counts (each must be a whole number of slabs' channels)."""
    if len(x_shape) != 3:
        return f"x must be (B, N, C), got shape {x_shape}"
    _, n, channels = x_shape
    if dropout:
        return "dropout is not implemented in the Mosaic GPU kernel (the Triton kernel has it)"
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.dtype(dtype).itemsize not in (2, 4):
        return f"x must be a 16- or 32-bit float, got {jnp.dtype(dtype)}"
    if jnp.dtype(out_dtype) != jnp.dtype(dtype):
        return (f"y is written over x's slab in shared memory, so it must have x's dtype {jnp.dtype(dtype)}, "
                f"not {jnp.dtype(out_dtype)}")
    if channels % groups:
        return f"C = {channels} is not divisible by {groups} groups"
    rows = min(chunk_rows, n)
    if rows % ROWS or n % rows:
        return (f"N = {n} positions must be a multiple of {ROWS} and, above {chunk_rows}, of the chunk's "
                f"{chunk_rows} positions")
    plan_ = plan(n, channels, jnp.dtype(dtype).itemsize, groups, chunk_rows, ring_bytes_per_sm)
    if plan_ is None:
        return (f"no block of whole groups of C = {channels} has a multiple of 8 and at least {MIN_CHANNELS} "
                f"channels whose slab of N = {n} positions fits in shared memory")
    if parts is not None:
        return whole_blocks_reason(parts, channels, plan_.channels_per_cta,
                                   f"slabs' {plan_.channels_per_cta} channels")
    return None


def preferred(x_shape: tuple[int, ...], dtype: Dtype, out_dtype: Dtype, *, groups: int = NUM_GROUPS,
              dropout: float = 0.0, parts: tuple[int, ...] | None = None) -> bool:
    """Whether jdiff's 'pallas' norms take this kernel for the forward: where it runs (:func:`runs_here`),
    takes the input (:func:`unsupported_reason`) and was measured faster than the Triton kernel
    (N ≥ MIN_POSITIONS)."""
    return (len(x_shape) == 3 and x_shape[1] >= MIN_POSITIONS and runs_here()
            and unsupported_reason(x_shape, dtype, out_dtype, groups=groups, dropout=dropout,
                                   parts=parts) is None)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The kernel's static settings (hashable: the static argument of the partitioned call)."""
    groups: int
    eps: float
    silu: bool
    chunk_rows: int
    ring_bytes_per_sm: int
    interpret: Any  # False, True, or Mosaic GPU's InterpretGPUParams
    parts: tuple[int, ...]  # the channel counts of x's parts ((C,) for one array)


def _group_norm_forward_tma(*refs, parts: tuple[int, ...], n: int, per_group: int, plan_: Plan, blocks: int,
                            slabs: int, ctas: int, eps: float, silu: bool, shifted: bool, layouts: bool):
    """One CTA's work (the module docstring has the scheme): its slabs in turn, each chunk's load issued
    R − 1 chunks ahead, from the part of x's channel concatenation that holds the slab's channels."""
    x_gmems, (a_gmem, b_gmem, *refs) = refs[:len(parts)], refs[len(parts):]
    shift_gmem, refs = (refs[0], refs[1:]) if shifted else (None, refs)
    y_gmem, mean_gmem, rstd_gmem, ring_buf, lanes, mean_out, rstd_out, loaded = refs
    cpp, chunk_rows, ring = plan_.channels_per_cta, plan_.chunk_rows, plan_.ring
    k_chunks, tiles = n // chunk_rows, chunk_rows // ROWS
    lanes_pad, groups_pad = lanes.shape[0], _round_up(cpp // per_group, 8)
    cta = lax.axis_index("cta")
    my_slabs = (slabs - cta + ctas - 1) // ctas
    my_chunks = my_slabs * k_chunks

    def located(m):  # this CTA's chunk m: (image, first channel, first position)
        t = cta + ctas * (m // k_chunks)
        return t // blocks, (t % blocks) * cpp, (m % k_chunks) * chunk_rows

    def issue_load(m):
        @pl.when(m < my_chunks)
        def _():
            image, col0, row0 = located(m)
            first = 0
            for x_gmem, channels in zip(x_gmems, parts):
                def copy(x_gmem=x_gmem, first=first):
                    source = x_gmem.at[image, pl.ds(row0, chunk_rows), pl.ds(col0 - first, cpp)]
                    plgpu.copy_gmem_to_smem(source, ring_buf.at[m % ring], loaded.at[m % ring])
                if len(parts) == 1:
                    copy()
                else:  # each part is a whole number of slabs: one copy runs
                    pl.when((col0 >= first) & (col0 < first + channels))(copy)
                first += channels

    for m in range(ring - 1):
        issue_load(jnp.int32(m))

    # Channels → groups and back with a (lanes, groups) membership mask summed over one axis: the register
    # layouts have no reshape that would put a group's channels on one axis.
    regs = Registers(layouts)
    lane = regs.iota((lanes_pad, groups_pad), 0)
    first = regs.iota((lanes_pad, groups_pad), 1) * per_group
    member = (lane >= first) & (lane < first + per_group) & (lane < cpp)

    def group_sum_on_lanes(per_channel):
        """Each channel's group's sum of ``per_channel`` (cpp,), through shared memory, where it turns from
        one value per column of a tile into one per row of the membership mask and back."""
        plgpu.commit_smem()  # every thread has read the last contents of ``lanes``
        lanes.at[pl.ds(0, cpp)][...] = per_channel
        plgpu.commit_smem()
        column = regs.load(lanes, _PER_ROW)
        totals = jnp.where(member, lax.broadcast_in_dim(column, member.shape, [0]), 0.0).sum(axis=0)
        back = jnp.where(member, lax.broadcast_in_dim(totals, member.shape, [1]), 0.0).sum(axis=1)
        plgpu.commit_smem()
        lanes[...] = back
        plgpu.commit_smem()
        return regs.load(lanes.at[pl.ds(0, cpp)], _PER_COLUMN)

    def over_rows(per_channel):
        return lax.broadcast_in_dim(per_channel, (ROWS, cpp), [1])

    def channels(ref, image, cols):  # a (B, C) operand's row of this image, or a (C,) one
        at = ref.at[cols] if len(ref.shape) == 1 else ref.at[image, cols]
        return regs.load(at, _PER_COLUMN)

    @pl.loop(0, my_slabs)
    def _(s):
        m0 = s * k_chunks
        image, col0, _ = located(m0)
        cols = pl.ds(col0, cpp)

        def tile(m, i):
            return regs.load(ring_buf.at[m % ring, pl.ds(i * ROWS, ROWS)], _TILE).astype(jnp.float32)

        plgpu.barrier_wait(loaded.at[m0 % ring])
        shift = tile(m0, 0).sum(axis=0) * (1.0 / ROWS)
        zeros = regs.zeros((ROWS, cpp))
        sums = (zeros, zeros)
        for k in range(k_chunks):
            if k:
                plgpu.barrier_wait(loaded.at[(m0 + k) % ring])

            def add_tile(i, sums, m=m0 + k):
                d = tile(m, i) - over_rows(shift)
                return sums[0] + d, sums[1] + d * d
            sums = lax.fori_loop(0, tiles, add_tile, sums)
        s1, s2 = sums[0].sum(axis=0), sums[1].sum(axis=0)
        mean_c = shift + s1 * (1.0 / n)
        m2_c = jnp.maximum(s2 - s1 * s1 * (1.0 / n), 0.0)
        if shifted:  # the statistics of x + c: each channel's mean moves by c, its M2 does not
            c = channels(shift_gmem, image, cols)
            mean_c = mean_c + c
        mean = group_sum_on_lanes(mean_c) * (1.0 / per_group)
        m2 = group_sum_on_lanes(m2_c + n * jnp.square(mean_c - mean))
        rstd = lax.rsqrt(m2 * (1.0 / (n * per_group)) + eps)
        if shifted:  # x + c − μ = x − (μ − c): the apply and the backward read x as it is
            mean = mean - c
        scale = rstd * channels(a_gmem, image, cols)
        offset = channels(b_gmem, image, cols) - mean * scale
        # Two slots, so that this slab's statistics never overwrite the last slab's before their store has
        # read them (that store may still be pending: see the wait below).
        parity = s % 2
        mean_out.at[parity][...] = mean
        rstd_out.at[parity][...] = rstd
        for k in range(k_chunks):
            m = m0 + k

            @pl.loop(0, tiles)
            def _(i):
                z = tile(m, i) * over_rows(scale) + over_rows(offset)
                if silu:
                    z = z / (1.0 + jnp.exp(-z))
                ring_buf.at[m % ring, pl.ds(i * ROWS, ROWS)][...] = z.astype(ring_buf.dtype)
            plgpu.commit_smem()
            if k == 0:  # in the same store group as the slab's first chunk
                plgpu.copy_smem_to_gmem(mean_out.at[parity], mean_gmem.at[image, cols], commit_group=False)
                plgpu.copy_smem_to_gmem(rstd_out.at[parity], rstd_gmem.at[image, cols], commit_group=False)
            plgpu.copy_smem_to_gmem(ring_buf.at[m % ring],
                                    y_gmem.at[image, pl.ds(k * chunk_rows, chunk_rows), cols])
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # chunk m − 1's buffer has been read out
            issue_load(m + ring - 1)

    plgpu.wait_smem_to_gmem(0)


def _call(*operands_and_settings):
    """(x's parts…, a, b[, c], settings) → the kernel's (y, mean, rstd) on this device's images."""
    *operands, settings = operands_and_settings
    x = operands[0]
    batch, n, _ = x.shape
    channels = sum(settings.parts)
    plan_ = plan(n, channels, x.dtype.itemsize, settings.groups, settings.chunk_rows,
                 settings.ring_bytes_per_sm)
    blocks = channels // plan_.channels_per_cta
    slabs = batch * blocks
    ctas = min(slabs, sm_count(settings.interpret) * plan_.ctas_per_sm)
    per_channel = jax.ShapeDtypeStruct((batch, channels), jnp.float32)
    lanes_pad = _round_up(plan_.channels_per_cta, 64)
    kernel = functools.partial(
        _group_norm_forward_tma, n=n, per_group=channels // settings.groups, plan_=plan_, blocks=blocks,
        slabs=slabs, ctas=ctas, eps=settings.eps, silu=settings.silu,
        shifted=len(operands) - len(settings.parts) == 3, layouts=not settings.interpret,
        parts=settings.parts)
    return plgpu.kernel(
        kernel,
        out_type=(jax.ShapeDtypeStruct((batch, n, channels), x.dtype), per_channel, per_channel),
        grid=(ctas,),
        grid_names=("cta",),
        kernel_name="group_norm_forward_tma",  # in profiles (the body is a partial, which has no name)
        scratch_types=[plgpu.SMEM((plan_.ring, plan_.chunk_rows, plan_.channels_per_cta), x.dtype),
                       plgpu.SMEM((lanes_pad,), jnp.float32),
                       plgpu.SMEM((2, plan_.channels_per_cta), jnp.float32),
                       plgpu.SMEM((2, plan_.channels_per_cta), jnp.float32),
                       plgpu.Barrier(num_barriers=plan_.ring)],
        # fast exp and reciprocal for the SiLU; y is rounded to x's dtype anyway
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpreter(settings.interpret),
    )(*operands)


@functools.cache
def _per_image(shared: bool, shifted: bool, parts: int):
    return partitioned_per_image(_call, forward_sharding_rule(shared, shifted, parts=parts))


def forward(x: jax.Array | Parts, a: jax.Array, b: jax.Array, *, groups: int = NUM_GROUPS, eps: float = EPS,
            silu: bool = False, out_dtype: Dtype | None = None, shift: jax.Array | None = None,
            interpret: Any = False, chunk_rows: int = CHUNK_ROWS,
            ring_bytes_per_sm: int = RING_BYTES_PER_SM) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, mean, rstd) as :func:`jdiff.models.pallas_group_norm.forward` gives them for x (B, N, C), a and b
    both (B, C) or both (C,), and an optional shift c (C,) (mean is then the group mean less c), without
    dropout and with y in x's dtype (``out_dtype``, if given, must be it), in one Mosaic GPU kernel. x may be
    a tuple of parts standing for their channel concatenation, each a whole number of slabs' channels: each
    slab is copied from the part that holds it.

    ``chunk_rows`` (positions per ring buffer) and ``ring_bytes_per_sm`` (shared memory for the rings of one
    SM's CTAs) are for tests, which shrink them to exercise the ring on small inputs. ``interpret`` (True, or
    :func:`jdiff.models.mosaic_gpu.interpret_params`, e.g. with the race detector) runs the kernel in Mosaic
    GPU's interpreter (any backend, jax ≥ 0.10, slow; without register layouts, see
    :class:`jdiff.models.mosaic_gpu.Registers`). Under ``jax.jit`` over a mesh with x split along its batch
    axis, each device computes its own images. Raises ValueError where the kernel does not run
    (:func:`runs_here`, unless interpreted) or does not take the input (:func:`unsupported_reason`)."""
    check_runs("GroupNorm", interpret, interpreted_on_jax_010=True,
               instead="jdiff.models.pallas_group_norm.forward(kernel='triton')")
    parts = channel_parts(x)
    whole = concatenation_shape("mosaic_group_norm.forward", parts)
    part_channels = tuple(p.shape[-1] for p in parts)
    out_dtype = whole.dtype if out_dtype is None else out_dtype
    reason = unsupported_reason(whole.shape, whole.dtype, out_dtype, groups=groups, chunk_rows=chunk_rows,
                                ring_bytes_per_sm=ring_bytes_per_sm,
                                parts=part_channels if len(parts) > 1 else None)
    if reason:
        raise ValueError(f"mosaic_group_norm.forward: {reason}")
    check_affine("mosaic_group_norm.forward", a, b, whole.shape[0], whole.shape[-1])
    shifts = shift_operands("mosaic_group_norm.forward", shift, whole.shape[-1])
    settings = _Settings(groups=groups, eps=float(eps), silu=silu, chunk_rows=chunk_rows,
                         ring_bytes_per_sm=ring_bytes_per_sm, interpret=interpret, parts=part_channels)
    call = unpartitioned_if_interpreted(_per_image(a.ndim == 1, bool(shifts), len(parts)), _call, interpret)
    return call(*parts, a.astype(jnp.float32), b.astype(jnp.float32), *shifts, settings)
