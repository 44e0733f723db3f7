"""GroupNorm fused with the scale-shift and SiLU that follow it in the ADM UNet, with a hand-written VJP.

For activations x (B, N, C) (N = H·W positions), 32 groups of C_g = C/32 channels:

    x̂ = (x − μ_bg) · r_bg,   r_bg = (σ²_bg + ε)^(−1/2),   z = x̂ · a_bc + b_bc,   y = SiLU(z) (or z)

with μ, σ² over the N·C_g values of group g of image b. GroupNorm's affine (γ, β) and ADM's
scale-shift norm (Dhariwal & Nichol 2021, eq. in §3: GN(h)·(1 + s) + t) fold into one per-image,
per-channel a = γ(1 + s), b = β(1 + s) + t. Without a scale-shift, a = γ and b = β are the same for
all images and may be passed as (C,) vectors: broadcast to (B, C), they cost two more kernels per norm at
every step of a sampling loop (in training the broadcasts are the cheaper form, see :class:`GroupNorm`).

Why not autodiff of the textbook formula: in bf16 training XLA then keeps float32 copies of the
normalised activations for the backward pass and carries float32 activation gradients between the
fusions, several full-size float32 tensors per norm. Here the forward saves only x (in its own dtype)
and the (B, G) statistics, and the backward is one reduction and one element-wise pass:

    dz = dy · SiLU'(z),   da_bc = Σ_n dz·x̂,   db_bc = Σ_n dz,
    dx = r_bg · (a_bc·dz − m1_bg − x̂ · m2_bg),   m1 = Σ_{c∈g} a·db / (N·C_g),   m2 = Σ_{c∈g} a·da / (N·C_g),

which is the exact gradient (the two group means come from the per-channel sums, so no second pass
over the activations is needed). Statistics and arithmetic are float32 whatever the input dtype; the
output and the input gradient are cast to the requested dtypes.

Dropout of the output (ADM's ResBlock drops right after its second GroupNorm + SiLU) can be fused in:
y = SiLU(z)·k/p with a keep mask k, p = P(keep). Element (b, n, c) is kept when the top 24 bits of a
counter-based hash of its position n and two 32-bit seeds of its image and channel (s0, s1)_bc are at
least round(rate·2²⁴) (:func:`dropout_keep`; p counts that rounding, so E[y] is exact). The mask is a pure
function of the seeds, so the backward recomputes it instead of reading a stored one, and the kernels
apply it in the passes they make anyway: XLA's dropout in training was two extra element-wise passes per
ResBlock (mask generation with threefry, then the select), 1 ms of a 27 ms step on an H200; fused, the
step is 1.7% faster with the kernels (the hash costs them some of it back). The XLA path
computes the same mask, so both implementations drop the same elements. The seeds come from the
'dropout' RNG stream (:func:`dropout_seeds`): keys from ``fold_in(seed, step)`` make resumed runs exact.

``implementation='pallas'`` computes the forward and the backward above with the two Triton kernels of
:mod:`jdiff.models.pallas_group_norm` (one-pass shifted statistics, whatever ``one_pass`` says; its
backward reads the per-channel statistics its forward saved). On the UNet's shapes (H200) the forward
is 1.1–1.6× faster than XLA's reduction and apply passes, and forward plus backward 0.84–1.6×
(docs/benchmarks.md); a bf16 train step is 6.7% faster with them, 100-step sampling 7.8%. On Hopper GPUs
with jax ≥ 0.11 the forward of the 32×32 norms (N ≥ 1024, no dropout, output in the input's dtype) is
instead the TMA kernel of :mod:`jdiff.models.mosaic_group_norm`, which reads each activation once (12–30%
less time per norm; sampling 2.4%, training 2.5% faster); the Triton backward reads its statistics alike.
'auto' (the default) is 'pallas' where it runs, see :func:`norm_implementation`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdiff.models.platform import nvidia_sm80_or_newer

Dtype = Any

NUM_GROUPS = 32
EPS = 1e-5  # torch.nn.GroupNorm's default, which guided-diffusion's GroupNorm32 keeps
IMPLEMENTATIONS = ("auto", "xla", "pallas")


def norm_implementation(requested: str) -> str:
    """Who computes the GroupNorms, forward and backward: 'xla' or 'pallas' (jdiff's Pallas kernels: Triton,
    and for some forwards on Hopper GPUs Mosaic GPU, see the module docstring) as requested; 'auto' is
    'pallas' on NVIDIA GPUs of compute capability 8.0 or newer and 'xla' elsewhere.
    The kernels made 100-step sampling 7.8% and a bf16 train step 6.7% faster on an H200
    (docs/benchmarks.md); over several devices each runs them on its own share of the batch (their
    partitioning rule).

    'pallas' is refused (ValueError) elsewhere: the Triton kernel runs only on such GPUs."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"GroupNorm implementation {requested!r} is not one of {IMPLEMENTATIONS}")
    kernel_runs = nvidia_sm80_or_newer()
    if requested == "auto":
        return "pallas" if kernel_runs else "xla"
    if requested == "pallas" and not kernel_runs:
        raise ValueError(
            "model.norm_implementation='pallas' needs NVIDIA GPUs of compute capability 8.0 or newer (found "
            f"{jax.device_count()} {jax.default_backend()} device(s)): the Triton kernel runs only there; "
            "use 'xla' or 'auto'")
    return requested


