"""Softmax(q·kᵀ/√d)·v for short sequences, one Pallas (Triton) program per image and head.

At the UNet's 8×8 and 4×4 attention (L = 64 and 16 positions, 8 heads of 32 channels) a head's q, k and v
are 4 KB each and its logits a 64 × 64 tile: one program loads them, computes the logits in float32 with
one tensor-core product, the softmax in registers and the output with a second product, and writes it.
cuDNN's flash-attention kernel, built for long sequences, took 1.6× as long at L = 64 and 3.5× at L = 16
on an H200 (batch 512, docs/benchmarks.md), and XLA's writes the logits out.

In the UNet the kernel reads its head's q, k and v straight from the attention's one (B, L, 3C) projection
and adds q's bias itself (:func:`attention_from_qkv`): XLA would otherwise write q + b_q, k and v out of the
product as three arrays first, three passes over (B, L, C) per layer. At 16×16 (L = 256) the same entry
point takes :mod:`jdiff.models.mosaic_attention`'s kernel on Hopper GPUs (``kernel``, :func:`kernel_for`).

Arithmetic as :func:`jax.nn.dot_product_attention` with cuDNN: 16-bit q, k, v, logits and softmax in
float32, the probabilities rounded to the input dtype for the product with v, which accumulates in float32.

The kernel has no derivative of its own: both entry points are a custom VJP whose backward is the VJP of
XLA's attention (``jax.nn.dot_product_attention(implementation='xla')``) of the same q, k, v (sliced out of
the product by XLA), recomputed from the operands, so it is exact wherever it is differentiated; the UNet
uses the kernels only where nothing is (sampling).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jdiff.models import mosaic_attention
from jdiff.models.mosaic_gpu import check_runs, unpartitioned_if_interpreted
from jdiff.models.pallas_group_norm import is_power_of_2
from jdiff.models.per_image import partitioned_per_image
from jdiff.models.platform import nvidia_sm80_or_newer

MAX_TOKENS = 64  # the longest sequence it takes: the (L, L) float32 logits stay in registers; timed up to 64
NUM_WARPS = 4  # fastest of 2, 4 and 8 at L = 16 and 64 on an H200


def unsupported_reason(shape: tuple[int, ...], dtype) -> str | None:
    """Why the kernel cannot take q, k, v of this (B, L, heads, d) shape and dtype, or None if it can."""
    if len(shape) != 4:
        return f"q, k, v must be (B, L, heads, d), got shape {shape}"
    _, tokens, _, head_channels = shape
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"q, k, v must be bfloat16 or float16 (tensor-core products), got {jnp.dtype(dtype)}"
    if not (is_power_of_2(tokens) and 16 <= tokens <= MAX_TOKENS):
        return (f"the sequence length L = {tokens} must be a power of two from 16 to {MAX_TOKENS} (Triton's "
                f"products take blocks of at least 16; longer sequences suit cuDNN's flash attention)")
    if not (is_power_of_2(head_channels) and 16 <= head_channels <= 128):
        return f"the head width d = {head_channels} must be a power of two from 16 to 128"
    return None


class _Settings(NamedTuple):
    num_warps: int
    interpret: bool
    # where q, k, v come from: None: three arrays (B, L, heads, d); 2: one (B, L, 3, heads, d) array with
    # q's bias (C,) (guided-diffusion's new attention order); 3: one (B, L, heads, 3, d) (the legacy order)
    fused_axis: int | None = None
    kernel: str = "triton"  # or 'mosaic' (jdiff.models.mosaic_attention, from a q|k|v product only)


def _kernel(*refs, fused_axis: int | None):
    *sources, o_ref = refs  # q, k, v refs, or the q|k|v ref and q's bias
    head, image = pl.program_id(0), pl.program_id(1)
    tokens, head_channels = o_ref.shape[1], o_ref.shape[3]

    def load(which):
        index = [image, pl.ds(0, tokens), head, pl.ds(0, head_channels)]
        if fused_axis is None:
            return plt.load(sources[which].at[tuple(index)])
        index.insert(fused_axis, jnp.int32(which))  # an array: the interpreter's load takes no int index
        return plt.load(sources[0].at[tuple(index)])

    q, k, v = load(0), load(1), load(2)
    if fused_axis is not None:  # q + b_q rounded to q's dtype, as XLA adds two 16-bit arrays
        bias = plt.load(sources[1].at[pl.ds(head * head_channels, head_channels)])
        q = (q.astype(jnp.float32) + bias.astype(jnp.float32)[None, :]).astype(q.dtype)
    logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * head_channels ** -0.5
    p = jnp.exp(logits - logits.max(axis=1, keepdims=True))
    out = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / p.sum(axis=1, keepdims=True)
    plt.store(o_ref.at[image, pl.ds(0, tokens), head, pl.ds(0, head_channels)], out.astype(o_ref.dtype))


def _output_shape(first: jax.Array, fused_axis: int | None) -> tuple[int, ...]:
    shape = list(first.shape)
    if fused_axis is not None:
        del shape[fused_axis]
    return tuple(shape)


def _call(*operands_and_settings) -> jax.Array:
    *operands, settings = operands_and_settings
    if settings.kernel == "mosaic":
        return mosaic_attention.call(*operands, new_order=settings.fused_axis == 2,
                                     interpret=settings.interpret)
    shape = _output_shape(operands[0], settings.fused_axis)
    return pl.pallas_call(functools.partial(_kernel, fused_axis=settings.fused_axis),
                          out_shape=jax.ShapeDtypeStruct(shape, operands[0].dtype), grid=(shape[2], shape[0]),
                          compiler_params=plt.CompilerParams(num_warps=settings.num_warps),
                          interpret=settings.interpret, name="short_attention")(*operands)


_PER_IMAGE = {None: partitioned_per_image(_call, "b l h d, b l h d, b l h d -> b l h d"),
              2: partitioned_per_image(_call, "b l w h d, c -> b l h d"),
              3: partitioned_per_image(_call, "b l h w d, c -> b l h d")}


def _split(operands: tuple[jax.Array, ...], fused_axis: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v (B, L, heads, d) as the kernel reads them, computed by XLA (q + b_q in q's dtype)."""
    if fused_axis is None:
        return operands
    qkv, q_bias = operands
    q, k, v = (jnp.take(qkv, which, axis=fused_axis) for which in range(3))
    return q + q_bias.reshape(q.shape[2:]), k, v


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attention(operands, settings):
    mosaic_interpreted = settings.kernel == "mosaic" and settings.interpret
    call = unpartitioned_if_interpreted(_PER_IMAGE[settings.fused_axis], _call, mosaic_interpreted)
    return call(*operands, settings)


