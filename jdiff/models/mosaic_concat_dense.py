"""y = [x₁ | x₂ | …]·W + c (:func:`jdiff.models.pallas_concat_dense.concat_dense`'s product) as a persistent
Pallas Mosaic GPU kernel for Hopper GPUs.

Why: the Triton kernel's products (Pallas's ``jnp.dot``) take ~1.4× XLA's time for the decoder's 1×1 skip
products at 32×32 (141 against ~100 µs, docs/benchmarks.md, nineteenth session), and ~1.8× at 16×16 where
a residual was added (twenty-first session), while jax's own Hopper matmul in Mosaic GPU (TMA copies into a
ring of shared-memory buffers feeding wgmma) ran within −14% / +7% of XLA's product at those shapes. This
kernel has that structure and reads the parts as they are:

- ``ctas`` CTAs (one warpgroup each; one per SM) stay resident and take the (block_m, block_n) tiles of y
  t = i, i + ctas, … (t = row block · F / block_n + column block);
- for a tile, each part's channels go through a TMA pipeline of ``steps`` buffers, block_k channels at a
  time with the matching rows of W, into one float32 wgmma accumulator (the parts in turn, so the
  concatenation is never formed);
- c's block_n values are added to the accumulator in float32, y is rounded once to x's dtype and leaves by
  TMA.

Timed on an H200 (docs/benchmarks.md, twenty-second session; 20 or 10 chained calls at batch 512, bf16, µs
per call against the Triton kernel in the same harness): 114.0 against 130.1 at 16×16 (256 + 256 → 256),
53.8 against 54.4 at 8×8, 34.3 against 39.6 at 4×4, but 156.9 against 143.5 at 32×32 (128 + 128 → 128;
measured before each step's ``wgmma_wait(1)`` was added).
:func:`preferred` says where the UNet takes it (``ConcatConv1x1(implementation='auto')``): with its three
16×16 products on this kernel, 100-step sampling ran 0.11% faster than with the Triton kernel everywhere
(three alternating pairs on one H200, twenty-third session; within the runs' spread). It runs on
NVIDIA GPUs of compute capability 9.x with jax ≥ 0.11, and in Mosaic GPU's interpreter (``interpret``,
jax ≥ 0.10, any backend).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jdiff.models.mosaic_gpu import check_runs, interpreter, runs_here, sm_count, unpartitioned_if_interpreted
from jdiff.models.pallas_concat_dense import sharding_rule, tiling_reason
from jdiff.models.pallas_group_norm import largest_power_of_2_dividing
from jdiff.models.per_image import partitioned_per_image

Dtype = Any

BLOCK_M = 128  # positions per tile: two of the warpgroup's 64-row wgmma products
BLOCK_N = 128  # output channels per tile (fewer where F has no such factor)
BLOCK_K = 64  # channels per pipeline step: 128-byte rows of 16-bit values (the widest TMA swizzle)
STEPS = 4  # pipeline buffers in flight (2 took 177 µs against 4's 114 at 16×16)
MAX_POSITIONS = 256  # per image where it is preferred: slower than the Triton kernel at 32×32's 1024
_SMEM_BYTES = 227 * 1024  # an H100's / H200's shared memory per SM


class _Settings(NamedTuple):
    """The kernel's static settings (hashable: the static argument of the partitioned call)."""
    parts: tuple[int, ...]
    block_m: int
    block_n: int
    block_k: int
    steps: int
    interpret: Any  # False, True, or Mosaic GPU's InterpretGPUParams


