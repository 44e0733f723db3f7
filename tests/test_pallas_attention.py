"""The short-sequence attention kernel (jdiff/models/pallas_attention.py), run in Pallas's interpreter on the
CPU: its output against an independent NumPy computation of the same arithmetic, its gradients against
XLA's attention, the shapes it refuses, and (4 CPU devices, in a subprocess) its partitioning over a
sharded batch. The interpreter proves the arithmetic and indexing, not that Triton compiles the kernel:
that is the GPU benchmark's check (experiments/bench_attention.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_helper_on_devices
from jdiff.models import pallas_attention


def qkv(shape, dtype, seed=0, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple((scale * jax.random.normal(key, shape)).astype(dtype) for key in keys)


def reference(q, k, v):
    """The kernel's arithmetic in NumPy: float32 logits of the 16-bit q, k; the softmax's numerators rounded
    to the input dtype for the product with v; the denominator from the unrounded ones."""
    dtype = q.dtype
    q, k, v = (np.asarray(a, np.float32) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    rounded = np.asarray(jnp.asarray(p).astype(dtype), np.float32)
    out = np.einsum("bhqk,bkhd->bqhd", rounded, v) / p.sum(-1)[..., None].transpose(0, 2, 1, 3)
    return out


@pytest.mark.parametrize("shape,dtype", [((2, 64, 8, 32), jnp.bfloat16), ((3, 16, 2, 16), jnp.float16),
                                         ((1, 32, 4, 64), jnp.bfloat16)])
def test_matches_the_arithmetic_and_xla_attention(shape, dtype):
    q, k, v = qkv(shape, dtype, scale=2.0)
    got = np.asarray(jax.jit(lambda *a: pallas_attention.attention(*a, interpret=True))(q, k, v), np.float32)
    assert got.dtype == np.float32 and got.shape == shape
    want = reference(q, k, v)
    ulp = 2.0 ** -7 if dtype == jnp.bfloat16 else 2.0 ** -10  # the output's rounding to the input dtype
    np.testing.assert_allclose(got, want, rtol=ulp, atol=ulp * 1e-2)
    # and XLA's float32 attention, up to the rounding of the softmax to 16 bits
    xla = jax.nn.dot_product_attention(*(a.astype(jnp.float32) for a in (q, k, v)), implementation="xla")
    assert np.max(np.abs(got - np.asarray(xla))) < 8 * ulp * np.max(np.abs(want))


def test_gradients_are_xlas_attention_gradients():
    q, k, v = qkv((2, 16, 4, 32), jnp.bfloat16, seed=1)
    cotangent = jax.random.normal(jax.random.key(2), q.shape)

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * cotangent)
    kernel = loss(lambda *a: pallas_attention.attention(*a, interpret=True))
    got = jax.grad(kernel, argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda *a: jax.nn.dot_product_attention(*a, implementation="xla")),
                    argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


def split_qkv(qkv, q_bias, heads, new_order):
    """q + b_q, k, v (B, L, heads, d) sliced out of a (B, L, 3C) product, channel by channel: (q|k|v, head,
    channel) in the new order, (head, q|k|v, channel) in the legacy one; the sum in qkv's dtype."""
    d = qkv.shape[-1] // (3 * heads)

    def first(which, h):
        return (which * heads + h) * d if new_order else (h * 3 + which) * d
    q, k, v = (jnp.stack([qkv[..., first(which, h):first(which, h) + d] for h in range(heads)], axis=2)
               for which in range(3))
    return q + q_bias.reshape(heads, d), k, v