def _attention_forward(operands, settings):
    return _attention(operands, settings), operands


def _attention_backward(settings, operands, cotangent):
    def reference(operands):
        return jax.nn.dot_product_attention(*_split(operands, settings.fused_axis), implementation="xla")

    _, vjp = jax.vjp(reference, operands)
    return vjp(cotangent)


_attention.defvjp(_attention_forward, _attention_backward)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False,
              num_warps: int = NUM_WARPS) -> jax.Array:
    """softmax(q·kᵀ/√d)·v per image and head for q, k, v (B, L, heads, d), as
    ``jax.nn.dot_product_attention(q, k, v)`` (no mask, no bias), in one Pallas Triton kernel; gradients
    by XLA's attention. ``interpret`` runs the kernel in Pallas's interpreter (any backend, slow). Under
    ``jax.jit`` over a mesh with the batch split, each device computes its own images. Raises ValueError
    for what :func:`unsupported_reason` rejects or if k, v differ from q in shape or dtype."""
    if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"pallas_attention.attention: q, k, v must share shape and dtype, got "
                         f"{[(a.shape, str(a.dtype)) for a in (q, k, v)]}")
    reason = unsupported_reason(q.shape, q.dtype)
    if reason:
        raise ValueError(f"pallas_attention.attention: {reason}")
    return _attention((q, k, v), _Settings(num_warps=num_warps, interpret=interpret))


KERNELS = ("auto", "triton", "mosaic")


def kernel_for(shape: tuple[int, ...], dtype) -> str | None:
    """The kernel :func:`attention_from_qkv` takes for q, k, v of this (B, L, heads, d) shape on the default
    devices with ``kernel='auto'``: 'mosaic' (:mod:`jdiff.models.mosaic_attention`, Hopper GPUs, L of 128 or
    256) where it runs and takes the shape, else 'triton' (this module's, L ≤ 64) on NVIDIA GPUs of compute
    capability 8.0 on, else None."""
    if mosaic_attention.preferred(shape, dtype):
        return "mosaic"
    if nvidia_sm80_or_newer() and unsupported_reason(shape, dtype) is None:
        return "triton"
    return None