def unsupported_reason(part_channels: Sequence[int], features: int, rows: int, dtype: Dtype, *,
                       block_m: int = BLOCK_M, block_n: int | None = None, block_k: int = BLOCK_K,
                       steps: int = STEPS) -> str | None:
    """Why the kernel cannot take parts of these channel counts in ``dtype``, F output channels and ``rows``
    positions with these settings (``block_n`` None: the largest power of two ≤ BLOCK_N dividing F), or None
    if it can."""
    block_n = default_block_n(features) if block_n is None else block_n
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"the parts must be bfloat16 or float16 (wgmma's 16-bit products), got {jnp.dtype(dtype)}"
    if block_m % 64:
        return f"block_m = {block_m} must be a multiple of 64 (wgmma's rows)"
    if block_n % 16 or not 16 <= block_n <= 256:
        return f"block_n = {block_n} must be a multiple of 16 from 16 to 256 (wgmma's columns)"
    if block_k * jnp.dtype(dtype).itemsize != 128:
        return f"block_k = {block_k} must be 64 (128-byte rows, the swizzle of wgmma's operands)"
    smem = jnp.dtype(dtype).itemsize * (steps * block_k * (block_m + block_n) + block_m * block_n)
    if smem > _SMEM_BYTES:
        return (f"{steps} pipeline steps of ({block_m}, {block_k}) and ({block_k}, {block_n}) tiles and the "
                f"output tile need {smem} bytes of shared memory, more than {_SMEM_BYTES}")
    return tiling_reason(part_channels, features, rows, block_m, block_n, block_k)


def preferred(part_channels: Sequence[int], features: int, positions: int, dtype: Dtype) -> bool:
    """Whether a 1×1 product of parts with these channel counts in ``dtype`` into F outputs, over images of
    ``positions`` positions each, takes this kernel rather than the Triton one: where it runs
    (:func:`jdiff.models.mosaic_gpu.runs_here`), images have at most MAX_POSITIONS positions (at 32×32 it
    was slower) and the default tiles take one image (so any share of the batch in whole images: at 8×8 and
    4×4 an image has fewer positions than BLOCK_M, and those go to the Triton kernel)."""
    return (positions <= MAX_POSITIONS and runs_here()
            and unsupported_reason(part_channels, features, positions, dtype) is None)


def default_block_n(features: int) -> int:
    """Output channels per tile: the largest power of two ≤ BLOCK_N that divides F."""
    return largest_power_of_2_dividing([features], BLOCK_N)


def _multiply_accumulate(acc_ref, _, x_smem, w_smem):
    plgpu.wgmma(acc_ref, x_smem, w_smem)
    # delay_release=1 lets the pipeline refill the previous step's buffers once this step's product is
    # issued: they are free only when at most this one product is still in flight.
    plgpu.wgmma_wait(1)


