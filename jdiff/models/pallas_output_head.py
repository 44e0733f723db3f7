"""The UNet's output head, ε = conv3×3(SiLU(GN(h)·γ + β), W) + c, for a few output channels: one Pallas
(Triton) kernel per image computes the GroupNorm, the SiLU and the product with the conv's nine taps, and
XLA adds the taps, shifted into place.

Why: the head runs in float32 (as guided-diffusion's fp16 mode keeps it), and in XLA it is three passes
over float32 data at 32×32: the GroupNorm kernel writes SiLU(GN(h)·γ + β) as float32 (B, H, W, C), 268 MB at
batch 512 and C = 128; :func:`jdiff.models.layers.conv3x3_by_taps` reads it into the (C, 9F) product of the
taps; and the shifted sum reads the taps in their (B, H, W, 9F) layout with 9F = 54 lanes per position:
369 µs of a sampling step on an H200, against 203 µs for this kernel and the sum (docs/benchmarks.md). Here
the normalised activations never leave registers: one program per image takes its statistics (pass 1, the
shifted sums of :mod:`jdiff.models.pallas_group_norm`), then normalises a tile of positions at a time,
multiplies it by the taps' (C, 9F) kernels and writes the taps position-minor, (B, 9F, H·W), so that the
shifted sum reads whole rows of an image. (Splitting an image's products between several programs, each
repeating the statistics pass, was slower: the pass costs more than the parallelism gains.)

Arithmetic: statistics, normalisation and SiLU in float32, the taps' product with the float32 operands
rounded to TF32 on the tensor cores (as XLA's float32 product of the unfused head, JAX's default precision on
NVIDIA GPUs), accumulated in float32; the taps summed in float32.

The kernel has no derivative: :func:`output_head` is a custom VJP whose backward is the VJP of the unfused
head in XLA (:func:`reference`), recomputed from the operands, so it is exact where it is differentiated;
the UNet uses the kernel only where nothing is (sampling).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jdiff.models.group_norm import EPS, NUM_GROUPS, normalise_affine
from jdiff.models.layers import conv3x3_by_taps, taps_matrix
from jdiff.models.pallas_group_norm import (SlabProgram, centred, group_statistics, is_power_of_2,
                                            next_power_of_2)
from jdiff.models.per_image import partitioned_per_image

BLOCK_N = 64  # positions per tile
NUM_WARPS = 4
MAX_TAPS = 128  # 9F: the (tile, 9F) float32 product stays in registers


def unsupported_reason(x_shape: tuple[int, ...], features: int, *, block_n: int = BLOCK_N) -> str | None:
    """Why the kernel cannot take h of this (B, H, W, C) shape with F output channels, or None if it can."""
    if len(x_shape) != 4:
        return f"h must be (B, H, W, C), got shape {x_shape}"
    _, height, width, channels = x_shape
    if channels % NUM_GROUPS:
        return f"C = {channels} is not divisible by {NUM_GROUPS} groups"
    if channels < 16:
        return f"C = {channels} is below the 16 channels of the smallest tensor-core product"
    if not 1 <= 9 * features <= MAX_TAPS:
        return f"9F = {9 * features} taps (F = {features} output channels) must be at most {MAX_TAPS}"
    if block_n < 16 or not is_power_of_2(block_n) or (height * width) % block_n:
        return (f"H·W = {height * width} positions must be a multiple of block_n = {block_n}, a power of two "
                f"from 16")
    return None


def shifted_tap_sum(taps: jax.Array, height: int, width: int) -> jax.Array:
    """y[b, i, j, f] = Σ_{u,v} T[b, (u, v, f), i + u − 1, j + v − 1], zero outside the image, for taps T
    (B, 9F, H·W) position-minor: the 3×3 convolution from the products of its nine taps (B, H, W, F)."""
    batch, nine_f, _ = taps.shape
    features = nine_f // 9
    taps = jnp.pad(taps.reshape(batch, 3, 3, features, height, width),
                   ((0, 0), (0, 0), (0, 0), (0, 0), (1, 1), (1, 1)))
    total = sum(taps[:, u, v, :, u:u + height, v:v + width] for u in range(3) for v in range(3))
    return total.transpose(0, 2, 3, 1)


class _Settings(NamedTuple):
    """The kernel's static settings (hashable: the static argument of the partitioned call)."""
    taps: int  # 9F
    block_n: int
    eps: float
    num_warps: int
    interpret: bool


