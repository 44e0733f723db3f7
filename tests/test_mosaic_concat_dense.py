"""The Mosaic GPU form of the concatenation-free product y = [x₁ | x₂ | …]·W + c
(jdiff.models.mosaic_concat_dense, pallas_concat_dense.concat_dense(implementation='mosaic')): in Mosaic
GPU's interpreter against an independent float64 NumPy product (one, two and three parts, several tiles per
CTA, pipelines of more steps than buffers, float16), against the Triton kernel through the public function,
its gradients (the XLA reference's), the operands and settings it refuses and where it runs; and, with jax
≥ 0.11, the interpreter's race detector and Mosaic GPU's lowering for CUDA at the UNet's decoder shapes
(skipped on jax 0.10 with the reason; passed with jax 0.11.2 on the CPU); where the UNet's 1×1 skip products
take it (ConcatConv1x1(implementation='auto'): Hopper, at most 256 positions per image)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models import mosaic_concat_dense, mosaic_gpu, pallas_concat_dense
from jdiff.models.layers import ConcatConv1x1
from test_mosaic_attention import needs_jax_011, on_a_fake_hopper
from test_pallas_concat_dense import float64_product, operands

CASES = [  # B, N, the parts' channels, F, dtype, settings
    (2, 64, (128, 64), 128, jnp.bfloat16, dict(block_m=64, block_n=64)),  # 4 × 2 tiles on 2 CTAs
    (1, 128, (192,), 64, jnp.bfloat16, dict(block_n=32, steps=2)),  # 3 steps through 2 buffers
    (2, 64, (64, 64, 128), 48, jnp.float16, dict(block_m=64, block_n=16)),  # three parts, F = 3 × 16
    (2, 64, (64,), 256, jnp.bfloat16, {}),  # the defaults: block_m 128, block_n 128
]


@pytest.mark.parametrize("batch,n,parts,features,dtype,settings", CASES)
def test_interpreted_kernel_matches_float64(batch, n, parts, features, dtype, settings):
    """The float32 sum of products of 16-bit values (exact in float32) plus c, rounded once: within half an
    ulp of the float64 product (2^-8 relative for bf16, 2^-11 for float16), and almost always its nearest
    value."""
    xs, kernel, bias = operands(batch, n, parts, features, dtype, seed=sum(parts) + features)
    y = mosaic_concat_dense.concat_dense(xs, kernel, bias, interpret=True, **settings)
    assert y.shape == (batch, n, features) and y.dtype == dtype
    expected = float64_product(xs, kernel, bias)
    got = np.asarray(jnp.asarray(y, jnp.float32), np.float64)
    rtol = 2.0 ** (-8 if dtype == jnp.bfloat16 else -11)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-5 * np.abs(expected).max())
    rounded = np.asarray(jnp.asarray(expected, jnp.float32).astype(dtype).astype(jnp.float32))
    assert np.mean(got == rounded) > 0.99


def test_through_concat_dense_it_is_the_triton_kernels_product_with_its_gradients():
    """concat_dense(implementation='mosaic') gives the Triton kernel's output (both round the float32 sum
    once; at most one ulp apart where the sums' order differs) and the XLA reference's gradients bit for
    bit; an unknown implementation, or Triton tiles with 'mosaic', are refused."""
    xs, kernel, bias = operands(2, 64, (128, 64), 128, jnp.bfloat16, seed=5)
    mosaic = pallas_concat_dense.concat_dense(xs, kernel, bias, implementation="mosaic", interpret=True)
    triton = pallas_concat_dense.concat_dense(xs, kernel, bias, interpret=True)
    got, want = np.asarray(mosaic, np.float32), np.asarray(triton, np.float32)
    assert np.abs(got - want).max() <= 2.0 ** -7 * np.abs(want).max()
    assert np.mean(got == want) > 0.99
    dy = jax.random.normal(jax.random.key(6), (2, 64, 128), jnp.bfloat16)

    def loss(product):
        return lambda xs, kernel, bias: jnp.vdot(product(xs, kernel, bias).astype(jnp.float32),
                                                 dy.astype(jnp.float32))

    def mosaic_product(*a):
        return pallas_concat_dense.concat_dense(*a, implementation="mosaic", interpret=True)

    grads = jax.grad(loss(mosaic_product), argnums=(0, 1, 2))(xs, kernel, bias)
    reference = jax.grad(loss(pallas_concat_dense.reference), argnums=(0, 1, 2))(xs, kernel, bias)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))
    with pytest.raises(ValueError, match=r"implementation 'cutlass' is not one of \('triton', 'mosaic'\)"):
        pallas_concat_dense.concat_dense(xs, kernel, bias, implementation="cutlass")
    with pytest.raises(ValueError, match="takes none of the Triton tiles"):
        pallas_concat_dense.concat_dense(xs, kernel, bias, implementation="mosaic", block_n=64,
                                         interpret=True)


@pytest.mark.parametrize("parts,features,rows,dtype,settings,message", [
    ((64,), 64, 128, jnp.float32, {}, "must be bfloat16 or float16"),
    ((64,), 64, 128, jnp.bfloat16, dict(block_m=96), "block_m = 96 must be a multiple of 64"),
    ((64,), 64, 128, jnp.bfloat16, dict(block_n=8), "block_n = 8 must be a multiple of 16 from 16 to 256"),
    ((64,), 512, 128, jnp.bfloat16, dict(block_n=512), "block_n = 512 must be a multiple of 16"),
    ((64,), 64, 128, jnp.bfloat16, dict(block_k=32), "block_k = 32 must be 64"),
    ((64,), 256, 256, jnp.bfloat16, dict(block_m=256, block_n=256, steps=8), "bytes of shared memory"),
    ((64,), 64, 192, jnp.bfloat16, {}, "B·N = 192 positions must be a multiple of block_m = 128"),
    ((64,), 96, 128, jnp.bfloat16, dict(block_n=64), "F = 96 output channels must be a multiple of block_n"),
    ((64, 96), 64, 128, jnp.bfloat16, {},
     r"every part's channels \(\[64, 96\]\) must be a multiple of block_k = 64"),
])
def test_unsupported_operands_and_settings_raise(parts, features, rows, dtype, settings, message):
    """unsupported_reason says why, and concat_dense raises ValueError with it."""
    reason = mosaic_concat_dense.unsupported_reason(parts, features, rows, dtype, **settings)
    assert reason is not None and re.search(message, reason)
    xs = tuple(jnp.zeros((1, rows, c), dtype) for c in parts)
    with pytest.raises(ValueError, match=message):
        mosaic_concat_dense.concat_dense(xs, jnp.zeros((sum(parts), features), dtype), jnp.zeros(features),
                                         interpret=True, **settings)


def test_runs_only_on_hopper_gpus_unless_interpreted():
    """Compiled, the kernel needs an NVIDIA GPU of compute capability 9.x (and jax ≥ 0.11): elsewhere a
    ValueError names the Triton kernel instead."""
    xs, kernel, bias = operands(1, 128, (64,), 64, jnp.bfloat16)
    with pytest.raises(ValueError, match=r"use jdiff\.models\.pallas_concat_dense\.concat_dense\("
                                         r"implementation='triton'\)"):
        mosaic_concat_dense.concat_dense(xs, kernel, bias)


def test_the_defaults_take_the_unets_decoder_products():
    """block_m 128, block_n the largest power of two ≤ 128 dividing F, block_k 64, 4 buffers: the decoder's
    skip products at batch 512 (and for one image's positions, as ResBlock.reads_parts asks for the
    Triton kernel) and its attention output's shape."""
    assert mosaic_concat_dense.default_block_n(256) == 128 and mosaic_concat_dense.default_block_n(48) == 16
    for n, parts, features in [(16, (256, 256), 256), (64, (256, 256), 256), (256, (256, 256), 256),
                               (1024, (128, 128), 128), (256, (256,), 256)]:
        assert mosaic_concat_dense.unsupported_reason(parts, features, 512 * n, jnp.bfloat16) is None
    assert mosaic_concat_dense.unsupported_reason((256, 256), 256, 16, jnp.bfloat16) is not None  # < block_m