@pytest.mark.parametrize("new_order", [True, False])
def test_from_qkv_reads_the_product_as_the_projection_splits_it(new_order):
    """attention_from_qkv computes the separate kernel's output, bit for bit, for q + b_q, k, v sliced out of
    the product in the channel order of each attention variant; its gradients (for the product and b_q) are
    those of XLA's attention of the same slices, bit for bit."""
    heads, d = 4, 16
    qkv_ = (2.0 * jax.random.normal(jax.random.key(3), (2, 32, 3 * heads * d))).astype(jnp.bfloat16)
    q_bias = jax.random.normal(jax.random.key(4), (heads * d,)).astype(jnp.bfloat16)
    fused = jax.jit(lambda a, b: pallas_attention.attention_from_qkv(a, b, heads=heads, new_order=new_order,
                                                                     interpret=True))
    got = fused(qkv_, q_bias)
    assert got.shape == (2, 32, heads, d) and got.dtype == jnp.bfloat16
    want = pallas_attention.attention(*split_qkv(qkv_, q_bias, heads, new_order), interpret=True)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))

    cotangent = jax.random.normal(jax.random.key(5), got.shape)

    def loss(fn):
        return lambda a, b: jnp.sum(fn(a, b).astype(jnp.float32) * cotangent)
    xla = jax.jit(lambda a, b: jax.nn.dot_product_attention(*split_qkv(a, b, heads, new_order),
                                                            implementation="xla"))
    got_grads = jax.grad(loss(fused), argnums=(0, 1))(qkv_, q_bias)
    want_grads = jax.grad(loss(xla), argnums=(0, 1))(qkv_, q_bias)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == jnp.bfloat16 and float(jnp.max(jnp.abs(w.astype(jnp.float32)))) > 0
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


def test_from_qkv_refuses_mismatched_operands():
    qkv_ = jnp.zeros((2, 16, 3 * 64), jnp.bfloat16)
    for q_bias, heads, message in ((jnp.zeros(32, jnp.bfloat16), 4, "q_bias \\(64,\\)"),
                                   (jnp.zeros(64, jnp.float32), 4, "of qkv's dtype"),
                                   (jnp.zeros(64, jnp.bfloat16), 3, "multiple of heads = 3"),
                                   (jnp.zeros(64, jnp.bfloat16), 8, "d = 8")):
        with pytest.raises(ValueError, match=message):
            pallas_attention.attention_from_qkv(qkv_, q_bias, heads=heads, new_order=True, interpret=True)


@pytest.mark.parametrize("shape,dtype,message", [
    ((2, 256, 8, 32), jnp.bfloat16, "L = 256 must be a power of two from 16 to 64"),
    ((2, 24, 8, 32), jnp.bfloat16, "L = 24"),
    ((2, 8, 8, 32), jnp.bfloat16, "L = 8"),
    ((2, 64, 8, 24), jnp.bfloat16, "d = 24"),
    ((2, 64, 8, 32), jnp.float32, "bfloat16 or float16"),
    ((2, 64, 256), jnp.bfloat16, "must be \\(B, L, heads, d\\)"),
])
def test_unsupported_shapes_raise(shape, dtype, message):
    q = jnp.zeros(shape, dtype)
    with pytest.raises(ValueError, match=message):
        pallas_attention.attention(q, q, q, interpret=True)


def test_q_k_v_must_agree():
    q = jnp.zeros((2, 16, 2, 16), jnp.bfloat16)
    with pytest.raises(ValueError, match="share shape and dtype"):
        pallas_attention.attention(q, q.astype(jnp.float16), q, interpret=True)
    with pytest.raises(ValueError, match="share shape and dtype"):
        pallas_attention.attention(q, q, q[:1], interpret=True)


def test_partitioned_over_a_sharded_batch():
    """On 4 devices with the batch split, each device runs the kernel on its own images (no collective in the
    compiled program, the output split the same way) with the unsharded result; the gradients too; also
    reading a split q|k|v product with a replicated q bias, whose gradient alone is summed over devices."""
    result = run_helper_on_devices("sharded_attention.py", 4)
    for name in ("forward", "gradients", "fused_forward", "fused_gradients"):
        assert result[f"{name}_collectives"] == (["all-reduce"] if name == "fused_gradients" else [])
        assert result[f"{name}_output_axis"] == "data"
    assert result["forward_max_diff"] == 0.0
    # XLA's backward compiled for the split batch: bit for bit with jax 0.10's default emitters, within 3e-8
    # with jax 0.11.2's, within a bf16 rounding with the elemental emitters (conftest's flags on jax 0.10)
    assert result["gradients_relative_diff"] <= 2.0 ** -8
    assert result["fused_forward_max_diff"] == 0.0
    # the product's gradient within a bf16 rounding (XLA compiles the sliced backward otherwise when split);
    # b_q's, summed over the images: per device in float32, then the four bf16 partial sums
    assert result["qkv_gradient_relative_diff"] <= 2.0 ** -8
    assert 0.0 < result["bias_gradient_relative_diff"] <= 2.0 ** -5
