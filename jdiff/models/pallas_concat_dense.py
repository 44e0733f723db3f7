"""y = [x₁ | x₂ | …]·W + c, a product over the channel axis of the concatenation of parts x_k (B, N, C_k),
without writing the concatenation: Σ_k x_k·W_k + c, W_k the rows of W (C, F) that meet part k, in one Pallas
(Triton) kernel. In the UNet it is the 1×1 skip convolution of the decoder's ResBlocks, whose input is the
concatenation of the decoder's activations and the encoder's skip.

Why: XLA writes that concatenation (B, H, W, C_h + C_s) for its two readers, the ResBlock's first GroupNorm
and this product, and reads it back: 1.1 ms of a 21 ms sampling step at batch 512 on an H200, at ~90% of
DRAM bandwidth (docs/benchmarks.md). The GroupNorm kernels read the parts themselves
(:func:`jdiff.models.pallas_group_norm.forward`); this kernel is the product's side. cuBLAS cannot read its
left operand from two arrays, and XLA's Triton products fuse a concatenation only along a non-contracting
axis (here the channels are contracted).

Each program computes a (block_m, block_n) tile of y for rows block_m of the (B·N) positions: for each part,
for each block_k of its channels, the product of the (block_m, block_k) tile of x_k with the matching
(block_k, block_n) rows of W, accumulated in float32 on the tensor cores (bfloat16 operands as they are; a
float32 product runs in TF32, as XLA's does by default on NVIDIA GPUs), then c added in float32 and y written
in x's dtype, one rounding (XLA rounds the product, then adds c and rounds again). The grid is (F / block_n,
B·N / block_m), F blocks fastest, so the programs that read one tile of x run together and the second reads
it from L2.

The product has no derivative of its own: :func:`concat_dense` is a custom VJP whose backward is the VJP of
:func:`reference` (XLA's concatenation and product), exact where it is differentiated; the UNet uses the
kernel only where nothing is (sampling).

``implementation='mosaic'`` computes the same product with :mod:`jdiff.models.mosaic_concat_dense`'s Mosaic
GPU kernel (TMA and wgmma, Hopper GPUs), built because this kernel's products take ~1.4× XLA's time. On an
H200 it was faster at 16×16 and slower at 32×32 (docs/benchmarks.md, twenty-second session), so 'triton' stays
this function's default and the UNet's ``ConcatConv1x1`` picks per product
(:func:`jdiff.models.mosaic_concat_dense.preferred`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jdiff.models.pallas_group_norm import is_power_of_2, largest_power_of_2_dividing
from jdiff.models.per_image import partitioned_per_image

Dtype = Any

# Defaults from sweeps on an H200 at the UNet's decoder shapes (docs/benchmarks.md, "The decoder without its
# concatenations").
BLOCK_M = 128  # positions per tile (fewer where B·N has no such factor)
BLOCK_N = 256  # output channels per tile (fewer where F has no such factor)
BLOCK_K = 128  # input channels per step of the product (fewer where a part has no such factor)
NUM_WARPS = 8
IMPLEMENTATIONS = ("triton", "mosaic")


class _Settings(NamedTuple):
    """The kernel's static settings (hashable: the static argument of the partitioned call)."""
    parts: tuple[int, ...]  # the channel count of each part
    block_m: int | None  # None: default_block_m of the device's B·N
    block_n: int
    block_k: int
    num_warps: int
    interpret: bool


def default_block_m(rows: int) -> int:
    """Positions per tile: the largest power of two ≤ BLOCK_M that divides ``rows`` (the B·N positions)."""
    return largest_power_of_2_dividing([rows], BLOCK_M)


def default_block_n(features: int) -> int:
    """Output channels per tile: the largest power of two ≤ BLOCK_N that divides F."""
    return largest_power_of_2_dividing([features], BLOCK_N)


def default_block_k(part_channels: Sequence[int]) -> int:
    """Channels per step: the largest power of two ≤ BLOCK_K that divides every part's channels."""
    return largest_power_of_2_dividing(part_channels, BLOCK_K)