def no_kernel_reason(shape: tuple[int, ...], dtype) -> str:
    """Why neither kernel takes q, k, v of this (B, L, heads, d) shape here (where :func:`kernel_for` is
    None): each kernel's reason."""
    triton = unsupported_reason(shape, dtype) or "it needs an NVIDIA GPU of compute capability 8.0 or newer"
    mosaic = mosaic_attention.unsupported_reason(shape, dtype) or "it does not run here"
    return (f"no kernel takes q, k, v of shape {shape} here (Triton's: {triton}; Mosaic GPU's (Hopper, "
            f"jax >= 0.11): {mosaic})")


def attention_from_qkv(qkv: jax.Array, q_bias: jax.Array, *, heads: int, new_order: bool,
                       interpret: Any = False, num_warps: int = NUM_WARPS, kernel: str = "auto") -> jax.Array:
    """:func:`attention` of q + b_q, k, v read from one (B, L, 3C) product ``qkv`` (16-bit) and q's bias
    b_q (C,) in qkv's dtype; output (B, L, heads, C/heads). ``new_order`` reads qkv's channels as (q|k|v,
    head, channel), else as (head, q|k|v, channel) (:class:`jdiff.models.layers.QKVProjection`). The kernel
    loads its head's q, k, v from the product and adds b_q itself, so neither XLA's slices of the product
    nor its bias pass are written out (three passes over (B, L, C) per layer otherwise).

    ``kernel``: 'triton' (this module's, L ≤ 64), 'mosaic' (:mod:`jdiff.models.mosaic_attention`, L of 128 or
    256, Hopper GPUs with jax ≥ 0.11), or 'auto': :func:`kernel_for`, and with ``interpret`` the Triton
    kernel where it takes the shape, else the Mosaic one. ``interpret`` runs the kernel in Pallas's
    interpreter (True; for the Mosaic kernel also :func:`jdiff.models.mosaic_gpu.interpret_params`);
    ``num_warps`` is the Triton kernel's. Raises ValueError where the kernel does not take the operands or
    cannot run here."""
    batch, tokens, width = qkv.shape
    if width % (3 * heads) or q_bias.shape != (width // 3,) or q_bias.dtype != qkv.dtype:
        raise ValueError(f"pallas_attention.attention_from_qkv: qkv must be (B, L, 3·C) with C a multiple of "
                         f"heads = {heads} and q_bias ({width // 3},) of qkv's dtype, got {qkv.shape} "
                         f"{qkv.dtype} and {q_bias.shape} {q_bias.dtype}")
    if kernel not in KERNELS:
        raise ValueError(f"pallas_attention.attention_from_qkv: kernel {kernel!r} is not one of {KERNELS}")
    head_channels = width // (3 * heads)
    shape = (batch, tokens, heads, head_channels)
    reason_of = {"triton": unsupported_reason, "mosaic": mosaic_attention.unsupported_reason}
    if kernel == "auto":
        if interpret:
            kernel = next((name for name, reason in reason_of.items() if reason(shape, qkv.dtype) is None),
                          None)
        else:
            kernel = kernel_for(shape, qkv.dtype)
        if kernel is None:
            raise ValueError(f"pallas_attention.attention_from_qkv: {no_kernel_reason(shape, qkv.dtype)}")
    reason = reason_of[kernel](shape, qkv.dtype)
    if reason:
        raise ValueError(f"pallas_attention.attention_from_qkv: {reason}")
    if kernel == "mosaic":
        check_runs("attention", interpret, interpreted_on_jax_010=True,
                   instead="model.attention_implementation='cudnn' (or kernel='triton' where it takes L)")
    split = (3, heads, head_channels) if new_order else (heads, 3, head_channels)
    settings = _Settings(num_warps=num_warps, interpret=interpret, fused_axis=2 if new_order else 3,
                         kernel=kernel)
    return _attention((qkv.reshape(batch, tokens, *split), q_bias), settings)