@pytest.mark.parametrize("parts,features,positions,dtype,preferred", [
    ((256, 256), 256, 256, jnp.bfloat16, True),  # 16×16: 114.0 against the Triton kernel's 130.1 µs
    ((256, 256), 256, 256, jnp.float16, True),
    ((128, 128), 128, 1024, jnp.bfloat16, False),  # 32×32: 156.9 against 143.5 µs
    ((256, 256), 256, 64, jnp.bfloat16, False),  # 8×8: one image is less than block_m = 128 positions
    ((256, 256), 256, 16, jnp.bfloat16, False),  # 4×4
    ((256, 256), 256, 256, jnp.float32, False),
    ((256, 96), 256, 256, jnp.bfloat16, False),  # 96 channels: not whole steps of 64
])
def test_preferred_on_hopper_at_16x16_and_only_where_one_image_fits_its_tiles(
        monkeypatch, parts, features, positions, dtype, preferred):
    """On a Hopper GPU with jax ≥ 0.11 (faked), the kernel is preferred for images of at most 256 positions
    whose product it takes; on this machine's CPU, or with jax 0.10, never."""
    assert not mosaic_concat_dense.preferred(parts, features, positions, dtype)
    on_a_fake_hopper(monkeypatch, jax_011=False)
    assert not mosaic_concat_dense.preferred(parts, features, positions, dtype)
    on_a_fake_hopper(monkeypatch)
    assert mosaic_concat_dense.preferred(parts, features, positions, dtype) is preferred