def _concat_dense_tma(*refs, parts: tuple[int, ...], tiles_n: int, tiles: int, block_m: int, block_n: int,
                      block_k: int, steps: int):
    x_gmems, (w_gmem, c_gmem, y_gmem) = refs[:len(parts)], refs[len(parts):]

    @plgpu.nd_loop((tiles,), collective_axes="cta")
    def _(loop):
        (tile,) = loop.index
        row_block, col_block = lax.div(tile, tiles_n), lax.rem(tile, tiles_n)

        def accumulate(acc_ref):
            first = 0
            for x_gmem, channels in zip(x_gmems, parts):
                plgpu.emit_pipeline(
                    functools.partial(_multiply_accumulate, acc_ref),
                    grid=(channels // block_k,),
                    in_specs=[plgpu.BlockSpec((block_m, block_k), lambda k: (row_block, k), delay_release=1),
                              plgpu.BlockSpec((block_k, block_n), lambda k: (k, col_block), delay_release=1)],
                    max_concurrent_steps=steps,
                )(x_gmem, w_gmem.at[pl.ds(first, channels)])
                first += channels
            return acc_ref[...]

        acc = pl.run_scoped(accumulate, plgpu.ACC((block_m, block_n)))

        @functools.partial(pl.run_scoped, y_smem=plgpu.SMEM((block_m, block_n), y_gmem.dtype),
                           c_smem=plgpu.SMEM((block_n,), c_gmem.dtype), c_loaded=plgpu.Barrier())
        def _(y_smem, c_smem, c_loaded):
            plgpu.copy_gmem_to_smem(c_gmem.at[pl.ds(col_block * block_n, block_n)], c_smem, c_loaded)
            plgpu.barrier_wait(c_loaded)
            y_smem[...] = (acc + c_smem[...].astype(jnp.float32)[None, :]).astype(y_smem.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(y_smem, y_gmem.at[pl.ds(row_block * block_m, block_m),
                                                      pl.ds(col_block * block_n, block_n)])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # y_smem is rewritten by the next tile


def _call(*operands_and_settings):
    """(x_1, …, x_K, W, c, settings) → y (B, N, F) on this device's images."""
    *operands, settings = operands_and_settings
    parts, (w, c) = operands[:len(settings.parts)], operands[len(settings.parts):]
    batch, n, _ = parts[0].shape
    rows, features = batch * n, w.shape[1]
    reason = unsupported_reason(settings.parts, features, rows, parts[0].dtype, block_m=settings.block_m,
                                block_n=settings.block_n, block_k=settings.block_k, steps=settings.steps)
    if reason:  # a device's share of the batch
        raise ValueError(f"mosaic_concat_dense.concat_dense on {batch} images: {reason}")
    tiles_n = features // settings.block_n
    tiles = rows // settings.block_m * tiles_n
    kernel = functools.partial(_concat_dense_tma, parts=settings.parts, tiles_n=tiles_n, tiles=tiles,
                               block_m=settings.block_m, block_n=settings.block_n, block_k=settings.block_k,
                               steps=settings.steps)
    y = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((rows, features), parts[0].dtype),
        grid=(min(tiles, sm_count(settings.interpret)),),
        grid_names=("cta",),
        kernel_name="concat_dense_tma",  # in profiles (the body is a partial, which has no name)
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        interpret=interpreter(settings.interpret),
    )(*(x.reshape(rows, x.shape[-1]) for x in parts), w, c)
    return y.reshape(batch, n, features)


@functools.cache
def _per_image(parts: int) -> Any:
    return partitioned_per_image(_call, sharding_rule(parts))


def concat_dense(parts: Sequence[jax.Array], kernel: jax.Array, bias: jax.Array, *, block_m: int = BLOCK_M,
                 block_n: int | None = None, block_k: int = BLOCK_K, steps: int = STEPS,
                 interpret: Any = False) -> jax.Array:
    """y = [x₁ | x₂ | …]·W + c (B, N, F) in x's dtype for 16-bit parts x_k (B, N, C_k) of one B, N and
    dtype, W (ΣC_k, F) in x's dtype and c (F,) in any float dtype, in one Mosaic GPU kernel that accumulates
    in float32 and rounds once after adding c. Unchecked beyond what the kernel needs:
    :func:`jdiff.models.pallas_concat_dense.concat_dense` checks the operands and calls it (with its
    gradients). ``interpret`` (True, or :func:`jdiff.models.mosaic_gpu.interpret_params`) runs it in Mosaic
    GPU's interpreter (any backend, jax ≥ 0.10, slow). Under ``jax.jit`` over a mesh with the parts split
    along their batch axis, each device computes its own images (block_m must divide each device's B·N).
    Raises ValueError where the kernel does not run (unless interpreted) or does not take the operands
    (:func:`unsupported_reason`)."""
    check_runs("concat_dense", interpret, interpreted_on_jax_010=True,
               instead="jdiff.models.pallas_concat_dense.concat_dense(implementation='triton')")
    parts = tuple(parts)
    batch, n, _ = parts[0].shape
    block_n = default_block_n(kernel.shape[1]) if block_n is None else block_n
    channels = tuple(p.shape[-1] for p in parts)
    reason = unsupported_reason(channels, kernel.shape[1], batch * n, parts[0].dtype, block_m=block_m,
                                block_n=block_n, block_k=block_k, steps=steps)
    if reason:
        raise ValueError(f"mosaic_concat_dense.concat_dense: {reason}")
    settings = _Settings(channels, block_m, block_n, block_k, steps, interpret)
    call = unpartitioned_if_interpreted(_per_image(len(parts)), _call, interpret)
    return call(*parts, kernel.astype(parts[0].dtype), bias, settings)