_HASH_BITS = 24  # of the hash compared with the threshold: int32 compares, probabilities in steps of 2⁻²⁴


def dropout_threshold(rate: float) -> int:
    """round(rate·2²⁴): elements whose 24-bit hash is below it are dropped."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate} must be in [0, 1)")
    return round(rate * 2**_HASH_BITS)


def dropout_keep_scale(rate: float) -> float:
    """1/p, p = 1 − round(rate·2²⁴)/2²⁴ the exact keep probability: kept elements are scaled by it."""
    return 2**_HASH_BITS / (2**_HASH_BITS - dropout_threshold(rate))


def _mix(h: jax.Array) -> jax.Array:
    """A bijective avalanche of 32-bit words (Wellons' "lowbias32" constants), in int32: multiplication
    wraps as for unsigned words, the shifts are logical. Shared by XLA and the Triton kernels."""
    for shift, factor in ((16, 0x21F0AAAD), (15, 0x735A2D97)):
        h = (h ^ jax.lax.shift_right_logical(h, jnp.int32(shift))) * jnp.int32(factor)
    return h ^ jax.lax.shift_right_logical(h, jnp.int32(15))


def dropout_keep(position: jax.Array, seed0: jax.Array, seed1: jax.Array, threshold: int) -> jax.Array:
    """Whether the element at ``position`` (its index n over H·W) of a channel with seeds (seed0, seed1) is
    kept: mix((n ⊕ s0) + s1) >> 8 ≥ threshold, element-wise with broadcasting (int32 operands). For one
    channel n ↦ (n ⊕ s0) + s1 is a bijection and ``_mix`` another, so its N positions get N distinct
    well-mixed words; two channels' inputs coincide only where their random seeds make them (for N ≤ 1024
    a chance of ~2·10⁻⁴ per pair of channels, at scattered positions)."""
    h = _mix((position.astype(jnp.int32) ^ seed0) + seed1)
    return jax.lax.shift_right_logical(h, jnp.int32(32 - _HASH_BITS)) >= threshold


def dropout_seeds(key: jax.Array, batch: int, channels: int) -> tuple[jax.Array, jax.Array]:
    """Two independent int32 seeds per image and channel, (B, C) each, from a JAX key."""
    bits = jax.lax.bitcast_convert_type(jax.random.bits(key, (2, batch, channels), jnp.uint32), jnp.int32)
    return bits[0], bits[1]


def _dropped(y: jax.Array, seeds: tuple[jax.Array, jax.Array], dropout: float) -> jax.Array:
    """y (B, N, C) float32 with dropout's mask and 1/p applied (the XLA path's)."""
    s0, s1 = (s[:, None, :] for s in seeds)
    keep = dropout_keep(jax.lax.broadcasted_iota(jnp.int32, (1, y.shape[1], 1), 1), s0, s1,
                        dropout_threshold(dropout))
    return jnp.where(keep, y * dropout_keep_scale(dropout), 0.0)


def _group_sum(per_channel: jax.Array, groups: int) -> jax.Array:
    """(B, C) → (B, G): the sum over each group's channels."""
    batch, channels = per_channel.shape
    return per_channel.reshape(batch, groups, channels // groups).sum(-1)


def _per_channel(per_group: jax.Array, channels: int) -> jax.Array:
    """(B, G) → (B, 1, C): each group's value repeated over its channels, broadcastable over positions."""
    return jnp.repeat(per_group, channels // per_group.shape[1], axis=1)[:, None, :]


def _group_stats(xf: jax.Array, groups: int, one_pass: bool) -> tuple[jax.Array, jax.Array]:
    """Mean and variance (B, G) of float32 x (B, N, C) over each group's positions and channels.

    Two-pass E[(x − μ)²] as PyTorch by default. ``one_pass`` reads x once: per channel it sums
    x − K and (x − K)² with the shift K = the channel's first value (so the sums do not cancel when the
    mean is large against the spread), then combines the channels of a group exactly (Chan et al.'s
    pairwise update: M2_g = Σ_c M2_c + N·Σ_c (μ_c − μ_g)²).
    """
    batch, n, channels = xf.shape
    per_group = channels // groups
    if one_pass:
        shift = xf[:, 0, :]
        d = xf - shift[:, None, :]
        s1, s2 = d.sum(1), jnp.square(d).sum(1)
        mean_c = (shift + s1 / n).reshape(batch, groups, per_group)
        m2_c = jnp.maximum(s2 - jnp.square(s1) / n, 0.0)
        mean = mean_c.mean(-1)
        m2 = _group_sum(m2_c, groups) + n * jnp.square(mean_c - mean[..., None]).sum(-1)
        return mean, m2 / (n * per_group)
    mean = _group_sum(xf.sum(1), groups) / (n * per_group)
    centred = xf - _per_channel(mean, channels)
    return mean, _group_sum(jnp.square(centred).sum(1), groups) / (n * per_group)


def _standardise(x: jax.Array, mean: jax.Array, rstd: jax.Array) -> jax.Array:
    """x̂ = (x − μ_bg)·r_bg in float32, for x (B, N, C) and (B, G) statistics."""
    channels = x.shape[-1]
    return (x.astype(jnp.float32) - _per_channel(mean, channels)) * _per_channel(rstd, channels)


def _over_positions(per_channel: jax.Array) -> jax.Array:
    """(B, C) → (B, 1, C) and (C,) → (1, C): a, b broadcastable against (B, N, C)."""
    return per_channel[..., None, :]


def _shifted(x: jax.Array, shift: jax.Array | None) -> jax.Array:
    """x + c in float32 (x itself without a shift)."""
    return x.astype(jnp.float32) if shift is None else x.astype(jnp.float32) + shift.astype(jnp.float32)


def _normalise(x, a, b, groups, eps, silu, one_pass, out_dtype, dropout, seeds):
    mean, var = _group_stats(x.astype(jnp.float32), groups, one_pass)
    rstd = jax.lax.rsqrt(var + eps)
    z = _standardise(x, mean, rstd) * _over_positions(a) + _over_positions(b)
    y = jax.nn.silu(z) if silu else z
    if dropout:
        y = _dropped(y, seeds, dropout)
    return y.astype(out_dtype), (mean, rstd)


_KERNELS = ("pallas", "pallas_interpret")


def _check_implementation(implementation: str) -> None:
    if implementation != "xla" and implementation not in _KERNELS:
        raise ValueError(f"normalise_affine: implementation {implementation!r} is not 'xla', 'pallas' or "
                         "'pallas_interpret'")


def _kernel_settings(groups, silu, implementation, dropout, seeds) -> dict[str, Any]:
    return dict(groups=groups, silu=silu, interpret=implementation == "pallas_interpret", dropout=dropout,
                seeds=seeds)


def check_affine(caller: str, a: jax.Array, b: jax.Array, batch: int, channels: int) -> None:
    """a and b must both be (C,) (shared by the images) or both (B, C) (per image)."""
    if a.shape != b.shape or a.shape not in ((channels,), (batch, channels)):
        raise ValueError(f"{caller}: a and b must both be (C,) = {(channels,)} or both (B, C) = "
                         f"{(batch, channels)}, got {a.shape} and {b.shape}")


# The kernels' Shardy rules (jdiff.models.per_image): b the images, split over a mesh; n, c kept whole.
AFFINE_RULE = {False: ", b c, b c", True: ", c, c"}  # a, b per image, or shared (C,)
SEEDS_RULE = ", b c, b c"  # dropout's two seeds per image and channel
OUTPUTS_RULE = " -> b n c, b c, b c"  # y (or dx), and two per-channel (B, C) arrays


def forward_sharding_rule(shared: bool, shifted: bool, seeded: bool = False, parts: int = 1) -> str:
    """The rule of a forward kernel's call (x, a, b[, c][, seed0, seed1]) → (y, mean, rstd), with x given as
    ``parts`` arrays whose channel concatenation it stands for (their channel factors p0, p1, …)."""
    inputs = "b n c" if parts == 1 else ", ".join(f"b n p{k}" for k in range(parts))
    return inputs + AFFINE_RULE[shared] + ", c" * shifted + SEEDS_RULE * seeded + OUTPUTS_RULE


Parts = tuple  # of arrays (B, N, C_k) that stand for their concatenation along the channels


def channel_parts(x: jax.Array | Parts) -> tuple[jax.Array, ...]:
    """x as a tuple of parts: x itself alone, or the arrays of a tuple or list."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def concatenation_shape(caller: str, x: jax.Array | Parts) -> jax.ShapeDtypeStruct:
    """The shape and dtype of the channel concatenation of ``x``'s parts (:func:`channel_parts`), which must
    agree in every axis but the last and in dtype (ValueError otherwise)."""
    parts = channel_parts(x)
    if not parts:
        raise ValueError(f"{caller}: x has no parts")
    first = parts[0]
    for part in parts[1:]:
        if part.shape[:-1] != first.shape[:-1] or part.dtype != first.dtype:
            raise ValueError(f"{caller}: the parts of a channel concatenation must agree in every axis but "
                             f"the last and in dtype, got {[(p.shape, str(p.dtype)) for p in parts]}")
    return jax.ShapeDtypeStruct((*first.shape[:-1], sum(p.shape[-1] for p in parts)), first.dtype)


def whole_blocks_reason(parts: tuple[int, ...], channels: int, block: int, blocks: str) -> str | None:
    """Why parts of these channel counts cannot stand for x of C = ``channels``, read by a kernel in blocks of
    ``block`` channels (``blocks`` names them in the message), or None: they must add up to C and each hold
    a whole number of blocks, so that no block straddles two parts."""
    if sum(parts) == channels and not any(c % block for c in parts):
        return None
    return (f"parts of {list(parts)} channels must add up to C = {channels} and each be a whole number of "
            f"{blocks}")


def shift_operands(caller: str, shift: jax.Array | None, channels: int) -> tuple[jax.Array, ...]:
    """The kernels' optional shift operand: () without a shift, else (c,) as float32; raises ValueError unless
    c is (C,)."""
    if shift is None:
        return ()
    if shift.shape != (channels,):
        raise ValueError(f"{caller}: shift must be (C,) = {(channels,)}, got {shift.shape}")
    return (shift.astype(jnp.float32),)


def check_dropout(caller: str, dropout: float, seeds, batch: int, channels: int) -> None:
    """Raises ValueError unless ``dropout`` is a rate in [0, 1) and, when it is > 0, ``seeds`` are the
    pair (seed0, seed1) of (B, C) arrays that :func:`dropout_seeds` gives (XLA's path and the kernels')."""
    dropout_threshold(dropout)
    if not dropout:
        return
    if seeds is None or len(seeds) != 2:
        raise ValueError(f"{caller}: dropout > 0 needs seeds=(seed0, seed1), (B, C) int32 arrays of "
                         "dropout_seeds")
    for name, seed in zip(("seed0", "seed1"), seeds):
        if seed.shape != (batch, channels):
            raise ValueError(f"{caller}: {name} must be (B, C) = {(batch, channels)}, got {seed.shape}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9))
def normalise_affine(x: jax.Array, a: jax.Array, b: jax.Array, groups: int = NUM_GROUPS, eps: float = EPS,
                     silu: bool = False, one_pass: bool = False, out_dtype: Dtype = jnp.float32,
                     implementation: str = "xla", dropout: float = 0.0,
                     seeds: tuple[jax.Array, jax.Array] | None = None,
                     shift: jax.Array | None = None) -> jax.Array:
    """y = [SiLU](x̂·a + b) for x (B, N, C), a and b float32, both (B, C) or both (C,) for all images (see
    the module docstring), with
    ``dropout`` > 0 then dropped by the mask of ``seeds`` (:func:`dropout_seeds`) and scaled by 1/p.
    x may be a tuple of parts (B, N, C_k) standing for their concatenation along the channels (the UNet
    decoder's input and skip): the kernels read the parts where they can
    (:func:`jdiff.models.pallas_group_norm.forward`), XLA and the backward concatenate them; the gradient
    comes as the same parts.
    With ``shift`` c (C,), the norm is of x + c, c added in float32 as x is read: a per-channel bias of
    x's producer that would otherwise be a pass over x of its own (a transposed convolution's, which cuDNN
    does not add); its gradient is Σ_{b,n} dx.

    ``implementation``: 'xla', or 'pallas' / 'pallas_interpret': the kernels of
    :mod:`jdiff.models.pallas_group_norm` for the forward (there, its ``kernel='auto'`` choice) and the
    backward (or the Triton kernels in Pallas's interpreter on any backend, for tests). Both drop the same
    elements."""
    return _forward(x, a, b, groups, eps, silu, one_pass, out_dtype, implementation, dropout, seeds,
                    shift)[0]


def _forward(x, a, b, groups, eps, silu, one_pass, out_dtype, implementation, dropout, seeds, shift):
    _check_implementation(implementation)
    whole = concatenation_shape("normalise_affine", x)
    check_affine("normalise_affine", a, b, whole.shape[0], whole.shape[-1])
    check_dropout("normalise_affine", dropout, seeds, whole.shape[0], whole.shape[-1])
    shift_operands("normalise_affine", shift, whole.shape[-1])
    if implementation == "xla":
        y, (mean, rstd) = _normalise(_shifted(_concatenated(x), shift), a, b, groups, eps, silu, one_pass,
                                     out_dtype, dropout, seeds)
    else:
        from jdiff.models import pallas_group_norm  # Pallas only where it is asked for

        # mean and rstd come per channel (B, C), as the backward kernel reads them; with a shift c the mean
        # is μ − c, so that x̂ = (x − mean)·rstd for x as it is
        settings = _kernel_settings(groups, silu, implementation, dropout, seeds)
        y, mean, rstd = pallas_group_norm.forward(x, a, b, eps=eps, out_dtype=out_dtype, shift=shift,
                                                  **settings)
    return y, (x, a, b, mean, rstd, seeds, shift)


def _backward(groups, eps, silu, one_pass, out_dtype, implementation, dropout, residuals, dy):
    parts, a, b, mean, rstd, seeds, shift = residuals
    x = _concatenated(parts)
    if implementation != "xla":
        from jdiff.models import pallas_group_norm

        settings = _kernel_settings(groups, silu, implementation, dropout, seeds)
        dx, da, db = pallas_group_norm.backward(x, dy, a, b, mean, rstd, **settings)
        return _split_like(dx, parts), *_affine_gradients(a, da, db), None, _shift_gradient(dx, shift)
    _, n, channels = x.shape
    xhat = _standardise(_shifted(x, shift), mean, rstd)
    dz = dy.astype(jnp.float32)
    if dropout:
        dz = _dropped(dz, seeds, dropout)
    if silu:
        z = xhat * _over_positions(a) + _over_positions(b)
        sig = jax.nn.sigmoid(z)
        dz = dz * sig * (1.0 + z * (1.0 - sig))
    da = jnp.sum(dz * xhat, axis=1)
    db = jnp.sum(dz, axis=1)

    def group_mean(per_channel):  # (B, C) → (B, 1, C), the group's mean broadcast to its channels
        return _per_channel(_group_sum(per_channel, groups) / (n * (channels // groups)), channels)

    dx = _per_channel(rstd, channels) * (dz * _over_positions(a) - group_mean(a * db)
                                         - xhat * group_mean(a * da))
    dx = dx.astype(x.dtype)
    return (_split_like(dx, parts), *_affine_gradients(a, da, db), None,  # None: the integer seeds
            _shift_gradient(dx, shift))


def _concatenated(x: jax.Array | Parts) -> jax.Array:
    parts = channel_parts(x)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _split_like(dx: jax.Array, x: jax.Array | Parts) -> jax.Array | Parts:
    """dx (…, C) cut into x's parts along the channels (dx itself when x is one array)."""
    if not isinstance(x, (tuple, list)):
        return dx
    bounds = np.cumsum([p.shape[-1] for p in x])[:-1]
    return type(x)(jnp.split(dx, bounds, axis=-1))


def _shift_gradient(dx: jax.Array, shift: jax.Array | None) -> jax.Array | None:
    """Σ_{b,n} dx (C,) in the shift's dtype, the gradient of the shift c added to every x_bn."""
    return None if shift is None else jnp.sum(dx.astype(jnp.float32), axis=(0, 1)).astype(shift.dtype)


def _affine_gradients(a: jax.Array, da: jax.Array, db: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The per-image gradients (B, C) of a and b, summed over the images when a and b are shared (C,)."""
    return (da, db) if a.ndim == 2 else (da.sum(0), db.sum(0))


normalise_affine.defvjp(_forward, _backward)


class GroupNorm(nn.Module):
    """GroupNorm over 32 channel groups and all non-batch axes, with parameters ``scale`` and ``bias``
    (C,) as :class:`flax.linen.GroupNorm` (so checkpoints and the converter see the same tree).

    ``__call__(x, scale_shift=(s, t), silu=True, out_dtype=..., dropout=rate)`` (x an array or a tuple of
    parts standing for their channel concatenation, as :func:`normalise_affine` takes it) returns
    [SiLU](GN(x)·(1 + s) + t) in ``out_dtype``, with s, t of shape (B, C), and with ``dropout`` > 0 that
    output dropped at that rate (seeds from the 'dropout' RNG stream; pass 0 outside training).
    ``input_bias`` c (C,) normalises x + c instead, c added as the norm reads x (:func:`normalise_affine`'s
    ``shift``), for a producer of x that leaves its bias out.
    Without a scale-shift the norm hands its (C,) scale and bias to :func:`normalise_affine` as they are,
    unless ``broadcast_affine``: then as (B, C) broadcasts. Pass ``broadcast_affine=True`` in training:
    there the parameters are slices of the flat train state, and XLA copies every slice that a kernel
    takes as an operand into a buffer of its own, one small copy per leaf, where broadcasts of several
    leaves fuse into one kernel (a train step 0.7% slower with the vectors, on an H200; sampling 0.8%
    faster with them).
    ``implementation`` is :func:`normalise_affine`'s (resolved: not 'auto').
    """
    one_pass: bool = False
    implementation: str = "xla"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | Parts, *, scale_shift: tuple[jax.Array, jax.Array] | None = None,
                 silu: bool = False, out_dtype: Dtype = jnp.float32, dropout: float = 0.0,
                 broadcast_affine: bool = False, input_bias: jax.Array | None = None) -> jax.Array:
        parts = channel_parts(x)
        whole = concatenation_shape("GroupNorm", parts)
        channels = whole.shape[-1]
        if channels % NUM_GROUPS:
            raise ValueError(f"GroupNorm needs channels divisible by {NUM_GROUPS}, got {channels}: choose "
                             f"model_channels and channel_mult so that every level's width is "
                             f"a multiple of 32")
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        a, b = scale.astype(jnp.float32), bias.astype(jnp.float32)
        if scale_shift is not None:
            s, t = (v.astype(jnp.float32) for v in scale_shift)
            a, b = a * (1.0 + s), b * (1.0 + s) + t
        batch = whole.shape[0]
        if broadcast_affine:
            a, b = jnp.broadcast_to(a, (batch, channels)), jnp.broadcast_to(b, (batch, channels))
        seeds = dropout_seeds(self.make_rng("dropout"), batch, channels) if dropout else None
        flat = tuple(p.reshape(batch, -1, p.shape[-1]) for p in parts)
        y = normalise_affine(flat[0] if len(flat) == 1 else flat, a, b, NUM_GROUPS, EPS, silu, self.one_pass,
                             jnp.dtype(out_dtype), self.implementation, dropout, seeds, input_bias)
        return y.reshape(whole.shape)