def test_the_unets_skip_product_takes_the_mosaic_kernel_where_preferred(monkeypatch):
    """ConcatConv1x1(implementation='auto') computes its product with the Mosaic kernel where preferred
    (Hopper faked; interpreted here) at 16×16, with the Triton kernel's output (at most one ulp apart where
    the sums' order differs) and the same parameters, and with the Triton kernel at 32×32; 'triton' and
    'mosaic' force one; an unknown implementation is refused."""
    monkeypatch.setattr(mosaic_concat_dense, "runs_here", lambda: True)
    rng = np.random.default_rng(0)
    parts = tuple(jnp.asarray(rng.normal(size=(1, 16, 16, 64)), jnp.bfloat16) for _ in range(2))

    def run(implementation, xs=parts):
        layer = ConcatConv1x1(64, interpret=True, implementation=implementation, dtype=jnp.bfloat16)
        params = layer.init(jax.random.key(0), xs)
        jaxpr = str(jax.make_jaxpr(lambda p: layer.apply(p, xs))(params))
        return np.asarray(layer.apply(params, xs), np.float32), jaxpr, params

    auto, auto_jaxpr, auto_params = run("auto")
    triton, triton_jaxpr, triton_params = run("triton")
    assert "concat_dense_tma" in auto_jaxpr and "concat_dense_tma" not in triton_jaxpr
    assert jax.tree.map(jnp.shape, auto_params) == jax.tree.map(jnp.shape, triton_params)
    assert np.abs(auto - triton).max() <= 2.0 ** -7 * np.abs(triton).max() and np.mean(auto == triton) > 0.99
    assert "concat_dense_tma" in run("mosaic")[1]
    large = tuple(jnp.zeros((1, 32, 32, 64), jnp.bfloat16) for _ in range(2))
    assert "concat_dense_tma" not in run("auto", large)[1]
    with pytest.raises(ValueError, match=r"implementation 'cutlass' is not 'auto' or one of"):
        run("cutlass")


@needs_jax_011
def test_interpreted_pipelines_have_no_races():
    """The interpreter's happens-before race detector on 2 CTAs taking 4 tiles each, two parts through
    2-buffer pipelines: no TMA copy into a buffer its wgmma still reads, no output tile rewritten before its
    store read it."""
    try:
        from jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks import get_races
    except ImportError as error:  # a private module of jax's; it may move
        pytest.skip(f"jax's interpreter no longer exposes its race state here: {error}")
    xs, kernel, bias = operands(2, 128, (128, 64), 128, jnp.bfloat16, seed=7)
    y = mosaic_concat_dense.concat_dense(xs, kernel, bias, block_m=64, block_n=64, steps=2,
                                         interpret=mosaic_gpu.interpret_params(detect_races=True))
    y.block_until_ready()
    assert get_races().races_found is False


@needs_jax_011
@pytest.mark.parametrize("n,parts,features", [(1024, (128, 128), 128), (256, (256, 256), 256)])
def test_lowers_for_the_gpu_at_the_unets_decoder_shapes(monkeypatch, n, parts, features):
    """Mosaic GPU's lowering (layouts, swizzled wgmma operands, TMA, barriers) of the decoder's skip products
    at batch 512, done on the CPU for the CUDA platform: what the interpreter does not check."""
    on_a_fake_hopper(monkeypatch)
    xs = tuple(jax.ShapeDtypeStruct((512, n, c), jnp.bfloat16) for c in parts)
    kernel = jax.ShapeDtypeStruct((sum(parts), features), jnp.float32)
    bias = jax.ShapeDtypeStruct((features,), jnp.float32)

    def product(xs, kernel, bias):
        return pallas_concat_dense.concat_dense(xs, kernel, bias, implementation="mosaic")

    text = jax.jit(product).trace(xs, kernel, bias).lower(lowering_platforms=("cuda",)).as_text()
    assert "concat_dense_tma" in text and "concatenate" not in text
