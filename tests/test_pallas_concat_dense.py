"""The concatenation-free product y = [x₁ | x₂ | …]·W + c (jdiff.models.pallas_concat_dense), its Triton
kernel run in Pallas's interpreter: against an independent float64 NumPy product for one, two and three
parts, several row and output-channel tiles and several steps over each part's channels, float32 and
bfloat16 (the float32 sum rounded once); its gradients (those of the XLA reference, checked against the
closed forms); the settings and operands it refuses; its default tiles; its per-image partitioning over a
split batch on 4 CPU devices; and Pallas's Triton lowering for CUDA of the UNet's decoder shapes (what the
interpreter does not run)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_helper_on_devices
from jdiff.models import pallas_concat_dense
from jdiff.models.pallas_concat_dense import (concat_dense, default_block_k, default_block_m, default_block_n,
                                              largest_power_of_2_dividing, unsupported_reason)


def operands(batch, n, parts, features, dtype, seed=0):
    """Parts (B, N, C_k) of mean 0.5 and spread 1, W (ΣC_k, F) of spread 1/√C, c (F,) float32."""
    keys = jax.random.split(jax.random.key(seed), len(parts) + 2)
    xs = tuple((0.5 + jax.random.normal(k, (batch, n, c))).astype(dtype) for k, c in zip(keys, parts))
    channels = sum(parts)
    kernel = jax.random.normal(keys[-2], (channels, features)) / np.sqrt(channels)
    bias = jax.random.normal(keys[-1], (features,))
    return xs, kernel, bias


def float64_product(xs, kernel, bias):
    """[x₁ | x₂ | …]·W + c in float64 NumPy, W rounded to the parts' dtype first (as the kernel takes it)."""
    x = np.concatenate([np.asarray(jnp.asarray(p, jnp.float32), np.float64) for p in xs], axis=-1)
    w = np.asarray(jnp.asarray(kernel.astype(xs[0].dtype), jnp.float32), np.float64)
    return x @ w + np.asarray(bias, np.float64)


CASES = [  # B, N, the parts' channels, F, dtype, settings
    (2, 16, (64,), 16, jnp.float32, {}),  # one part: the defaults, one tile
    (2, 16, (64, 128), 32, jnp.float32, dict(block_n=16, block_k=32)),  # 2 F tiles; 2 + 4 steps over C
    (3, 16, (32, 64, 32), 64, jnp.bfloat16, dict(block_n=32, block_k=16)),  # 3 row tiles (B·N = 48)
    (2, 32, (64, 64), 48, jnp.bfloat16, dict(block_m=16, block_n=16)),  # 4 row × 3 F tiles
]


@pytest.mark.parametrize("batch,n,parts,features,dtype,settings", CASES)
def test_matches_float64(batch, n, parts, features, dtype, settings):
    """float32: the float64 product within float32 roundings of the sum; bfloat16: the float32 sum (of
    products of bf16 values, exact in float32) plus c rounded once to bf16, so within half a bf16 ulp
    (2^-8 relative at most) of the float64 product, and almost always its nearest bf16."""
    xs, kernel, bias = operands(batch, n, parts, features, dtype, seed=sum(parts) + features)
    y = concat_dense(xs, kernel, bias, interpret=True, **settings)
    assert y.shape == (batch, n, features) and y.dtype == dtype
    expected = float64_product(xs, kernel, bias)
    scale = np.abs(expected).max()
    got = np.asarray(jnp.asarray(y, jnp.float32), np.float64)
    if dtype == jnp.float32:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)
    else:
        np.testing.assert_allclose(got, expected, rtol=2**-8, atol=1e-5 * scale)
        # rounded once: (nearly) every element is the float64 product's nearest bf16 (the XLA reference,
        # which rounds the product and then the sum with c, gets ~65% of them here)
        rounded = np.asarray(jnp.asarray(expected, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))
        assert np.mean(got == rounded) > 0.99
    # XLA's concatenation and product: in float32 the same sums in another order
    if dtype == jnp.float32:
        np.testing.assert_allclose(np.asarray(y), np.asarray(pallas_concat_dense.reference(xs, kernel, bias)),
                                   rtol=0, atol=1e-5 * scale)


