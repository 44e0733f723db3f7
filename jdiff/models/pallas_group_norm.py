"""The forward and the backward of :func:`jdiff.models.group_norm.normalise_affine`, each one Pallas (Triton)
kernel.

The forward computes the same y = [SiLU](x̂·a + b) for x (B, N, C), a and b float32 (B, C), or (C,) for all
images, x̂ standardised over the N positions and C/G channels of each group (the math is in group_norm.py's
docstring), with the statistics of ``_group_stats(one_pass=True)``: per channel the sums of x − K and
(x − K)² with the shift K = the channel's value at the first position (so the sums do not cancel when the
mean is large against the spread), then the exact combination of a group's channels (Chan et al.:
M2_g = Σ_c M2_c + N·Σ_c (μ_c − μ_g)²). Arithmetic is float32; y is written in ``out_dtype``, and each
channel's group mean and (σ² + ε)^(−1/2) as (B, C) float32 for the backward. The backward has the same
shape: pass 1 sums da = Σ_n dz·x̂ and db = Σ_n dz per channel, pass 2 writes dx = r·(a·dz − m1 − x̂·m2),
recomputing x̂ and dz from x and dy (read twice, the second time mostly from L2) instead of storing them.
With dropout (group_norm.py's docstring) the forward applies the mask to y as it writes it and the backward
to dy as it reads it, recomputing the hash from two more (B, C) int32 operands, the seeds.

Why: XLA computes the GroupNorm of the UNet as a statistics reduction (two reads of x for the two-pass
variance) and then an element-wise apply (a read and a write), 7.3 ms of a 27 ms sampling step (batch
512, bf16) that is bound by memory traffic. Here one program owns all N positions of a block of whole
groups of one image: pass 1 streams its slab from DRAM and accumulates the statistics, pass 2 streams
it again, applies the normalisation and writes y. When the slab is still in L2 for pass 2, that is
one read of x from DRAM instead of two or three. In training XLA's backward is a two-stage
reduction for da, db and an element-wise pass for dx that also writes dz in float32; the backward kernel
is one kernel per norm. Pass 2 walks the chunks in reverse order, so that
it starts with those pass 1 read last (the likeliest still in L2), and the load/store eviction hints
ask L2 to keep x and not y. When one tile holds all N positions (block_n = N) the slab is read once and
kept in registers for both passes; on an H200 that was slower for every large slab (a program has nothing
to overlap its loads with), so the defaults give one chunk only for small N.

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
matrix product would run in TF32 on Triton's tensor cores). Those reductions move values between
register layouts through shared memory, with a barrier each time; for the small slabs of the 16×16 and
smaller norms that latency, not DRAM, set the forward's time (one warp, where no reduction crosses warps,
was up to 2× faster). Where the group size and the groups per program are powers of two, the forward
instead views every operand's channel axis as (G, C/G), a free reshape, and loads tiles of (positions,
groups, channels per group): a group's statistics are then sums over the tile's own axes and broadcast back
without a move (the 'groups' tile layout, :class:`SlabProgram`; by default for N ≤ 256).

On Hopper GPUs (jax ≥ 0.11) :func:`forward` hands the norms of N ≥ 1024 positions without dropout to
:mod:`jdiff.models.mosaic_group_norm`, whose TMA copies keep each slab in shared memory between the two passes
(``kernel`` chooses explicitly); the backward kernel reads either forward's mean and rstd.

The forward also takes x as parts standing for their concatenation along the channels (the UNet decoder's
activations and the encoder's skip), each part a whole number of programs' channels: a program's loads go to
the part that holds its channels (one ``pl.when`` branch per part), so the concatenation is never written.

Over a batch sharded on a mesh, each device runs the kernels on its own images
(:func:`jdiff.models.per_image.partitioned_per_image`).

The kernels define no derivative of their own (``jax.grad`` of :func:`forward` fails inside Pallas's
JVP of the kernel): ``normalise_affine``'s custom VJP pairs them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jdiff.models.group_norm import (AFFINE_RULE, EPS, NUM_GROUPS, OUTPUTS_RULE, SEEDS_RULE, Parts,
                                     channel_parts, check_affine, check_dropout, concatenation_shape,
                                     dropout_keep, dropout_keep_scale, dropout_threshold,
                                     forward_sharding_rule, shift_operands, whole_blocks_reason)
from jdiff.models import mosaic_group_norm
from jdiff.models.per_image import partitioned_per_image

Dtype = Any

# Defaults chosen from a sweep on an H200 (experiments/bench_group_norm.py, docs/benchmarks.md): within
# ~10% of the best setting of each of the UNet's shapes at batch 512.
MIN_CHANNELS = 64  # channels per program by default: at least 128 bytes of bf16 per row
TILE_ELEMENTS = (2048, 4096)  # positions × padded channels per tile: for N < 1024, and for N ≥ 1024
# The backward kernel's (block_n, channels_per_program, num_warps) for (N, C) of the UNet where the rules
# above are 6–15% slower: the fastest setting at batch 128 in two sweeps on two H200s (docs/benchmarks.md,
# "GroupNorm backward settings"); no one rule fits every shape. Other shapes use the rules.
TUNED_BACKWARD = {(1024, 256): (16, 64, 8), (1024, 384): (16, 48, 8), (256, 256): (16, 64, 8),
                  (256, 512): (32, 64, 8), (16, 512): (8, 128, 8)}
# The forward kernel's, for the UNet's shapes of at most GROUPED_MAX_POSITIONS positions, in the grouped
# layout: the fastest setting at batch 512 in a sweep on an H200 (docs/benchmarks.md, "GroupNorms of 16×16
# and smaller"); one warp where the tile is small, since then no reduction crosses warps.
TUNED_FORWARD = {(16, 256): (16, 64, 1), (16, 512): (16, 128, 1), (64, 256): (64, 32, 1),
                 (64, 512): (64, 64, 4), (256, 256): (32, 64, 8), (256, 512): (32, 64, 8)}
# How a program holds its channels (SlabProgram): 'lanes', 'groups', or 'auto': 'groups' where it applies
# and N ≤ GROUPED_MAX_POSITIONS (the range it was measured faster in; the 32×32 norms were not measured).
TILE_LAYOUTS = ("auto", "lanes", "groups")
GROUPED_MAX_POSITIONS = 256


KERNELS = ("auto", "triton", "mosaic")  # the forward's


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n (n ≥ 1): the width of a Triton block that holds n lanes."""
    return 1 << (n - 1).bit_length()


