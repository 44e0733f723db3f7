"""The forward of :func:`jdiff.models.group_norm.normalise_affine` as one Pallas (Triton) kernel.

Computes the same y = [SiLU](x̂·a + b) for x (B, N, C), a and b (B, C) float32, x̂ standardised over the
N positions and C/G channels of each group (the math is in group_norm.py's docstring), with the
statistics of ``_group_stats(one_pass=True)``: per channel the sums of x − K and (x − K)² with the shift
K = the channel's value at the first position (so the sums do not cancel when the mean is large
against the spread), then the exact combination of a group's channels (Chan et al.: M2_g = Σ_c M2_c +
N·Σ_c (μ_c − μ_g)²). Arithmetic is float32; y is written in ``out_dtype``.

Why: XLA computes the GroupNorm of the UNet as a statistics reduction (two reads of x for the two-pass
variance) and then an element-wise apply (a read and a write), 7.3 ms of a 27 ms sampling step (batch
512, bf16) that is bound by memory traffic. Here one program owns all N positions of a block of whole
groups of one image: pass 1 streams its slab from DRAM and accumulates the statistics, pass 2 streams
it again, applies the normalisation and writes y. When the slab is still in L2 for pass 2, that is
one read of x from DRAM instead of two or three. Pass 2 walks the chunks in reverse order, so that
it starts with those pass 1 read last (the likeliest still in L2), and the load/store eviction hints
ask L2 to keep x and not y.

Layout: the grid is (C / channels_per_program, B), channel blocks fastest, so the programs of one
image (which share DRAM sectors when a block's row is not a whole number of 32-byte sectors) run
together. A program loads tiles of ``block_n`` positions × ``width`` channels, ``width`` = the next
power of two of ``channels_per_program`` (Triton's blocks are powers of two), with the lanes beyond
the program's channels masked off. Channels are the contiguous axis, so the loads are coalesced
along them. For C = 384 (groups of 12 channels) no power of two holds whole groups, so 3/4 of the
lanes carry data whatever the block; the masked lanes cost registers and issue slots, not DRAM
traffic. Channels are combined into their groups with a (width, groups-per-program) membership
mask, sum-reduced over one axis, and the group values broadcast back to their channels the same
way (a reshape to (groups, channels-per-group) would need a power-of-two group size, and a one-hot
matrix product would run in TF32 on Triton's tensor cores).

Over a batch sharded on a mesh, each device runs the kernel on its own images (the partitioning rule
below: a custom call is opaque to XLA's SPMD partitioner, which would otherwise gather the batch onto
every device and repeat the whole computation there).

Forward only, for inference and sampling: it defines no derivative, and ``jax.grad`` or ``jax.jvp``
of it fails inside Pallas's own JVP of the kernel (an AssertionError with jax 0.10.2). Train with
``normalise_affine``, whose VJP is hand-written.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas import triton as plt
from jax.sharding import NamedSharding, PartitionSpec as P

from jdiff.models.group_norm import EPS, NUM_GROUPS

Dtype = Any

# Defaults chosen from a sweep on an H200 (experiments/bench_group_norm.py, docs/benchmarks.md): within
# ~10% of the best setting of each of the UNet's shapes at batch 512.
MIN_CHANNELS = 64  # channels per program by default: at least 128 bytes of bf16 per row
TILE_ELEMENTS = (2048, 4096)  # positions × padded channels per tile: for N < 1024, and for N ≥ 1024


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def default_channels_per_program(channels: int, groups: int = NUM_GROUPS) -> int:
    """The fewest whole groups (a divisor of G) with at least MIN_CHANNELS channels (small slabs, so
    that many programs' slabs stay in L2 between the two passes), else all C."""
    per_group = channels // groups
    for k in range(1, groups + 1):
        if groups % k == 0 and k * per_group >= MIN_CHANNELS:
            return k * per_group
    return channels


def default_block_n(n: int, channels_per_program: int) -> int:
    """Positions per tile: the largest power of two dividing N with at most TILE_ELEMENTS elements of
    the padded channel width."""
    rows = max(1, TILE_ELEMENTS[n >= 1024] // _next_power_of_2(channels_per_program))
    while n % rows:
        rows //= 2
    return rows


def default_num_warps(block_n: int, channels_per_program: int) -> int:
    """8 warps for tiles of 4096 elements or more, else 4."""
    return 8 if block_n * _next_power_of_2(channels_per_program) >= 4096 else 4


def _resolve(n: int, channels: int, groups: int, block_n: int | None,
             channels_per_program: int | None) -> tuple[int, int]:
    """(block_n, channels_per_program) with the defaults filled in."""
    cpp = (default_channels_per_program(channels, groups) if channels_per_program is None
           else channels_per_program)
    return (default_block_n(n, cpp) if block_n is None else block_n), cpp


def unsupported_reason(x_shape: tuple[int, ...], dtype: Dtype, *, groups: int = NUM_GROUPS,
                       block_n: int | None = None, channels_per_program: int | None = None) -> str | None:
    """Why the kernel cannot take x of this shape and dtype with these settings, or None if it can.

    ``None`` for block_n or channels_per_program stands for the default."""
    if len(x_shape) != 3:
        return f"x must be (B, N, C), got shape {x_shape}"
    _, n, channels = x_shape
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"x must be floating point, got {jnp.dtype(dtype)}"
    if channels % groups:
        return f"C = {channels} is not divisible by {groups} groups"
    per_group = channels // groups
    cpp = channels_per_program
    if cpp is not None and (cpp < 1 or cpp % per_group or channels % cpp):
        return (f"channels_per_program = {cpp} must be a whole number of groups ({per_group} channels "
                f"each) and divide C = {channels}")
    rows, _ = _resolve(n, channels, groups, block_n, cpp)
    if rows < 1 or rows & (rows - 1):
        return f"block_n = {rows} must be a power of two (Triton's blocks are)"
    if n % rows:
        return f"N = {n} positions must be a multiple of block_n = {rows} (the kernel has no row mask)"
    return None


def _kernel(x_ref, a_ref, b_ref, y_ref, *, block_n: int, per_group: int, channels_per_program: int,
            eps: float, silu: bool):
    n = x_ref.shape[1]
    width = _next_power_of_2(channels_per_program)
    chunks = n // block_n
    groups_here = _next_power_of_2(channels_per_program // per_group)
    image = pl.program_id(1)
    cols = pl.ds(pl.program_id(0) * channels_per_program, width)
    lanes = None if width == channels_per_program else jnp.arange(width) < channels_per_program
    tile_mask = None if lanes is None else lanes[None, :]
    zero = None if lanes is None else 0.0  # masked lanes read as 0 (x − K = 0 there, since K = 0 too)

    def tile(i, eviction_policy):
        ref = x_ref.at[image, pl.ds(i * block_n, block_n), cols]
        return plt.load(ref, mask=tile_mask, other=zero, eviction_policy=eviction_policy).astype(jnp.float32)

    def per_channel(ref):
        return plt.load(ref.at[image, cols], mask=lanes, other=zero)

    first_row = jnp.int32(0)  # an array, not a Python int: the interpreter's load takes no int index
    shift = plt.load(x_ref.at[image, first_row, cols], mask=lanes, other=zero).astype(jnp.float32)

    def accumulate(i, sums):
        d = tile(i, "evict_last") - shift  # keep x in L2 for pass 2
        return sums[0] + d, sums[1] + d * d

    # Whole-tile accumulators, reduced over positions once after the loop, keep the loop free of
    # cross-thread reductions.
    zeros = jnp.zeros((block_n, width), jnp.float32)
    s1, s2 = jax.lax.fori_loop(0, chunks, accumulate, (zeros, zeros))
    s1, s2 = s1.sum(0), s2.sum(0)
    mean_c = shift + s1 / n
    m2_c = jnp.maximum(s2 - s1 * s1 / n, 0.0)

    # member[c, g]: lane c holds a channel of the program's group g (lanes past its groups: none).
    lane = jax.lax.broadcasted_iota(jnp.int32, (width, groups_here), 0)
    first = jax.lax.broadcasted_iota(jnp.int32, (width, groups_here), 1) * per_group
    member = (lane >= first) & (lane < first + per_group)

    def group_sum(v):  # (width,) → (groups_here,)
        return jnp.sum(jnp.where(member, v[:, None], 0.0), axis=0)

    def to_lanes(v):  # (groups_here,) → (width,), each group's value on its channels
        return jnp.sum(jnp.where(member, v[None, :], 0.0), axis=1)

    mean = to_lanes(group_sum(mean_c) / per_group)
    m2 = group_sum(m2_c + n * jnp.square(mean_c - mean))
    rstd = to_lanes(jax.lax.rsqrt(m2 / (n * per_group) + eps))
    scale = rstd * per_channel(a_ref)
    bias = per_channel(b_ref)

    @pl.loop(0, chunks)
    def apply(j):
        i = chunks - 1 - j  # the chunks pass 1 read last are the likeliest still in L2
        z = (tile(i, "evict_first") - mean) * scale + bias
        y = jax.nn.silu(z) if silu else z
        plt.store(y_ref.at[image, pl.ds(i * block_n, block_n), cols], y.astype(y_ref.dtype), mask=tile_mask,
                  eviction_policy="evict_first")  # y is not read again here: let it leave L2 before x


class _Settings(NamedTuple):
    """The kernel's static settings, resolved (hashable: the static argument of the partitioned call)."""
    block_n: int
    per_group: int
    channels_per_program: int
    eps: float
    silu: bool
    out_dtype: Any
    num_warps: int
    num_stages: int | None
    interpret: bool


def _pallas_call(x: jax.Array, a: jax.Array, b: jax.Array, settings: _Settings) -> jax.Array:
    """The kernel over the images of x, however many this device holds."""
    batch, _, channels = x.shape
    kernel = functools.partial(_kernel, block_n=settings.block_n, per_group=settings.per_group,
                               channels_per_program=settings.channels_per_program, eps=settings.eps,
                               silu=settings.silu)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(x.shape, settings.out_dtype),
        grid=(channels // settings.channels_per_program, batch),
        compiler_params=plt.CompilerParams(num_warps=settings.num_warps, num_stages=settings.num_stages),
        interpret=settings.interpret,
        name="group_norm_affine",
    )(x, a, b)


def _split_along_batch(sharding: Any, ndim: int) -> NamedSharding:
    """A sharding that splits an operand's first (batch) axis as ``sharding`` splits x's, and keeps the
    other axes whole: each image's statistics need all its positions and the channels of its groups."""
    if not isinstance(sharding, NamedSharding):
        raise ValueError(f"the GroupNorm kernel can only be partitioned over a named mesh; x is sharded as "
                         f"{sharding}: use jax.sharding.NamedSharding, or model.norm_implementation='xla'")
    spec = tuple(sharding.spec)
    return NamedSharding(sharding.mesh, P(spec[0] if spec else None, *([None] * (ndim - 1))))


def _partition(settings, mesh, arg_shapes, result_shape):
    x = arg_shapes[0].sharding
    return (mesh, functools.partial(_pallas_call, settings=settings), _split_along_batch(x, 3),
            (_split_along_batch(x, 3), _split_along_batch(x, 2), _split_along_batch(x, 2)))


def _infer_sharding(settings, mesh, arg_shapes, result_shape):
    return _split_along_batch(arg_shapes[0].sharding, 3)


# The SPMD rule of the kernel (a custom call, which XLA cannot split by itself): over a sharded batch every
# device runs it on its own images, without collectives. The rule string is Shardy's (JAX's default
# partitioner); infer_sharding_from_operands serves GSPMD.
_per_image_partitioned = custom_partitioning(_pallas_call, static_argnums=(3,))
_per_image_partitioned.def_partition(_partition, infer_sharding_from_operands=_infer_sharding,
                                     sharding_rule="b n c, b c, b c -> b n c",
                                     need_replication_factors=("n", "c"))


def normalise_affine_pallas(x: jax.Array, a: jax.Array, b: jax.Array, *, groups: int = NUM_GROUPS,
                            eps: float = EPS, silu: bool = False, out_dtype: Dtype = jnp.float32,
                            interpret: bool = False, block_n: int | None = None,
                            channels_per_program: int | None = None, num_warps: int | None = None,
                            num_stages: int | None = None) -> jax.Array:
    """y = [SiLU](x̂·a + b) for x (B, N, C), a and b (B, C) float32, as ``normalise_affine(x, a, b,
    groups, eps, silu, one_pass=True, out_dtype)`` computes it, in one Pallas Triton kernel (forward
    only: no VJP).

    ``block_n`` positions per tile, ``channels_per_program`` (a whole number of groups dividing C) and
    ``num_warps`` default to :func:`default_block_n`, :func:`default_channels_per_program` and
    :func:`default_num_warps`; ``num_stages`` goes to Triton (None: its default). ``interpret`` runs the kernel in Pallas's
    interpreter (any backend, slow). Under ``jax.jit`` over a mesh with x split along its batch axis, each
    device computes its own images. Raises ValueError for what :func:`unsupported_reason` rejects.
    """
    reason = unsupported_reason(x.shape, x.dtype, groups=groups, block_n=block_n,
                                channels_per_program=channels_per_program)
    if reason:
        raise ValueError(f"normalise_affine_pallas: {reason}")
    batch, n, channels = x.shape
    if a.shape != (batch, channels) or b.shape != (batch, channels):
        raise ValueError(f"normalise_affine_pallas: a and b must be (B, C) = {(batch, channels)}, "
                         f"got {a.shape} and {b.shape}")
    rows, cpp = _resolve(n, channels, groups, block_n, channels_per_program)
    settings = _Settings(block_n=rows, per_group=channels // groups, channels_per_program=cpp, eps=eps,
                         silu=silu, out_dtype=jnp.dtype(out_dtype),
                         num_warps=default_num_warps(rows, cpp) if num_warps is None else num_warps,
                         num_stages=num_stages, interpret=interpret)
    return _per_image_partitioned(x, a.astype(jnp.float32), b.astype(jnp.float32), settings)