def test_gradients_are_the_references_and_the_closed_forms():
    """The custom VJP is the XLA reference's: for a loss linear in y (the same cotangent either way) the
    parts', W's and c's gradients are the reference's bit for bit, the parts' a tuple of their shapes; and
    they are dy·W_kᵀ, [x₁ | x₂]ᵀ·dy and Σ dy (float64 NumPy)."""
    xs, kernel, bias = operands(2, 16, (64, 32), 32, jnp.float32, seed=3)
    dy = jax.random.normal(jax.random.key(4), (2, 16, 32))

    def loss(product):
        return lambda xs, kernel, bias: jnp.vdot(product(xs, kernel, bias), dy)

    kernel_grads = jax.grad(loss(lambda *a: concat_dense(*a, block_n=16, interpret=True)),
                            argnums=(0, 1, 2))(xs, kernel, bias)
    reference_grads = jax.grad(loss(pallas_concat_dense.reference), argnums=(0, 1, 2))(xs, kernel, bias)
    assert isinstance(kernel_grads[0], tuple)
    assert [g.shape for g in kernel_grads[0]] == [(2, 16, 64), (2, 16, 32)]
    for got, want in zip(jax.tree.leaves(kernel_grads), jax.tree.leaves(reference_grads)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    x = np.concatenate([np.asarray(p, np.float64) for p in xs], axis=-1).reshape(32, 96)
    d, w = np.asarray(dy, np.float64).reshape(32, 32), np.asarray(kernel, np.float64)
    closed = (d @ w[:64].T, d @ w[64:].T, x.T @ d, d.sum(0))
    got = (*(g.reshape(32, -1) for g in kernel_grads[0]), kernel_grads[1], kernel_grads[2])
    for g, want in zip(got, closed):
        np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shapes,dtypes,w_shape,c_shape,settings,message", [
    (((2, 16, 64), (2, 8, 64)), None, (128, 16), (16,), {}, "of one B, N and dtype"),
    (((2, 16, 64), (1, 16, 64)), None, (128, 16), (16,), {}, "of one B, N and dtype"),
    (((2, 16, 64), (2, 16, 64)), (jnp.float32, jnp.bfloat16), (128, 16), (16,), {}, "of one B, N and dtype"),
    (((2, 16, 64, 1),), None, (64, 16), (16,), {}, "of one B, N and dtype"),
    ((), None, (64, 16), (16,), {}, "of one B, N and dtype"),
    (((2, 16, 64), (2, 16, 64)), None, (96, 16), (16,), {}, r"expected W \(128, F\) and c \(F,\)"),
    (((2, 16, 64),), None, (64, 16), (32,), {}, r"expected W \(64, F\) and c \(F,\)"),
    (((2, 16, 64),), None, (1, 64, 16), (16,), {}, r"expected W \(64, F\)"),
    (((2, 16, 64),), None, (64, 16), (16,), dict(block_n=8), "block_n = 8 must be a power of two from 16"),
    (((2, 16, 64),), None, (64, 48), (48,), dict(block_n=24), "block_n = 24 must be a power of two"),
    (((2, 16, 64),), None, (64, 16), (16,), dict(block_k=48), "block_k = 48 must be a power of two"),
    (((2, 16, 64),), None, (64, 16), (16,), dict(block_m=24), "block_m = 24 must be a power of two"),
    (((1, 48, 64),), None, (64, 16), (16,), dict(block_m=32), "B·N = 48 positions must be a multiple of "
                                                              "block_m = 32"),
    (((1, 40, 64),), None, (64, 16), (16,), {}, "block_m = 8 must be a power of two"),  # the default: 8
    (((2, 16, 64),), None, (64, 48), (48,), dict(block_n=32), "F = 48 output channels must be a multiple"),
    (((2, 16, 64), (2, 16, 48)), None, (112, 16), (16,), dict(block_k=32),
     r"every part's channels \(\[64, 48\]\) must be a multiple of block_k = 32"),
    (((2, 16, 64), (2, 16, 40)), None, (104, 16), (16,), {}, "block_k = 8 must be a power of two"),
])
def test_unsupported_operands_and_settings_raise(shapes, dtypes, w_shape, c_shape, settings, message):
    """Parts that disagree in B, N or dtype or are not (B, N, C_k), W or c of the wrong shape, tiles that are
    not powers of two from 16 (Triton's tensor-core products), rows, F or a part's channels not a multiple
    of their tile: ValueError saying which, and unsupported_reason gives the same reason for the tiles."""
    dtypes = dtypes or (jnp.float32,) * len(shapes)
    xs = tuple(jnp.zeros(shape, dtype) for shape, dtype in zip(shapes, dtypes))
    with pytest.raises(ValueError, match=message):
        concat_dense(xs, jnp.zeros(w_shape), jnp.zeros(c_shape), interpret=True, **settings)
    if "block" in message:
        reason = unsupported_reason([s[-1] for s in shapes], w_shape[-1], shapes[0][0] * shapes[0][1],
                                    **settings)
        assert reason is not None and re.search(message, reason)