def unsupported_reason(part_channels: Sequence[int], features: int, rows: int, *, block_m: int | None = None,
                       block_n: int | None = None, block_k: int | None = None) -> str | None:
    """Why the kernel cannot take parts of these channel counts, F output channels and ``rows`` = B·N
    positions with these settings (None: the defaults), or None if it can."""
    block_m = default_block_m(rows) if block_m is None else block_m
    block_n = default_block_n(features) if block_n is None else block_n
    block_k = default_block_k(part_channels) if block_k is None else block_k
    for name, size in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if size < 16 or not is_power_of_2(size):
            return f"{name} = {size} must be a power of two from 16 (Triton's tensor-core products)"
    return tiling_reason(part_channels, features, rows, block_m, block_n, block_k)


def tiling_reason(part_channels: Sequence[int], features: int, rows: int, block_m: int, block_n: int,
                  block_k: int) -> str | None:
    """Why (block_m, block_n) tiles of y and block_k steps over each part's channels do not cover the
    product (both kernels have no masks), or None if they do."""
    if rows % block_m:
        return f"B·N = {rows} positions must be a multiple of block_m = {block_m}"
    if features % block_n:
        return f"F = {features} output channels must be a multiple of block_n = {block_n}"
    if not part_channels or any(c % block_k for c in part_channels):
        return f"every part's channels ({list(part_channels)}) must be a multiple of block_k = {block_k}"
    return None


def _kernel(*refs, parts: tuple[int, ...], block_m: int, block_n: int, block_k: int):
    x_refs, (w_ref, c_ref, y_ref) = refs[:len(parts)], refs[len(parts):]
    cols = pl.ds(pl.program_id(0) * block_n, block_n)
    rows = pl.ds(pl.program_id(1) * block_m, block_m)
    acc = jnp.zeros((block_m, block_n), jnp.float32)
    first = 0
    for x_ref, channels in zip(x_refs, parts):
        for k in range(0, channels, block_k):
            x = plt.load(x_ref.at[rows, pl.ds(k, block_k)])
            w = plt.load(w_ref.at[pl.ds(first + k, block_k), cols])
            acc += jnp.dot(x, w, preferred_element_type=jnp.float32)
        first += channels
    y = acc + plt.load(c_ref.at[cols]).astype(jnp.float32)[None, :]
    plt.store(y_ref.at[rows, cols], y.astype(y_ref.dtype))


