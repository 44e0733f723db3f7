"""The Mosaic GPU GroupNorm forward (jdiff.models.mosaic_group_norm): its plans for the UNet's shapes, the
inputs it refuses and why, where jdiff chooses it, and, in Mosaic GPU's interpreter, its numbers against
an independent float64 NumPy computation: per-image and shared affine parameters, an input shift, SiLU on
and off, bf16 and float32, several slabs per CTA with the buffer ring wrapping round, and a large mean
against the spread; and the interpreter's race detector on the ring.

The interpreter runs the kernel without its register layouts (jax 0.10's cannot interpret them; the values
are the same). Two tests need jax 0.11 and are skipped on the CI machine (Python 3.11, jax 0.10) with the
reason: the lowering for CUDA, which checks the layouts, and the race detector, whose jax 0.10 version
misses the TMA stores' races; both passed with jax 0.11.2 on the CPU. The kernel itself ran on an H200
(experiments/results/benchmarks/speed_h200_2026-12-01e/, docs/benchmarks.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models import mosaic_gpu, mosaic_group_norm, pallas_group_norm
from jdiff.models.group_norm import NUM_GROUPS
from jdiff.models.mosaic_group_norm import Plan, plan, unsupported_reason
from test_pallas_group_norm import as64, inputs, reference

needs_jax_011 = pytest.mark.skipif(
    not mosaic_gpu.jax_supports_it(),
    reason=f"lowering the Mosaic GPU kernel needs jax >= 0.11 (Python >= 3.12); this is jax "
           f"{jax.__version__}")


def test_plans_for_the_unet_shapes():
    """32×32 activations of the UNet, batch-independent: 16 KiB chunks of 256 positions × 32 channels, so two
    CTAs' rings of 96 KiB hold 6 chunks, a slab of 4 and more; C = 384 (groups of 12) needs 48 channels,
    24 KiB chunks, 4 per ring at two CTAs (< 5), so one CTA with 8; float32 doubles the chunks."""
    assert plan(1024, 128, 2) == Plan(channels_per_cta=32, chunk_rows=256, ring=6, ctas_per_sm=2)
    assert plan(1024, 256, 2) == Plan(channels_per_cta=32, chunk_rows=256, ring=6, ctas_per_sm=2)
    assert plan(1024, 384, 2) == Plan(channels_per_cta=48, chunk_rows=256, ring=8, ctas_per_sm=1)
    assert plan(1024, 128, 4) == Plan(channels_per_cta=32, chunk_rows=256, ring=6, ctas_per_sm=1)
    assert plan(256, 512, 2) == Plan(channels_per_cta=32, chunk_rows=256, ring=6, ctas_per_sm=2)
    assert plan(4096, 128, 2) is None  # a slab of 16 chunks and one more: 272 KiB


@pytest.mark.parametrize("shape,dtype,out_dtype,dropout,message", [
    ((2, 1024, 128), jnp.bfloat16, jnp.bfloat16, 0.1, "dropout is not implemented"),
    ((2, 1024, 128), jnp.bfloat16, jnp.float32, 0.0, "must have x's dtype bfloat16"),
    ((2, 1000, 128), jnp.bfloat16, jnp.bfloat16, 0.0, "multiple of 64"),
    ((2, 1088, 128), jnp.bfloat16, jnp.bfloat16, 0.0, "of the chunk's 256 positions"),
    ((2, 1024, 100), jnp.bfloat16, jnp.bfloat16, 0.0, "not divisible by 32 groups"),
    ((2, 4096, 128), jnp.bfloat16, jnp.bfloat16, 0.0, "fits in shared memory"),
    ((2, 1024, 128), jnp.float64, jnp.float64, 0.0, "16- or 32-bit float"),
    ((1024, 128), jnp.bfloat16, jnp.bfloat16, 0.0, r"\(B, N, C\)"),
])
def test_unsupported_inputs_are_named(shape, dtype, out_dtype, dropout, message):
    reason = unsupported_reason(shape, dtype, out_dtype, dropout=dropout)
    assert reason is not None and __import__("re").search(message, reason), reason
    assert not mosaic_group_norm.preferred(shape, dtype, out_dtype, dropout=dropout)


def test_chosen_only_on_hopper_gpus_with_jax_011():
    """On the CPU the kernel is never chosen, and asking for it says why and what to use instead;
    pallas_group_norm.forward's 'auto' then gives the Triton kernel's result."""
    assert jax.default_backend() == "cpu" and not mosaic_group_norm.runs_here()
    assert unsupported_reason((2, 1024, 128), jnp.bfloat16, jnp.bfloat16) is None
    assert not mosaic_group_norm.preferred((2, 1024, 128), jnp.bfloat16, jnp.bfloat16)
    x, a, b = inputs((1, 16, 128), jnp.float32, seed=3)
    message = "compute capability 9.x" if mosaic_gpu.jax_supports_it() else "needs jax >= 0.11"
    with pytest.raises(ValueError, match=message):
        mosaic_group_norm.forward(x, a, b)
    with pytest.raises(ValueError, match=message):
        pallas_group_norm.forward(x, a, b, kernel="mosaic")
    with pytest.raises(ValueError, match="not one of"):
        pallas_group_norm.forward(x, a, b, kernel="cuda")
    auto = pallas_group_norm.forward(x, a, b, interpret=True)
    triton = pallas_group_norm.forward(x, a, b, interpret=True, kernel="triton")
    for got, expected in zip(auto, triton):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


CASES = [  # (B, N, C), dtype, silu, a and b shared, shifted, chunk_rows, ring bytes per SM
    # 4 blocks of 32 channels × 3 images = 12 slabs over 4 CTAs: 12 chunks each through a ring of 6
    ((3, 256, 128), jnp.bfloat16, True, False, False, 64, 2 * 6 * 64 * 32 * 2),
    ((2, 128, 96), jnp.float32, False, True, True, 64, 2 * 3 * 64 * 48 * 4),  # groups of 3: 48 of 64 lanes
    ((2, 64, 384), jnp.bfloat16, True, False, True, 256, 2 * 2 * 64 * 48 * 2),  # one chunk per slab
    ((1, 256, 512), jnp.float32, True, True, False, 128, 4 * 128 * 32 * 4),  # one CTA per SM (ring 4 ≥ 3)
]


@pytest.mark.parametrize("shape,dtype,silu,shared,shifted,chunk_rows,ring_bytes", CASES)
def test_interpreted_forward_matches_float64(shape, dtype, silu, shared, shifted, chunk_rows, ring_bytes):
    batch, _, channels = shape
    x, a, b = inputs(shape, dtype, seed=sum(shape))
    if shared:
        a, b = a[0], b[0]
    rng = np.random.default_rng(channels)
    shift = jnp.asarray(rng.normal(size=channels), jnp.float32) if shifted else None
    y, mean, rstd = mosaic_group_norm.forward(x, a, b, silu=silu, shift=shift, interpret=True,
                                              chunk_rows=chunk_rows, ring_bytes_per_sm=ring_bytes)
    assert y.dtype == x.dtype and mean.dtype == rstd.dtype == jnp.float32
    assert y.shape == x.shape and mean.shape == rstd.shape == (batch, channels)
    x64 = as64(x) + (0.0 if shift is None else as64(shift))
    a64, b64 = (np.broadcast_to(as64(v), (batch, channels)) for v in (a, b))
    y64, mean64, rstd64 = reference(x64, a64, b64, NUM_GROUPS, silu, with_statistics=True)
    if dtype == jnp.bfloat16:  # the float32 result rounded once: within half a bf16 ulp, 2^-9 relative
        np.testing.assert_allclose(as64(y), y64, rtol=2**-8, atol=1e-6)
    else:
        np.testing.assert_allclose(as64(y), y64, rtol=1e-5, atol=1e-5)
    # the backward kernel's convention: the group mean less the shift, so that x̂ = (x − mean)·rstd
    np.testing.assert_allclose(as64(mean), mean64 - (0.0 if shift is None else as64(shift)), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(as64(rstd), rstd64, rtol=1e-5, atol=0)


def test_interpreted_shifted_statistics_survive_a_large_mean():
    """Mean 1000 against spreads of 0.5–3 (see test_pallas_group_norm): the shift K, each channel's mean
    over the first 64 positions, keeps the sums from cancelling."""
    x, a, b = inputs((2, 256, 128), jnp.float32, seed=7, mean=1000.0)
    # under jit (interpreted, the kernel runs outside the batch-partitioned call, which cannot lower the
    # interpreter's host callbacks)
    y = jax.jit(lambda x, a, b: mosaic_group_norm.forward(x, a, b, interpret=True, chunk_rows=64))(x, a, b)[0]
    np.testing.assert_allclose(as64(y), reference(x, a, b, NUM_GROUPS, False), rtol=0, atol=3e-4)


@needs_jax_011
@pytest.mark.parametrize("channels,shared,shifted",
                         [(128, False, False), (256, True, True), (384, False, True)])
def test_lowers_for_the_gpu_at_the_unets_32x32_shapes(monkeypatch, channels, shared, shifted):
    """Mosaic GPU's lowering (register layouts, TMA copies, the ring's barriers) of the shapes jdiff runs it
    on, at batch 512, done on the CPU for the CUDA platform: what the interpreter cannot check."""
    monkeypatch.setattr(mosaic_gpu, "runs_here", lambda: True)
    monkeypatch.setattr(mosaic_group_norm, "sm_count", lambda interpret: 132)
    x = jax.ShapeDtypeStruct((512, 1024, channels), jnp.bfloat16)
    affine = jax.ShapeDtypeStruct((channels,) if shared else (512, channels), jnp.float32)
    shift = jax.ShapeDtypeStruct((channels,), jnp.float32) if shifted else None

    def norm(x, a, b, shift):
        return mosaic_group_norm.forward(x, a, b, silu=True, shift=shift)

    text = jax.jit(norm).trace(x, affine, affine, shift).lower(lowering_platforms=("cuda",)).as_text()
    assert "group_norm_forward_tma_mosaic_gpu" in text  # the kernel's name in profiles


@pytest.mark.skipif(not mosaic_gpu.jax_supports_it(), reason=(
    f"jax {jax.__version__}'s interpreter does not see the races of the TMA engine's stores (it passed a "
    f"kernel that reloads buffers before their stores are read); jax 0.11's does"))
def test_interpreted_ring_has_no_races():
    """The interpreter's happens-before race detector on the case whose ring wraps round twice: no load
    into a buffer before its store has read it out, no read of a chunk before its load (with jax 0.11,
    checked to report races when the kernel lets five stores be pending instead of one)."""
    try:
        from jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks import get_races
    except ImportError as error:  # a private module of jax's; it may move
        pytest.skip(f"jax's interpreter no longer exposes its race state here: {error}")
    x, a, b = inputs((3, 256, 128), jnp.bfloat16, seed=11)
    y = mosaic_group_norm.forward(x, a, b, silu=True,
                                  interpret=mosaic_gpu.interpret_params(detect_races=True),
                                  chunk_rows=64, ring_bytes_per_sm=2 * 6 * 64 * 32 * 2)[0]
    y.block_until_ready()
    assert get_races().races_found is False


PARTS_CASES = [  # B, N, the parts' channels, dtype, a and b shared, shifted, chunk_rows, ring bytes per SM
    # 4 slabs of 32 channels (2 a part) × 2 images, 2 chunks each through a ring of 6
    (2, 128, (64, 64), jnp.bfloat16, False, False, 64, 2 * 6 * 64 * 32 * 2),
    # groups of 3: slabs of 48 channels, one a part; a, b shared, an input shift
    (2, 128, (48, 48), jnp.float32, True, True, 64, 2 * 3 * 64 * 48 * 4),
]


@pytest.mark.parametrize("batch,n,parts,dtype,shared,shifted,chunk_rows,ring_bytes", PARTS_CASES)
def test_interpreted_forward_of_parts_is_the_concatenations(batch, n, parts, dtype, shared, shifted,
                                                            chunk_rows, ring_bytes):
    """x given as parts (B, N, C_k), each a whole number of slabs: every slab is copied from the part that
    holds its channels, so y, mean and rstd are bit for bit the concatenation's (the copies fill the same
    ring buffers, the arithmetic is the same); y is also the float64 norm of the concatenation."""
    channels = sum(parts)
    whole, a, b = inputs((batch, n, channels), dtype, seed=n + channels)
    xs = tuple(jnp.split(whole, np.cumsum(parts)[:-1], axis=-1))
    if shared:
        a, b = a[0], b[0]
    rng = np.random.default_rng(channels)
    shift = jnp.asarray(rng.normal(size=channels), jnp.float32) if shifted else None
    kw = dict(silu=True, shift=shift, interpret=True, chunk_rows=chunk_rows, ring_bytes_per_sm=ring_bytes)
    slab = plan(n, channels, jnp.dtype(dtype).itemsize, chunk_rows=chunk_rows,
                ring_bytes_per_sm=ring_bytes).channels_per_cta
    assert all(c % slab == 0 for c in parts)  # whole slabs
    got = mosaic_group_norm.forward(xs, a, b, **kw)
    want = mosaic_group_norm.forward(whole, a, b, **kw)
    assert got[0].shape == whole.shape and got[0].dtype == dtype
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    x64 = as64(whole) + (0.0 if shift is None else as64(shift))
    a64, b64 = (np.broadcast_to(as64(v), (batch, channels)) for v in (a, b))
    y64 = reference(x64, a64, b64, NUM_GROUPS, True)
    np.testing.assert_allclose(as64(got[0]), y64, rtol=2**-8 if dtype == jnp.bfloat16 else 1e-5, atol=1e-5)


def test_parts_that_are_not_whole_slabs_are_refused():
    """Parts of 48 + 80 channels where the slabs hold 32 channels: refused by unsupported_reason, preferred
    and forward with the reason; 64 + 64 are taken."""
    shape, bf16 = (2, 1024, 128), jnp.bfloat16
    reason = unsupported_reason(shape, bf16, bf16, parts=(48, 80))
    assert reason is not None and "whole number of slabs' 32 channels" in reason
    assert unsupported_reason(shape, bf16, bf16, parts=(64, 64)) is None
    assert not mosaic_group_norm.preferred(shape, bf16, bf16, parts=(48, 80))
    xs = (jnp.zeros((2, 128, 48), bf16), jnp.zeros((2, 128, 80), bf16))
    a = jnp.ones((2, 128), jnp.float32)
    with pytest.raises(ValueError, match="whole number of slabs' 32 channels"):
        mosaic_group_norm.forward(xs, a, a, interpret=True, chunk_rows=64)


@needs_jax_011
def test_the_forward_of_parts_lowers_for_the_gpu(monkeypatch):
    """Mosaic GPU's lowering of the decoder's 32×32 norm read from its two parts (128 + 128 channels, batch
    512) for the CUDA platform on the CPU: the one kernel, with no concatenation in the program."""
    monkeypatch.setattr(mosaic_gpu, "runs_here", lambda: True)
    monkeypatch.setattr(mosaic_group_norm, "sm_count", lambda interpret: 132)
    part = jax.ShapeDtypeStruct((512, 1024, 128), jnp.bfloat16)
    affine = jax.ShapeDtypeStruct((512, 256), jnp.float32)

    def norm(h, s, a, b):
        return mosaic_group_norm.forward((h, s), a, b, silu=True)

    text = jax.jit(norm).trace(part, part, affine, affine).lower(lowering_platforms=("cuda",)).as_text()
    assert "group_norm_forward_tma_mosaic_gpu" in text and "concatenate" not in text