def test_default_tiles():
    """block_m: the largest power of two ≤ 128 dividing B·N; block_k: the largest ≤ 128 dividing every
    part's channels; block_n: the largest ≤ 256 dividing F."""
    assert largest_power_of_2_dividing([96, 160], 128) == 32
    assert largest_power_of_2_dividing([12], 128) == 4
    assert largest_power_of_2_dividing([7], 128) == 1
    assert largest_power_of_2_dividing([1024], 64) == 64
    assert default_block_m(512 * 1024) == 128 and default_block_m(2 * 16) == 32 and default_block_m(48) == 16
    assert default_block_m(40) == 8  # refused by unsupported_reason: below 16
    assert default_block_k((256, 128)) == 128 and default_block_k((256, 192)) == 64
    assert default_block_k((96,)) == 32 and default_block_k((512, 256)) == 128
    assert default_block_n(256) == 256 and default_block_n(512) == 256 and default_block_n(128) == 128
    assert default_block_n(48) == 16 and default_block_n(96) == 32
    # the CIFAR-10 UNet's decoder at batch 512 (and for one image, as ResBlock.reads_parts asks): the parts
    # and widths of the blocks that read their parts are taken with the defaults
    for n, parts, features in [(16, (256, 256), 256), (64, (256, 256), 256), (256, (256, 256), 256),
                               (1024, (128, 128), 128)]:
        assert unsupported_reason(parts, features, 512 * n) is None
        assert unsupported_reason(parts, features, n) is None
    assert unsupported_reason((64,), 48, 32) is None  # block_n = 16 divides F = 48
    assert "block_n = 48 must be a power of two" in unsupported_reason((64,), 48, 32, block_n=48)


def test_partitioned_over_a_sharded_batch():
    """On 4 devices with the parts split along the batch and W, c replicated, each device runs the product on
    its own images with its own default block_m (no collective in the compiled program), and the result is
    the unsharded one; the same for the GroupNorm forward reading the same two parts."""
    result = run_helper_on_devices("sharded_concat_dense.py", 4)
    assert result["product_collectives"] == []
    assert result["product_output_axis"] == "data"
    assert result["product_max_diff"] == 0.0
    assert result["norm_collectives"] == []
    assert result["norm_output_axis"] == "data"
    assert result["norm_max_diff"] == 0.0


@pytest.mark.parametrize("n,parts,features", [(1024, (128, 128), 128), (256, (256, 256), 256)])
def test_lowers_to_triton_for_cuda(monkeypatch, n, parts, features):
    """Pallas's Triton lowering of the decoder's skip products at batch 512 (32×32: 128 + 128 → 128, 16×16:
    256 + 256 → 256), for the CUDA platform on the CPU: one kernel over the (F / block_n, B·N / 128) grid
    (one block of all F channels) with 8 warps, reading the parts as they are (no concatenation in the
    program)."""
    from jax._src.pallas.triton import pallas_call_registration
    if hasattr(pallas_call_registration, "gpu_info_lib"):  # jax ≥ 0.11 asks the GPU for its capability
        monkeypatch.setattr(pallas_call_registration, "gpu_info_lib", type("FakeHopper", (), dict(
            get_gpu_info=staticmethod(lambda: type("Info", (), dict(compute_capability=90))))))
    xs = [jax.ShapeDtypeStruct((512, n, c), jnp.bfloat16) for c in parts]
    kernel = jax.ShapeDtypeStruct((sum(parts), features), jnp.float32)
    bias = jax.ShapeDtypeStruct((features,), jnp.float32)

    def product(h, s, kernel, bias):
        return concat_dense((h, s), kernel, bias)

    text = jax.jit(product).trace(*xs, kernel, bias).lower(lowering_platforms=("cuda",)).as_text()
    assert 'name = "concat_dense"' in text and "concatenate" not in text
    grid = dict(re.findall(r"(grid_[xy]) = (\d+)", text))
    assert grid == {"grid_x": "1", "grid_y": str(512 * n // 128)}
    assert "num_warps = 8" in text