def _kernel(x_ref, gamma_ref, beta_ref, w_ref, taps_ref, *, block_n: int, eps: float):
    n, channels = x_ref.shape[1:]
    program = SlabProgram.here(n, block_n, channels)  # all channels of one image
    shift = program.load_channels(x_ref, row=jnp.int32(0))
    taps_width = w_ref.shape[1]
    taps_here = jax.lax.broadcasted_iota(jnp.int32, (taps_width, 1), 0) < taps_ref.shape[1]

    def products(sums):
        mean, rstd = group_statistics(program, shift, sums, channels, channels // NUM_GROUPS, eps)
        scale = rstd * program.load_channels(gamma_ref)
        offset = program.load_channels(beta_ref) - mean * scale
        w = w_ref[...]

        def write(i, x):
            t = jnp.dot(jax.nn.silu(x * scale + offset), w)  # TF32, like XLA's float32 product
            plt.store(taps_ref.at[program.image, pl.ds(0, taps_width), program.rows(i)], t.T, mask=taps_here)
        return write

    program.two_passes(lambda i, policy: (program.load_tile(x_ref, i, policy),), centred(shift), 2, products)


def _call(x, gamma, beta, w, settings: _Settings):
    batch, n, _ = x.shape
    return pl.pallas_call(
        functools.partial(_kernel, block_n=settings.block_n, eps=settings.eps),
        out_shape=jax.ShapeDtypeStruct((batch, settings.taps, n), jnp.float32),
        grid=(1, batch),
        compiler_params=plt.CompilerParams(num_warps=settings.num_warps),
        interpret=settings.interpret,
        name="output_head",
    )(x, gamma, beta, w)


_per_image = partitioned_per_image(_call, "b n c, c, c, c t -> b k n")


def reference(x: jax.Array, gamma: jax.Array, beta: jax.Array, kernel: jax.Array, bias: jax.Array,
              eps: float = EPS) -> jax.Array:
    """The head in XLA, as the UNet computes it without the kernel (float32 GroupNorm and SiLU, the conv as
    :func:`jdiff.models.layers.conv3x3_by_taps`)."""
    batch, height, width, channels = x.shape
    y = normalise_affine(x.reshape(batch, height * width, channels), gamma.astype(jnp.float32),
                         beta.astype(jnp.float32), NUM_GROUPS, eps, True)
    return conv3x3_by_taps(y.reshape(x.shape), kernel.astype(jnp.float32)) + bias.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _head(x, gamma, beta, kernel, bias, settings: _Settings):
    batch, height, width, channels = x.shape
    features = kernel.shape[-1]
    lanes = next_power_of_2(channels)
    w = taps_matrix(kernel.astype(jnp.float32))
    # power-of-two blocks for Triton: zero rows for the masked lanes, zero columns past the 9F taps
    w = jnp.pad(w, ((0, lanes - channels), (0, max(16, next_power_of_2(9 * features)) - 9 * features)))
    taps = _per_image(x.reshape(batch, height * width, channels), gamma.astype(jnp.float32),
                      beta.astype(jnp.float32), w, settings)
    return shifted_tap_sum(taps, height, width) + bias.astype(jnp.float32)


def _head_forward(x, gamma, beta, kernel, bias, settings):
    return _head(x, gamma, beta, kernel, bias, settings), (x, gamma, beta, kernel, bias)


def _head_backward(settings, residuals, dy):
    _, vjp = jax.vjp(functools.partial(reference, eps=settings.eps), *residuals)
    return vjp(dy)


_head.defvjp(_head_forward, _head_backward)


def output_head(x: jax.Array, gamma: jax.Array, beta: jax.Array, kernel: jax.Array, bias: jax.Array, *,
                eps: float = EPS, block_n: int = BLOCK_N, num_warps: int = NUM_WARPS,
                interpret: bool = False) -> jax.Array:
    """ε = conv3×3(SiLU(GN(x)·γ + β), W) + c (B, H, W, F) float32 for x (B, H, W, C), the GroupNorm over
    :data:`~jdiff.models.group_norm.NUM_GROUPS` groups with γ, β (C,), W (3, 3, C, F) and c (F,): what
    :func:`reference` computes, with the normalisation, SiLU and the taps' product in one kernel per image and
    XLA's shifted sum of the taps. ``interpret`` runs the kernel in Pallas's interpreter (any backend, slow).
    Under ``jax.jit`` over a mesh with x split along its batch axis, each device computes its own images.
    Gradients are :func:`reference`'s. Raises ValueError for what :func:`unsupported_reason` rejects."""
    reason = unsupported_reason(x.shape, kernel.shape[-1], block_n=block_n)
    if reason:
        raise ValueError(f"pallas_output_head.output_head: {reason}")
    channels, features = x.shape[-1], kernel.shape[-1]
    if (kernel.shape[:3], gamma.shape, beta.shape, bias.shape) != ((3, 3, channels), (channels,), (channels,),
                                                                   (features,)):
        raise ValueError(f"pallas_output_head.output_head: for C = {channels} expected γ, β (C,), "
                         f"W (3, 3, C, F) and c (F,), got {gamma.shape}, {beta.shape}, {kernel.shape}, "
                         f"{bias.shape}")
    return _head(x, gamma, beta, kernel, bias, _Settings(9 * features, block_n, eps, num_warps, interpret))
