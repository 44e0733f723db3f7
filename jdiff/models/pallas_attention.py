"""Softmax(q·kᵀ/√d)·v for short sequences, one Pallas (Triton) program per image and head.

At the UNet's 8×8 and 4×4 attention (L = 64 and 16 positions, 8 heads of 32 channels) a head's q, k and v
are 4 KB each and its logits a 64 × 64 tile: one program loads them, computes the logits in float32 with
one tensor-core product, the softmax in registers and the output with a second product, and writes it.
cuDNN's flash-attention kernel, built for long sequences, took 1.6× as long at L = 64 and 3.5× at L = 16
on an H200 (batch 512, docs/benchmarks.md), and XLA's writes the logits out.

Arithmetic as :func:`jax.nn.dot_product_attention` with cuDNN: 16-bit q, k, v, logits and softmax in
float32, the probabilities rounded to the input dtype for the product with v, which accumulates in float32.

The kernel has no derivative of its own: :func:`attention` is a custom VJP whose backward is the VJP of
XLA's attention (``jax.nn.dot_product_attention(implementation='xla')``), recomputed from q, k, v, so it is
exact wherever it is differentiated; the UNet uses the kernel only where nothing is (sampling).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jdiff.models.per_image import partitioned_per_image

MAX_TOKENS = 64  # the longest sequence it takes: the (L, L) float32 logits stay in registers; timed up to 64
NUM_WARPS = 4  # fastest of 2, 4 and 8 at L = 16 and 64 on an H200


def _is_power_of_2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def unsupported_reason(shape: tuple[int, ...], dtype) -> str | None:
    """Why the kernel cannot take q, k, v of this (B, L, heads, d) shape and dtype, or None if it can."""
    if len(shape) != 4:
        return f"q, k, v must be (B, L, heads, d), got shape {shape}"
    _, tokens, _, head_channels = shape
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"q, k, v must be bfloat16 or float16 (tensor-core products), got {jnp.dtype(dtype)}"
    if not (_is_power_of_2(tokens) and 16 <= tokens <= MAX_TOKENS):
        return (f"the sequence length L = {tokens} must be a power of two from 16 to {MAX_TOKENS} (Triton's "
                f"products take blocks of at least 16; longer sequences suit cuDNN's flash attention)")
    if not (_is_power_of_2(head_channels) and 16 <= head_channels <= 128):
        return f"the head width d = {head_channels} must be a power of two from 16 to 128"
    return None


class _Settings(NamedTuple):
    num_warps: int
    interpret: bool


def _kernel(q_ref, k_ref, v_ref, o_ref):
    head, image = pl.program_id(0), pl.program_id(1)
    tokens, head_channels = q_ref.shape[1], q_ref.shape[3]
    at = (image, pl.ds(0, tokens), head, pl.ds(0, head_channels))
    q, k, v = (plt.load(ref.at[at]) for ref in (q_ref, k_ref, v_ref))
    logits = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * head_channels ** -0.5
    p = jnp.exp(logits - logits.max(axis=1, keepdims=True))
    out = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / p.sum(axis=1, keepdims=True)
    plt.store(o_ref.at[at], out.astype(o_ref.dtype))


def _call(q: jax.Array, k: jax.Array, v: jax.Array, settings: _Settings) -> jax.Array:
    batch, _, heads, _ = q.shape
    return pl.pallas_call(_kernel, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), grid=(heads, batch),
                          compiler_params=plt.CompilerParams(num_warps=settings.num_warps),
                          interpret=settings.interpret, name="short_attention")(q, k, v)


_per_image = partitioned_per_image(_call, "b l h d, b l h d, b l h d -> b l h d")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, settings):
    return _per_image(q, k, v, settings)


def _attention_forward(q, k, v, settings):
    return _per_image(q, k, v, settings), (q, k, v)


def _attention_backward(settings, residuals, cotangent):
    del settings
    _, vjp = jax.vjp(functools.partial(jax.nn.dot_product_attention, implementation="xla"), *residuals)
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
    return _attention(q, k, v, _Settings(num_warps=num_warps, interpret=interpret))