def is_power_of_2(n: int) -> bool:
    """Whether n is a power of two (≥ 1), as every dimension of a Triton block must be."""
    return n > 0 and not n & (n - 1)


def largest_power_of_2_dividing(sizes: Sequence[int], most: int) -> int:
    """The largest power of two ≤ ``most`` (a power of two) that divides every one of ``sizes``."""
    block = most
    while any(size % block for size in sizes) and block > 1:
        block //= 2
    return block


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
    most = max(1, TILE_ELEMENTS[n >= 1024] // next_power_of_2(channels_per_program))
    return largest_power_of_2_dividing([n], most)


def default_num_warps(block_n: int, channels_per_program: int) -> int:
    """8 warps for tiles of 4096 elements or more, else 4."""
    return 8 if block_n * next_power_of_2(channels_per_program) >= 4096 else 4


def _resolve(n: int, channels: int, groups: int, block_n: int | None,
             channels_per_program: int | None) -> tuple[int, int]:
    """(block_n, channels_per_program) with the defaults filled in."""
    cpp = (default_channels_per_program(channels, groups) if channels_per_program is None
           else channels_per_program)
    return (default_block_n(n, cpp) if block_n is None else block_n), cpp


def grouped_layout_reason(per_group: int, channels_per_program: int) -> str | None:
    """Why the grouped tile layout cannot hold groups of ``per_group`` channels, ``channels_per_program`` per
    program, or None if it can (Triton's blocks are powers of two along every axis)."""
    if not is_power_of_2(per_group):
        return f"the grouped tile layout needs a power-of-two group size, not {per_group} channels per group"
    if not is_power_of_2(channels_per_program // per_group):
        return (f"the grouped tile layout needs a power-of-two number of groups per program, not "
                f"{channels_per_program // per_group}")
    return None


def unsupported_reason(x_shape: tuple[int, ...], dtype: Dtype, *, groups: int = NUM_GROUPS,
                       block_n: int | None = None, channels_per_program: int | None = None,
                       tile_layout: str = "auto", parts: tuple[int, ...] | None = None) -> str | None:
    """Why the kernel cannot take x of this shape and dtype with these settings, or None if it can; with
    ``parts``, x given as parts of these channel counts (each must be a whole number of programs' channels).

    ``None`` for block_n or channels_per_program stands for the default."""
    if tile_layout not in TILE_LAYOUTS:
        return f"tile_layout {tile_layout!r} is not one of {TILE_LAYOUTS}"
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
    rows, cpp = _resolve(n, channels, groups, block_n, cpp)
    if parts is not None:
        reason = whole_blocks_reason(parts, channels, cpp, f"programs' {cpp} channels (channels_per_program)")
        if reason:
            return reason
    if not is_power_of_2(rows):
        return f"block_n = {rows} must be a power of two (Triton's blocks are)"
    if n % rows:
        return f"N = {n} positions must be a multiple of block_n = {rows} (the kernel has no row mask)"
    return grouped_layout_reason(per_group, cpp) if tile_layout == "groups" else None


class SlabProgram(NamedTuple):
    """What one program of either kernel owns: all N positions of a block of whole groups of one image.

    Two layouts of its channels (``channel_shape``, the shape of a per-channel vector; a tile is (block_n,
    *channel_shape)): as ``width`` lanes (a power of two) from the block's first channel, lanes past its
    ``channels_per_program`` channels masked (they load as 0 and are not stored); or, where the group size
    and the number of groups per program are powers of two, as (groups, channels per group) of operands
    viewed as (…, G, C/G) (:data:`TILE_LAYOUTS`)."""
    image: Any
    cols: tuple  # the indexers of the channel axes
    lanes: Any  # (width,) bool, or None when every lane is a channel of the program
    channel_shape: tuple[int, ...]
    block_n: int
    chunks: int

    @staticmethod
    def here(n: int, block_n: int, channels_per_program: int, per_group: int | None = None) -> "SlabProgram":
        """The program of this grid point; ``per_group`` given: the grouped layout (operands (…, G, C/G))."""
        if per_group is not None:
            groups_here = channels_per_program // per_group
            return SlabProgram(image=pl.program_id(1),
                               # an int32 start as the program ids', also under jax_enable_x64
                               cols=(pl.ds(pl.program_id(0) * groups_here, groups_here),
                                     pl.ds(jnp.int32(0), per_group)),
                               lanes=None, channel_shape=(groups_here, per_group), block_n=block_n,
                               chunks=n // block_n)
        width = next_power_of_2(channels_per_program)
        lanes = None if width == channels_per_program else jnp.arange(width) < channels_per_program
        return SlabProgram(image=pl.program_id(1),
                           cols=(pl.ds(pl.program_id(0) * channels_per_program, width),),
                           lanes=lanes, channel_shape=(width,), block_n=block_n, chunks=n // block_n)

    @property
    def grouped(self) -> bool:
        return len(self.channel_shape) == 2

    def reading_part(self, first_channel: int) -> "SlabProgram":
        """This program reading a part of a channel concatenation that begins at channel ``first_channel``
        (the part holds all of the program's channels): its channel indexers moved back by that much."""
        first, *rest = self.cols
        step = self.channel_shape[1] if self.grouped else 1
        return self._replace(cols=(pl.ds(first.start - first_channel // step, first.size), *rest))

    @property
    def width(self) -> int:
        """Lanes of the lanes layout."""
        return self.channel_shape[0]

    @property
    def _tile_mask(self):
        return None if self.lanes is None else self.lanes[None, :]

    def rows(self, i):
        """pl.ds of positions [i·block_n, (i + 1)·block_n)."""
        # int32 like the program ids, also when jax_enable_x64 makes the loop counter int64
        return pl.ds(jnp.asarray(i, jnp.int32) * self.block_n, self.block_n)

    def load_tile(self, ref, i, eviction_policy: str) -> jax.Array:
        """Positions [i·block_n, (i + 1)·block_n) of the program's lanes of a (B, N, C) operand, float32."""
        return plt.load(ref.at[(self.image, self.rows(i), *self.cols)], mask=self._tile_mask,
                        other=None if self.lanes is None else 0.0,
                        eviction_policy=eviction_policy).astype(jnp.float32)

    def store_tile(self, ref, i, value: jax.Array) -> None:
        # Not read again by this program: let it leave L2 before the inputs that pass 2 reads again.
        plt.store(ref.at[(self.image, self.rows(i), *self.cols)], value.astype(ref.dtype),
                  mask=self._tile_mask, eviction_policy="evict_first")

    def load_channels(self, ref, row=None, dtype=jnp.float32) -> jax.Array:
        """The program's channels of a (B, C) operand (its image's row), a (C,) one (shared by the images),
        or of position ``row`` of a (B, N, C) one, as dtype (C: the layout's channel axes)."""
        if row is not None:
            at = ref.at[(self.image, row, *self.cols)]
        else:
            shared = len(ref.shape) == len(self.channel_shape)
            at = ref.at[self.cols] if shared else ref.at[(self.image, *self.cols)]
        return plt.load(at, mask=self.lanes, other=None if self.lanes is None else 0).astype(dtype)

    def dropout(self, seed_refs, threshold: int, scale: float):
        """``drop(i, v)``: the tile v of chunk i with dropout's mask (group_norm.dropout_keep
        of its positions and the program's channels' seeds) and 1/p applied; identity without seeds."""
        if not seed_refs:
            return lambda i, v: v
        seed0, seed1 = (self.load_channels(ref, dtype=jnp.int32)[None] for ref in seed_refs)

        def drop(i, v):
            position = jnp.asarray(i, jnp.int32) * self.block_n + jax.lax.broadcasted_iota(
                jnp.int32, (self.block_n,) + (1,) * len(self.channel_shape), 0)
            return jnp.where(dropout_keep(position, seed0, seed1, threshold), v * scale, 0.0)
        return drop

    def store_channels(self, ref, value: jax.Array) -> None:
        plt.store(ref.at[(self.image, *self.cols)], value.astype(ref.dtype), mask=self.lanes)

    def sum_over_positions(self, tiles: Callable[[Any], tuple[jax.Array, ...]], count: int):
        """Per channel, the sums over all N positions of the ``count`` tiles that ``tiles(i)`` returns for
        chunk i. Whole-tile accumulators, reduced over positions once after the loop, keep the
        loop free of cross-thread reductions."""
        zeros = jnp.zeros((self.block_n, *self.channel_shape), jnp.float32)
        sums = jax.lax.fori_loop(0, self.chunks, lambda i, acc: tuple(s + t for s, t in zip(acc, tiles(i))),
                                 (zeros,) * count)
        return tuple(s.sum(0) for s in sums)

    def two_passes(self, load: Callable[[Any, str], tuple[jax.Array, ...]],
                   summands: Callable[..., tuple[jax.Array, ...]], count: int,
                   second_pass: Callable[[tuple[jax.Array, ...]], Callable[..., None]]) -> None:
        """Pass 1 sums ``summands(i, *load(i))`` (``count`` tiles) over all positions; then
        ``second_pass(sums)(i, *load(i))`` runs for every chunk i. ``load(i, eviction_policy)`` reads chunk
        i's tiles of the operands (and may derive from them what both passes use).

        With one chunk (block_n = N) the slab is read once and stays in registers for both passes. With
        several, pass 1 asks L2 to keep what it reads and pass 2 walks the chunks in reverse order, so that
        it starts with those pass 1 read last (the likeliest still in L2)."""
        if self.chunks == 1:
            tiles = load(0, "evict_first")
            second_pass(tuple(s.sum(0) for s in summands(0, *tiles)))(0, *tiles)
            return
        sums = self.sum_over_positions(lambda i: summands(i, *load(i, "evict_last")), count)
        body = second_pass(sums)

        def reversed_chunk(j):
            i = self.chunks - 1 - j
            body(i, *load(i, "evict_first"))
        pl.loop(0, self.chunks)(reversed_chunk)


def _group_reductions(program: SlabProgram, channels_per_program: int, per_group: int):
    """(group_sum, to_lanes): per-channel values → the sums over each group's channels (groups,), and
    per-group values → each on its group's channels (in the lanes layout, lanes past the program's groups: 0).

    In the grouped layout these are a sum over the tile's last axis and a broadcast along it, in the tile's
    own register layout. The lanes layout reduces a (width, groups) membership mask over one axis (a
    reshape to (groups, channels per group) would need a power-of-two group size, and a one-hot matrix
    product would run in TF32 on Triton's tensor cores); the values then move between layouts through
    shared memory, which is what made the small norms slow with several warps (docs/benchmarks.md)."""
    if program.grouped:
        return (lambda v: jnp.sum(v, axis=-1),
                lambda v: jnp.broadcast_to(v[:, None], program.channel_shape))
    groups_here = next_power_of_2(channels_per_program // per_group)
    lane = jax.lax.broadcasted_iota(jnp.int32, (program.width, groups_here), 0)
    first = jax.lax.broadcasted_iota(jnp.int32, (program.width, groups_here), 1) * per_group
    member = (lane >= first) & (lane < first + per_group)

    def group_sum(v):
        return jnp.sum(jnp.where(member, v[:, None], 0.0), axis=0)

    def to_lanes(v):
        return jnp.sum(jnp.where(member, v[None, :], 0.0), axis=1)

    return group_sum, to_lanes


def centred(shift: jax.Array) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    """Pass 1's summands of chunk i's tile x: x − K and (x − K)², K = each channel's first value."""
    def summands(i, x):
        d = x - shift
        return d, d * d
    return summands


def group_statistics(program: SlabProgram, shift: jax.Array, sums: tuple[jax.Array, jax.Array],
                     channels_per_program: int, per_group: int, eps: float,
                     input_shift: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Each channel's group mean and (σ² + ε)^(−1/2) from pass 1's sums of :func:`centred` over the N
    positions: per channel μ_c = K + S₁/N and M2_c = S₂ − S₁²/N, per group μ_g = mean of μ_c and M2_g =
    Σ_c M2_c + N·Σ_c (μ_c − μ_g)² (Chan et al.), σ² = M2_g / (N·C/G). ``input_shift`` c: the statistics of
    x + c."""
    n = program.chunks * program.block_n
    s1, s2 = sums
    mean_c = shift + s1 / n
    m2_c = jnp.maximum(s2 - s1 * s1 / n, 0.0)
    if input_shift is not None:  # each channel's mean moves by c, its M2 does not
        mean_c = mean_c + input_shift
    group_sum, to_lanes = _group_reductions(program, channels_per_program, per_group)
    mean = to_lanes(group_sum(mean_c) / per_group)
    m2 = group_sum(m2_c + n * jnp.square(mean_c - mean))
    return mean, to_lanes(jax.lax.rsqrt(m2 / (n * per_group) + eps))


def _each_part(program: SlabProgram, refs, parts: tuple[int, ...], channels_per_program: int,
               body: Callable[[Any, SlabProgram], None]) -> None:
    """``body(ref, source)`` with the ref of the part of a channel concatenation (``parts`` its channel
    counts) that holds the program's channels and the program reading it
    (:meth:`SlabProgram.reading_part`). Each part is a whole number of programs' channels, so one branch
    runs per program."""
    if len(parts) == 1:
        body(refs[0], program)
        return
    block, first = pl.program_id(0), 0
    for ref, channels in zip(refs, parts):
        low, high = first // channels_per_program, (first + channels) // channels_per_program
        pl.when((block >= low) & (block < high))(functools.partial(body, ref, program.reading_part(first)))
        first += channels


def _forward_kernel(*refs, parts: tuple[int, ...], block_n: int, per_group: int, channels_per_program: int,
                    eps: float, silu: bool, dropout_threshold: int, dropout_scale: float, grouped: bool,
                    shifted: bool):
    x_refs, (a_ref, b_ref, *refs) = refs[:len(parts)], refs[len(parts):]
    *inputs, y_ref, mean_ref, rstd_ref = refs  # the input shift c if shifted; the seeds with dropout
    shift_ref, seed_refs = (inputs[0], inputs[1:]) if shifted else (None, inputs)
    program = SlabProgram.here(x_refs[0].shape[1], block_n, channels_per_program,
                               per_group if grouped else None)
    _each_part(program, x_refs, parts, channels_per_program,
               functools.partial(_normalise_slab, program=program, a_ref=a_ref, b_ref=b_ref,
                                 shift_ref=shift_ref, seed_refs=seed_refs, y_ref=y_ref, mean_ref=mean_ref,
                                 rstd_ref=rstd_ref, per_group=per_group,
                                 channels_per_program=channels_per_program, eps=eps, silu=silu,
                                 dropout_threshold=dropout_threshold, dropout_scale=dropout_scale))


def _normalise_slab(x_ref, source: SlabProgram, *, program: SlabProgram, a_ref, b_ref, shift_ref, seed_refs,
                    y_ref, mean_ref, rstd_ref, per_group: int, channels_per_program: int, eps: float,
                    silu: bool, dropout_threshold: int, dropout_scale: float) -> None:
    """The forward of one program: x read through ``source`` (the program itself, or it reading a part of a
    channel concatenation), everything else through ``program``."""
    shifted = shift_ref is not None
    # an array, not a Python int, as the row: the interpreter's load takes no int index
    shift = source.load_channels(x_ref, row=jnp.int32(0))

    def normalise(sums):
        c = program.load_channels(shift_ref) if shifted else None
        mean, rstd = group_statistics(program, shift, sums, channels_per_program, per_group, eps, c)
        if shifted:  # x + c − μ = x − (μ − c): the apply, and the backward's x̂, read x as it is
            mean = mean - c
        program.store_channels(mean_ref, mean)
        program.store_channels(rstd_ref, rstd)
        scale = rstd * program.load_channels(a_ref)
        bias = program.load_channels(b_ref)
        drop = program.dropout(seed_refs, dropout_threshold, dropout_scale)

        def apply(i, x):
            z = (x - mean) * scale + bias
            program.store_tile(y_ref, i, drop(i, jax.nn.silu(z) if silu else z))
        return apply

    source.two_passes(lambda i, policy: (source.load_tile(x_ref, i, policy),), centred(shift), 2, normalise)


def _backward_kernel(x_ref, dy_ref, a_ref, b_ref, mean_ref, rstd_ref, *refs, block_n: int, per_group: int,
                     channels_per_program: int, eps: float, silu: bool, dropout_threshold: int,
                     dropout_scale: float, grouped: bool):
    del eps  # in the saved rstd
    *seed_refs, dx_ref, da_ref, db_ref = refs  # the seeds only with dropout
    n = x_ref.shape[1]
    program = SlabProgram.here(n, block_n, channels_per_program, per_group if grouped else None)
    mean, rstd = program.load_channels(mean_ref), program.load_channels(rstd_ref)
    a, b = program.load_channels(a_ref), program.load_channels(b_ref)
    drop = program.dropout(seed_refs, dropout_threshold, dropout_scale)  # the forward's mask, recomputed

    def dz_and_xhat(i, x, dy):
        xhat = (x - mean) * rstd
        dz = drop(i, dy)
        if silu:
            z = xhat * a + b
            sig = jax.nn.sigmoid(z)
            dz = dz * sig * (1.0 + z * (1.0 - sig))
        return dz, xhat

    def load(i, policy):  # the tiles both passes need, derived once per read
        return dz_and_xhat(i, program.load_tile(x_ref, i, policy), program.load_tile(dy_ref, i, policy))

    def products(i, dz, xhat):
        return dz * xhat, dz

    def input_gradient(sums):
        da, db = sums
        program.store_channels(da_ref, da)
        program.store_channels(db_ref, db)
        group_sum, to_lanes = _group_reductions(program, channels_per_program, per_group)
        m1 = to_lanes(group_sum(a * db)) / (n * per_group)
        m2 = to_lanes(group_sum(a * da)) / (n * per_group)

        def write(i, dz, xhat):
            program.store_tile(dx_ref, i, rstd * (a * dz - m1 - xhat * m2))
        return write

    program.two_passes(load, products, 2, input_gradient)


class _Settings(NamedTuple):
    """The kernels' static settings, resolved (hashable: the static argument of the partitioned calls)."""
    block_n: int
    per_group: int
    channels_per_program: int
    eps: float
    silu: bool
    out_dtype: Any  # y's dtype in the forward, dx's in the backward
    dropout: float  # the rate; the kernels then take two (B, C) int32 seed operands more
    num_warps: int
    num_stages: int | None
    interpret: bool
    grouped: bool  # the grouped tile layout (operands viewed as (…, G, C/G)), else lanes
    parts: tuple[int, ...]  # the channel counts of x's parts (the forward's; (C,) for one array)


def _launch(kernel, name: str, settings: _Settings, operands: tuple[jax.Array, ...],
            **options: Any) -> tuple[jax.Array, ...]:
    """``kernel`` over the images of operands[0] (B, N, C) (or of the channel concatenation of the first
    ``len(settings.parts)`` operands), however many this device holds: its outputs are one (B, N, C) array
    in ``settings.out_dtype`` and two (B, C) float32 arrays. ``options`` go to the kernel as they are. In the
    grouped layout the kernel sees every operand's and output's channel axis as (groups, C/G) (a free
    reshape)."""
    batch, n, _ = operands[0].shape
    channels = sum(settings.parts)

    def kernel_view(v):
        return v.reshape(*v.shape[:-1], v.shape[-1] // settings.per_group, settings.per_group)

    channel_shape = ((channels // settings.per_group, settings.per_group) if settings.grouped
                     else (channels,))
    kernel = functools.partial(kernel, block_n=settings.block_n, per_group=settings.per_group,
                               channels_per_program=settings.channels_per_program, eps=settings.eps,
                               silu=settings.silu, dropout_threshold=dropout_threshold(settings.dropout),
                               dropout_scale=dropout_keep_scale(settings.dropout), grouped=settings.grouped,
                               **options)
    per_channel = jax.ShapeDtypeStruct((batch, *channel_shape), jnp.float32)
    outputs = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((batch, n, *channel_shape), settings.out_dtype), per_channel,
                   per_channel),
        grid=(channels // settings.channels_per_program, batch),
        compiler_params=plt.CompilerParams(num_warps=settings.num_warps, num_stages=settings.num_stages),
        interpret=settings.interpret,
        name=name,
    )(*(kernel_view(v) if settings.grouped else v for v in operands))
    return tuple(v.reshape(*v.shape[:-len(channel_shape)], channels) for v in outputs)


def _forward_call(*operands_and_settings):
    """(x's parts…, a, b[, c][, seed0, seed1], settings) → the forward kernel's (y, mean, rstd)."""
    *operands, settings = operands_and_settings
    shifted = len(operands) - len(settings.parts) - 2 - 2 * bool(settings.dropout) == 1
    return _launch(_forward_kernel, "group_norm_forward", settings, tuple(operands), shifted=shifted,
                   parts=settings.parts)


def _backward_call(*operands_and_settings):
    """(x, dy, a, b, mean, rstd[, seed0, seed1], settings) → the backward kernel's (dx, da, db)."""
    *operands, settings = operands_and_settings
    return _launch(_backward_kernel, "group_norm_backward", settings, tuple(operands))


@functools.cache
def _forward_per_image(seeded: bool, shared: bool, shifted: bool, parts: int) -> Callable[..., Any]:
    return partitioned_per_image(_forward_call, forward_sharding_rule(shared, shifted, seeded, parts))


_backward_per_image = {
    (seeded, shared): partitioned_per_image(
        _backward_call,
        "b n c, b n c" + AFFINE_RULE[shared] + ", b c, b c" + SEEDS_RULE * seeded + OUTPUTS_RULE)
    for seeded in (False, True) for shared in (False, True)}


def _checked_settings(caller: str, x: jax.Array | Parts, affine: tuple[jax.Array, jax.Array],
                      per_channel: dict[str, jax.Array], *, groups: int,
                      eps: float, silu: bool, out_dtype: Dtype, interpret: bool, dropout: float, seeds,
                      block_n: int | None, channels_per_program: int | None, num_warps: int | None,
                      num_stages: int | None, tile_layout: str, tuned: dict) -> _Settings:
    """The kernel's settings, checked, for x or the concatenation of its parts; ``tuned`` maps (N, C) to
    (block_n, channels_per_program, num_warps) used when the caller gives none of the three (with the UNet's
    32 groups). 'auto' ``tile_layout`` is 'groups' for N ≤ GROUPED_MAX_POSITIONS where the layout holds the
    groups, else 'lanes'."""
    parts = tuple(p.shape[-1] for p in channel_parts(x))
    x = concatenation_shape(caller, x)
    if (block_n, channels_per_program, num_warps) == (None,) * 3:
        block_n, channels_per_program, num_warps = _tuned(x.shape, groups, tuned)
    reason = unsupported_reason(x.shape, x.dtype, groups=groups, block_n=block_n,
                                channels_per_program=channels_per_program, tile_layout=tile_layout,
                                parts=parts if len(parts) > 1 else None)
    if reason:
        raise ValueError(f"{caller}: {reason}")
    batch, n, channels = x.shape
    check_affine(caller, *affine, batch, channels)
    check_dropout(caller, dropout, seeds, batch, channels)
    for name, value in per_channel.items():
        if value.shape != (batch, channels):
            raise ValueError(f"{caller}: {name} must be (B, C) = {(batch, channels)}, got {value.shape}")
    rows, cpp = _resolve(n, channels, groups, block_n, channels_per_program)
    per_group = channels // groups
    grouped = (tile_layout == "groups" or tile_layout == "auto" and n <= GROUPED_MAX_POSITIONS
               and grouped_layout_reason(per_group, cpp) is None)
    return _Settings(block_n=rows, per_group=per_group, channels_per_program=cpp, eps=eps, silu=silu,
                     out_dtype=jnp.dtype(out_dtype), dropout=float(dropout),
                     num_warps=default_num_warps(rows, cpp) if num_warps is None else num_warps,
                     num_stages=num_stages, interpret=interpret, grouped=grouped, parts=parts)


def _tuned(x_shape: tuple[int, ...], groups: int, tuned: dict) -> tuple[int | None, int | None, int | None]:
    """(block_n, channels_per_program, num_warps) of ``tuned`` for x of this shape (the UNet's 32 groups),
    else the defaults (None)."""
    return tuned.get(tuple(x_shape[1:]), (None,) * 3) if len(x_shape) == 3 and groups == NUM_GROUPS else (
        (None,) * 3)


def parts_reason(x_shape: tuple[int, ...], dtype: Dtype, out_dtype: Dtype, parts: tuple[int, ...], *,
                 groups: int = NUM_GROUPS, dropout: float = 0.0) -> str | None:
    """Why :func:`forward` with its defaults (kernel 'auto', tuned settings) cannot take x of this shape (the
    concatenation) as parts of these channel counts, or None if it can. Also where the Mosaic kernel would
    take the concatenation but not its parts: the parts would then go to the slower Triton kernel."""
    if mosaic_group_norm.preferred(x_shape, dtype, out_dtype, groups=groups, dropout=dropout, parts=parts):
        return None
    if mosaic_group_norm.preferred(x_shape, dtype, out_dtype, groups=groups, dropout=dropout):
        return "the Mosaic GPU kernel, which takes the concatenation, cannot take these parts"
    block_n, channels_per_program, _ = _tuned(x_shape, groups, TUNED_FORWARD)
    return unsupported_reason(x_shape, dtype, groups=groups, block_n=block_n,
                              channels_per_program=channels_per_program, parts=parts)


def _seed_operands(settings: _Settings, seeds) -> tuple[jax.Array, ...]:
    return tuple(s.astype(jnp.int32) for s in seeds) if settings.dropout else ()


def forward(x: jax.Array | Parts, a: jax.Array, b: jax.Array, *, groups: int = NUM_GROUPS, eps: float = EPS,
            silu: bool = False, out_dtype: Dtype = jnp.float32, interpret: bool = False, dropout: float = 0.0,
            seeds: tuple[jax.Array, jax.Array] | None = None, shift: jax.Array | None = None,
            block_n: int | None = None, channels_per_program: int | None = None, num_warps: int | None = None,
            num_stages: int | None = None, tile_layout: str = "auto",
            kernel: str = "auto") -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, mean, rstd): y = [SiLU](x̂·a + b) for x (B, N, C), a and b both (B, C) or both (C,), as
    ``normalise_affine(x, a, b, groups, eps, silu, one_pass=True, out_dtype, dropout=dropout, seeds=seeds,
    shift=shift)`` computes it (the same dropout mask), in one Pallas Triton kernel; mean and rstd =
    (σ² + ε)^(−1/2) (B, C) float32 are each channel's group statistics, for :func:`backward`. With a
    ``shift`` c (C,), x + c is normalised (c added in float32 as x is read) and ``mean`` is μ − c, the
    group mean less c, so that :func:`backward` computes x̂ from x as it is.

    x may be a tuple of parts (B, N, C_k) standing for their concatenation along the channels (the UNet
    decoder's input and skip): each program reads its channels from the part that holds them (each part a
    whole number of programs' channels, else ValueError), so the concatenation is never written.

    ``block_n`` positions per tile, ``channels_per_program`` (a whole number of groups dividing C) and
    ``num_warps`` default to :func:`default_block_n`, :func:`default_channels_per_program` and
    :func:`default_num_warps`, except for the UNet's shapes in :data:`TUNED_FORWARD` when none of the three
    is given and the layout is not 'lanes'; ``num_stages`` goes to Triton (None: its default).
    ``tile_layout`` (:data:`TILE_LAYOUTS`): how a program holds its channels (:class:`SlabProgram`); 'auto'
    takes 'groups' for N ≤ GROUPED_MAX_POSITIONS where it applies (the small norms' statistics then need no
    moves between register layouts: 12–50% faster at 4×4 and 8×8, 3–9% at 16×16 on an H200), else
    'lanes'. ``interpret`` runs the kernel in Pallas's interpreter (any backend, slow). Under ``jax.jit``
    over a mesh with x split along its batch axis, each device computes its own images. Raises ValueError
    for what :func:`unsupported_reason` rejects. No derivative is defined (``jax.grad`` of it fails inside
    Pallas): :func:`jdiff.models.group_norm.normalise_affine` pairs it with :func:`backward`.

    ``kernel``: 'triton' (this module's kernel), 'mosaic' (:func:`jdiff.models.mosaic_group_norm.forward`, the
    TMA kernel for Hopper GPUs, which reads x once; no dropout, y in x's dtype) or 'auto': 'mosaic' where
    :func:`~jdiff.models.mosaic_group_norm.preferred` (it runs there and was measured faster, N ≥ 1024),
    unless a Triton setting or ``interpret`` is given, else 'triton'.
    """
    if kernel not in KERNELS:
        raise ValueError(f"pallas_group_norm.forward: kernel {kernel!r} is not one of {KERNELS}")
    whole = concatenation_shape("pallas_group_norm.forward", x)
    parts = channel_parts(x)
    part_channels = tuple(p.shape[-1] for p in parts) if len(parts) > 1 else None
    triton_settings = (block_n, channels_per_program, num_warps, num_stages) != (None,) * 4 or (
        tile_layout != "auto")
    if kernel == "mosaic" or (kernel == "auto" and not (interpret or triton_settings)
                              and mosaic_group_norm.preferred(whole.shape, whole.dtype, out_dtype,
                                                              groups=groups, dropout=dropout,
                                                              parts=part_channels)):
        if triton_settings or dropout:
            raise ValueError("pallas_group_norm.forward: kernel='mosaic' takes no Triton settings (block_n, "
                             "channels_per_program, num_warps, num_stages, tile_layout) and no dropout")
        return mosaic_group_norm.forward(x, a, b, groups=groups, eps=eps, silu=silu, out_dtype=out_dtype,
                                         shift=shift, interpret=interpret)
    settings = _checked_settings("pallas_group_norm.forward", x, (a, b), {}, groups=groups, eps=eps,
                                 silu=silu, out_dtype=out_dtype, interpret=interpret, dropout=dropout,
                                 seeds=seeds, block_n=block_n, channels_per_program=channels_per_program,
                                 num_warps=num_warps, num_stages=num_stages, tile_layout=tile_layout,
                                 tuned=TUNED_FORWARD if tile_layout != "lanes" else {})
    shifts = shift_operands("pallas_group_norm.forward", shift, whole.shape[-1])
    call = _forward_per_image(bool(settings.dropout), a.ndim == 1, bool(shifts), len(parts))
    return call(*parts, a.astype(jnp.float32), b.astype(jnp.float32), *shifts,
                *_seed_operands(settings, seeds), settings)


def backward(x: jax.Array, dy: jax.Array, a: jax.Array, b: jax.Array, mean: jax.Array, rstd: jax.Array, *,
             groups: int = NUM_GROUPS, silu: bool = False, interpret: bool = False, dropout: float = 0.0,
             seeds: tuple[jax.Array, jax.Array] | None = None, block_n: int | None = None,
             channels_per_program: int | None = None, num_warps: int | None = None,
             num_stages: int | None = None,
             tile_layout: str = "lanes") -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dx, da, db), the gradients of Σ dy·y for y = :func:`forward`'s output, from its mean and rstd (and
    its dropout mask, recomputed from the same seeds), in one kernel (group_norm.py's docstring has the
    equations): pass 1 sums da_bc = Σ_n dz·x̂ and db_bc = Σ_n dz, pass 2 writes dx = r·(a·dz − m1 − x̂·m2)
    in x's dtype; da, db are (B, C) float32, per image also when a and b are shared (C,). Settings as
    :func:`forward`'s, with the same defaults except for the UNet's shapes in :data:`TUNED_BACKWARD` when
    none of the three is given. ``tile_layout`` as the forward's, but 'lanes' by default: the backward's
    grouped form computes the same (tests) but was not timed on a GPU."""
    settings = _checked_settings("pallas_group_norm.backward", x, (a, b), dict(mean=mean, rstd=rstd),
                                 groups=groups, eps=0.0, silu=silu, out_dtype=x.dtype, interpret=interpret,
                                 dropout=dropout, seeds=seeds, block_n=block_n,
                                 channels_per_program=channels_per_program, num_warps=num_warps,
                                 num_stages=num_stages, tile_layout=tile_layout, tuned=TUNED_BACKWARD)
    if dy.shape != x.shape:
        raise ValueError(f"pallas_group_norm.backward: dy must have x's shape {x.shape}, got {dy.shape}")
    f32 = (v.astype(jnp.float32) for v in (a, b, mean, rstd))
    seed_operands = _seed_operands(settings, seeds)
    return _backward_per_image[bool(settings.dropout), a.ndim == 1](x, dy, *f32, *seed_operands, settings)