def _call(*operands_and_settings):
    """(x_1, …, x_K, W, c, settings) → y (B, N, F) on this device's images."""
    *operands, settings = operands_and_settings
    parts, (w, c) = operands[:-2], operands[-2:]
    batch, n, _ = parts[0].shape
    features = w.shape[1]
    rows = batch * n
    block_m = default_block_m(rows) if settings.block_m is None else settings.block_m
    reason = unsupported_reason(settings.parts, features, rows, block_m=block_m, block_n=settings.block_n,
                                block_k=settings.block_k)
    if reason:  # a device's share of the batch
        raise ValueError(f"pallas_concat_dense.concat_dense on {batch} images: {reason}")
    y = pl.pallas_call(
        functools.partial(_kernel, parts=settings.parts, block_m=block_m, block_n=settings.block_n,
                          block_k=settings.block_k),
        out_shape=jax.ShapeDtypeStruct((rows, features), parts[0].dtype),
        grid=(features // settings.block_n, rows // block_m),
        compiler_params=plt.CompilerParams(num_warps=settings.num_warps),
        interpret=settings.interpret,
        name="concat_dense",
    )(*(x.reshape(rows, x.shape[-1]) for x in parts), w, c)
    return y.reshape(batch, n, features)


@functools.cache
def _per_image(parts: int) -> Any:
    return partitioned_per_image(_call, sharding_rule(parts))


def sharding_rule(parts: int) -> str:
    """The per-image partitioning rule of both kernels' calls (x_1, …, x_K, W, c) → y: the parts and y split
    with the images, W and c whole."""
    return ", ".join([f"b n p{k}" for k in range(parts)] + ["c f", "f"]) + " -> b n f"


def reference(parts: Sequence[jax.Array], kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """[x₁ | x₂ | …]·W + c in XLA: the concatenation, the product (in x's dtype) and the bias."""
    x = jnp.concatenate(parts, axis=-1)
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


def _triton(parts, kernel, bias, settings: _Settings):
    return _per_image(len(parts))(*parts, kernel.astype(parts[0].dtype), bias, settings)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _concat_dense(parts, kernel, bias, product):
    return product(parts, kernel, bias)


def _forward(parts, kernel, bias, product):
    return _concat_dense(parts, kernel, bias, product), (parts, kernel, bias)


def _backward(product, residuals, dy):
    _, vjp = jax.vjp(reference, *residuals)
    return vjp(dy)


_concat_dense.defvjp(_forward, _backward)


def concat_dense(parts: Sequence[jax.Array], kernel: jax.Array, bias: jax.Array, *,
                 block_m: int | None = None, block_n: int | None = None, block_k: int | None = None,
                 num_warps: int = NUM_WARPS, interpret: Any = False,
                 implementation: str = "triton") -> jax.Array:
    """y = [x₁ | x₂ | …]·W + c (B, N, F) in x's dtype for parts x_k (B, N, C_k) of one dtype, W (ΣC_k, F)
    (cast to x's dtype) and c (F,): what :func:`reference` computes, without the concatenation, in one kernel
    that rounds once (after adding c in float32; XLA rounds the product, then the sum). ``block_m``
    (default: :func:`default_block_m` of each device's B·N), ``block_n`` (default: :func:`default_block_n`),
    ``block_k`` (default: :func:`default_block_k`) and ``num_warps`` tile the product.
    ``interpret`` runs it in Pallas's interpreter (any backend, slow). Under ``jax.jit`` over a mesh with the
    parts split along their batch axis, each device computes its own images (block_m must divide each
    device's B·N). Gradients are :func:`reference`'s. Raises ValueError for what :func:`unsupported_reason`
    rejects and for operands that do not fit.

    ``implementation='mosaic'``: :func:`jdiff.models.mosaic_concat_dense.concat_dense` computes it (16-bit
    parts, its own tiles and refusals; ``interpret`` runs it in Mosaic GPU's interpreter), with the same
    gradients; it takes none of the Triton tiles above."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"pallas_concat_dense.concat_dense: implementation {implementation!r} is not one of "
                         f"{IMPLEMENTATIONS}")
    parts = tuple(parts)
    if not parts or any(p.ndim != 3 or p.shape[:2] != parts[0].shape[:2] or p.dtype != parts[0].dtype
                        for p in parts):
        raise ValueError(f"pallas_concat_dense.concat_dense: parts must be (B, N, C_k) arrays of one B, N "
                         f"and dtype, got {[(p.shape, str(p.dtype)) for p in parts]}")
    channels = tuple(p.shape[-1] for p in parts)
    if kernel.ndim != 2 or kernel.shape[0] != sum(channels) or bias.shape != kernel.shape[1:]:
        raise ValueError(f"pallas_concat_dense.concat_dense: for parts of {list(channels)} channels expected "
                         f"W ({sum(channels)}, F) and c (F,), got {kernel.shape} and {bias.shape}")
    if implementation == "mosaic":
        if (block_m, block_n, block_k, num_warps) != (None, None, None, NUM_WARPS):
            raise ValueError("pallas_concat_dense.concat_dense: implementation='mosaic' takes none of the "
                             "Triton tiles (block_m, block_n, block_k, num_warps); "
                             "jdiff.models.mosaic_concat_dense.concat_dense takes its own")
        from jdiff.models import mosaic_concat_dense  # it imports this module (tiling_reason)
        product = functools.partial(mosaic_concat_dense.concat_dense, interpret=interpret)
        return _concat_dense(parts, kernel, bias, product)
    batch, n, _ = parts[0].shape
    features = kernel.shape[1]
    block_n = default_block_n(features) if block_n is None else block_n
    block_k = default_block_k(channels) if block_k is None else block_k
    reason = unsupported_reason(channels, features, batch * n, block_m=block_m, block_n=block_n,
                                block_k=block_k)
    if reason:
        raise ValueError(f"pallas_concat_dense.concat_dense: {reason}")
    settings = _Settings(channels, block_m, block_n, block_k, num_warps, interpret)
    return _concat_dense(parts, kernel, bias, functools.partial(_triton, settings=settings))
