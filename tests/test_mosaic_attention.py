"""The Mosaic GPU attention kernel (jdiff.models.mosaic_attention) behind pallas_attention.attention_from_qkv:
the shapes it refuses and why, where jdiff chooses it, and, in Mosaic GPU's interpreter, its output against an
independent NumPy computation of the same arithmetic (the online softmax over blocks of 64 keys; both channel
orders of the q|k|v product, L of 128 and 256, so two and four compute warpgroups, head widths 16, 32 and
64, float16, several items per CTA so that the stages wrap round) and within an ulp of the whole-row softmax,
its gradients (XLA's attention's, bit for bit), the interpreter's race detector on the stages and the four
compute warpgroups' output tiles, and Mosaic GPU's lowering for CUDA at the UNet's 16×16 shape.

The interpreter stages the products' register operands and kᵀ through shared memory (its wgmma reads shared
memory only; jax 0.10's takes no transposed view), so it runs on the CI's jax 0.10 too. Two checks need jax
0.11 and are skipped there with the reason: the lowering (the Mosaic GPU API the kernel is written against)
and the race detector (jax 0.10's misses the TMA stores' races, see test_mosaic_group_norm); both passed with
jax 0.11.2 on the CPU (Python 3.12). The compiled kernel, checked against cuDNN's attention on an H200, is in
docs/benchmarks.md."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models import layers, mosaic_attention, mosaic_gpu, pallas_attention
from jdiff.models.mosaic_attention import unsupported_reason
from test_pallas_attention import reference, split_qkv

needs_jax_011 = pytest.mark.skipif(
    not mosaic_gpu.jax_supports_it(),
    reason=f"the lowering and the race detector's view of TMA stores need jax >= 0.11 (Python >= 3.12); this "
           f"is jax {jax.__version__}")


class FakeHopper:
    compute_capability = "9.0"
    core_count = 132


def on_a_fake_hopper(monkeypatch, jax_011=True):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda: [FakeHopper()])
    monkeypatch.setattr(mosaic_gpu, "jax_supports_it", lambda: jax_011)


def product(batch, tokens, heads, d, dtype=jnp.bfloat16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 2)
    qkv = (2.0 * jax.random.normal(keys[0], (batch, tokens, 3 * heads * d))).astype(dtype)
    q_bias = jax.random.normal(keys[1], (heads * d,)).astype(dtype)
    return qkv, q_bias


@pytest.mark.parametrize("shape,dtype,message", [
    ((2, 256, 8, 32), jnp.float32, "bfloat16 or float16"),
    ((2, 64, 8, 32), jnp.bfloat16, "L = 64 must be one of \\(128, 256\\)"),
    ((2, 192, 8, 32), jnp.bfloat16, "L = 192 must be one of"),
    ((2, 384, 8, 32), jnp.bfloat16, "L = 384"),
    ((2, 512, 8, 32), jnp.bfloat16, "L = 512"),
    ((2, 256, 8, 24), jnp.bfloat16, "d = 24"),
    ((2, 256, 2, 128), jnp.bfloat16, "d = 128"),
    ((2, 256, 256), jnp.bfloat16, "must be \\(B, L, heads, d\\)"),
])
def test_refuses_what_it_cannot_compute(shape, dtype, message):
    assert message.replace("\\", "") in unsupported_reason(shape, dtype) or pytest.fail(
        unsupported_reason(shape, dtype))
    assert unsupported_reason((512, 256, 8, 32), jnp.bfloat16) is None
    assert unsupported_reason((4, 128, 2, 64), jnp.float16) is None


def test_chosen_only_on_hopper_with_jax_011(monkeypatch):
    """kernel_for: the Mosaic kernel at 16×16 (L = 256) on compute capability 9.x with jax ≥ 0.11, the Triton
    one for L ≤ 64, nothing else; and the UNet's 'auto' attention takes 'pallas' for both in sampling, cuDNN
    where it is differentiated."""
    unet16, unet8 = (512, 256, 8, 32), (512, 64, 8, 32)
    assert jax.default_backend() != "gpu" and pallas_attention.kernel_for(unet16, jnp.bfloat16) is None
    on_a_fake_hopper(monkeypatch)
    assert pallas_attention.kernel_for(unet16, jnp.bfloat16) == "mosaic"
    assert pallas_attention.kernel_for(unet8, jnp.bfloat16) == "triton"
    assert pallas_attention.kernel_for((512, 1024, 8, 32), jnp.bfloat16) is None
    chosen = functools.partial(layers.attention_implementation, "auto", jnp.bfloat16, 32, shape=unet16)
    assert chosen(differentiated=False) == "pallas" and chosen(differentiated=True) == "cudnn"
    monkeypatch.setattr(mosaic_gpu, "jax_supports_it", lambda: False)  # jax 0.10
    assert pallas_attention.kernel_for(unet16, jnp.bfloat16) is None
    assert chosen(differentiated=False) == "cudnn"
    with pytest.raises(ValueError, match="Mosaic GPU's \\(Hopper, jax >= 0.11\\): it does not run here"):
        layers.attention_implementation("pallas", jnp.bfloat16, 32, shape=unet16, differentiated=False)
    FakeHopper.compute_capability = "8.0"  # an A100: Triton only
    try:
        monkeypatch.setattr(mosaic_gpu, "jax_supports_it", lambda: True)
        assert pallas_attention.kernel_for(unet16, jnp.bfloat16) is None
        assert pallas_attention.kernel_for(unet8, jnp.bfloat16) == "triton"
    finally:
        FakeHopper.compute_capability = "9.0"


def test_explicit_kernel_requests_are_checked():
    qkv, q_bias = product(2, 256, 2, 32)
    with pytest.raises(ValueError, match="kernel 'cuda' is not one of"):
        pallas_attention.attention_from_qkv(qkv, q_bias, heads=2, new_order=False, kernel="cuda")
    with pytest.raises(ValueError, match="L = 256 must be a power of two from 16 to 64"):
        pallas_attention.attention_from_qkv(qkv, q_bias, heads=2, new_order=False, kernel="triton",
                                            interpret=True)
    with pytest.raises(ValueError, match="no kernel takes q, k, v of shape \\(2, 256, 2, 32\\) here"):
        pallas_attention.attention_from_qkv(qkv, q_bias, heads=2, new_order=False)  # on the CPU
    short, short_bias = product(2, 64, 2, 32)
    with pytest.raises(ValueError, match="L = 64 must be one of"):
        pallas_attention.attention_from_qkv(short, short_bias, heads=2, new_order=False, kernel="mosaic",
                                            interpret=True)
    message = "compute capability 9.x" if mosaic_gpu.jax_supports_it() else "needs jax >= 0.11"
    with pytest.raises(ValueError, match=message):
        pallas_attention.attention_from_qkv(qkv, q_bias, heads=2, new_order=False, kernel="mosaic")


def online_reference(q, k, v, key_block=mosaic_attention.KEY_BLOCK):
    """The kernel's arithmetic in NumPy (the module docstring's equations): float32 logits of the 16-bit q, k;
    per block of ``key_block`` keys the running row maximum m' = max(m, max_row(s_j)·c) (c = log2(e)/√d),
    numerators p_j = 2^(s_j·c − m'), rounded to the input dtype for the product with v, and the running sum
    and output rescaled by 2^(m − m'); the output divided by the sum."""
    dtype = q.dtype
    q, k, v = (np.asarray(a, np.float32) for a in (q, k, v))
    scale = np.float32(np.log2(np.e) / np.sqrt(q.shape[-1]))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k)
    row_max = total = out = None
    for first in range(0, k.shape[1], key_block):
        s = logits[..., first:first + key_block]
        block_max = s.max(-1) * scale
        new_max = block_max if row_max is None else np.maximum(row_max, block_max)
        p = np.exp2(s * scale - new_max[..., None])
        rounded = np.asarray(jnp.asarray(p).astype(dtype), np.float32)
        block_out = np.einsum("bhqk,bkhd->bhqd", rounded, v[:, first:first + key_block])
        if row_max is None:
            total, out = p.sum(-1), block_out
        else:
            rescale = np.exp2(row_max - new_max)
            total, out = total * rescale + p.sum(-1), out * rescale[..., None] + block_out
        row_max = new_max
    return (out / total[..., None]).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("batch,tokens,heads,d,dtype,new_order", [
    (3, 256, 2, 32, jnp.bfloat16, False),   # the UNet's 16×16 layer (4 compute warpgroups, 4 key blocks);
    (2, 256, 3, 32, jnp.bfloat16, True),    # 6 items on 2 CTAs: the stages wrap round
    (2, 128, 2, 64, jnp.float16, False),    # two compute warpgroups, 128-byte rows
    (1, 128, 3, 16, jnp.bfloat16, True),    # 32-byte rows; 3 items on 2 CTAs: one CTA has one item
])
def test_interpreted_kernel_matches_the_arithmetic(batch, tokens, heads, d, dtype, new_order):
    """The online softmax's arithmetic (NumPy), to the output's rounding; and the whole-row softmax's (the
    Triton kernel's arithmetic), from which taking the numerators per key block moves the output by about
    an ulp."""
    qkv, q_bias = product(batch, tokens, heads, d, dtype, seed=batch + d)
    got = jax.jit(lambda a, b: pallas_attention.attention_from_qkv(
        a, b, heads=heads, new_order=new_order, kernel="mosaic", interpret=True))(qkv, q_bias)
    assert got.shape == (batch, tokens, heads, d) and got.dtype == dtype
    q, k, v = split_qkv(qkv, q_bias, heads, new_order)
    ulp = 2.0 ** -7 if dtype == jnp.bfloat16 else 2.0 ** -10  # the output's rounding to 16 bits
    got = np.asarray(got, np.float32)
    # a numerator's 16-bit rounding can flip with the last bit of exp2's float32 result (NumPy's against the
    # interpreter's): outputs near zero then move by a fraction of an ulp of v's size (|v| ~ 2 here)
    np.testing.assert_allclose(got, online_reference(q, k, v), rtol=ulp, atol=ulp * 0.25)
    # each numerator's rounding happens at another scale in the two forms: within an ulp
    np.testing.assert_allclose(got, reference(q, k, v), rtol=2 * ulp, atol=ulp)


def test_interpreted_kernel_gradients_are_xlas():
    """The custom VJP's backward is XLA's attention of the same slices: gradients for the product and b_q."""
    heads = 2
    qkv, q_bias = product(2, 128, heads, 32, seed=5)

    def fused(a, b):
        return pallas_attention.attention_from_qkv(a, b, heads=heads, new_order=False, kernel="mosaic",
                                                   interpret=True)
    cotangent = jax.random.normal(jax.random.key(6), (2, 128, heads, 32))

    def loss(fn):
        return lambda a, b: jnp.sum(fn(a, b).astype(jnp.float32) * cotangent)

    def xla(a, b):
        return jax.nn.dot_product_attention(*split_qkv(a, b, heads, False), implementation="xla")
    for g, w in zip(jax.jit(jax.grad(loss(fused), argnums=(0, 1)))(qkv, q_bias),
                    jax.jit(jax.grad(loss(xla), argnums=(0, 1)))(qkv, q_bias)):
        assert float(jnp.max(jnp.abs(w.astype(jnp.float32)))) > 0
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


@needs_jax_011
def test_interpreted_stages_and_warpgroups_have_no_races():
    """The interpreter's happens-before race detector with 5 items on 2 CTAs: no TMA copy into a stage before
    all four compute warpgroups released it, no read of a stage before its copy, no output tile rewritten
    before its store read it."""
    try:
        from jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks import get_races
    except ImportError as error:  # a private module of jax's; it may move
        pytest.skip(f"jax's interpreter no longer exposes its race state here: {error}")
    qkv, q_bias = product(5, 256, 1, 32, seed=9)
    got = pallas_attention.attention_from_qkv(qkv, q_bias, heads=1, new_order=False, kernel="mosaic",
                                              interpret=mosaic_gpu.interpret_params(detect_races=True))
    got.block_until_ready()
    assert get_races().races_found is False


@needs_jax_011
@pytest.mark.parametrize("new_order", [False, True])
def test_lowers_for_the_gpu_at_the_unets_16x16_shape(monkeypatch, new_order):
    """Mosaic GPU's lowering (register layouts, swizzled operands of the products, TMA copies, barriers) at
    batch 512, done on the CPU for the CUDA platform: what the interpreter cannot check."""
    on_a_fake_hopper(monkeypatch)
    qkv = jax.ShapeDtypeStruct((512, 256, 3 * 256), jnp.bfloat16)
    q_bias = jax.ShapeDtypeStruct((256,), jnp.bfloat16)

    def attend(qkv, q_bias):
        return pallas_attention.attention_from_qkv(qkv, q_bias, heads=8, new_order=new_order)

    text = jax.jit(attend).trace(qkv, q_bias).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_attention_mosaic_gpu" in text  # the kernel's name in profiles (profile_step's category)
