"""The ADM UNet: parameter counts and state-dict structure of the official model, initialisation,
precision, dropout, validation.

Forward equality with the official PyTorch UNet is in test_convert.py (it needs converted weights).
"""

import hashlib
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jdiff.convert import convert_state_dict, official_shapes
from jdiff.models import UNet, create_model, init_inputs, param_shapes, unet_kwargs_from_flags
from jdiff.models.group_norm import GroupNorm
from jdiff.models.layers import (QKVProjection, TapConv3x3, Upsample, UpsampleConv, attention_implementation,
                                 conv2d, conv3x3_by_taps, upsample_conv, upsample_nearest, upsampling_kernel)

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "unet_fixture.npz")

# Parameter counts of guided-diffusion's create_model(**flags) (ADM-ES at 54ad3ad, torch 2.13, counted by
# experiments/make_unet_fixture.py); flags not given are the official defaults.
OFFICIAL_PARAM_COUNTS = {
    # ADM-ES CIFAR-10 (its README's sampling command)
    "adm_es_cifar10": (dict(image_size=32, num_channels=128, num_res_blocks=3, num_head_channels=32,
                            attention_resolutions="16,8", resblock_updown=True, use_new_attention_order=True,
                            learn_sigma=True, dropout=0.3, use_scale_shift_norm=True), 57_094_662),
    # Debias CelebA-HQ 256 (its README's training command)
    "debias_celebahq256": (dict(image_size=256, num_channels=128, num_res_blocks=1, num_head_channels=64,
                                attention_resolutions="16", resblock_updown=True, learn_sigma=True,
                                use_scale_shift_norm=True), 93_563_910),
    # the Debias flags at 64 px, class-conditional (1000 classes)
    "debias_flags_64_cond": (dict(image_size=64, num_channels=128, num_res_blocks=1, num_head_channels=64,
                                  attention_resolutions="16", resblock_updown=True, learn_sigma=True,
                                  use_scale_shift_norm=True, class_cond=True), 68_671_622),
}

# SHA-256 of the sorted "key:shape" lines of the official state dict for the same flags (same provenance):
# pins where attention, skip convs and resampling blocks sit, which the count alone does not.
OFFICIAL_STRUCTURE_SHA256 = {
    "adm_es_cifar10": "0733ab8df120de7454cd3ac77f92721c32b0977623bfabeab76f854c8d624ee2",
    "debias_celebahq256": "c9c5b6c1830eb048b39b0793848b5aabf793ddc897684d0ab00fbb36cef3153e",
    "debias_flags_64_cond": "feae9e31f72de8bb6c2340c1d6f2547da68cb8002250b0be59dd25270e89a0de",
}

TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
            attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True,
            resblock_updown=True, use_new_attention_order=True, learn_sigma=True)


def count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def fixture_model(name, **overrides):
    """Config NAME of the fixture: its UNet (with ``overrides``), converted params, inputs and the official
    output."""
    with np.load(FIXTURE) as data:
        prefix = f"{name}/state/"
        state = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
        params, kwargs = convert_state_dict(state, json.loads(str(data[f"{name}/flags"])))
        y = data[f"{name}/y"] if f"{name}/y" in data.files else None
        inputs = (data[f"{name}/x"].astype(np.float32), data[f"{name}/t"], y)
        official = data[f"{name}/out"]
    return UNet(**dict(kwargs, **overrides)), params, inputs, official


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAM_COUNTS))
def test_parameter_count_and_structure_equal_official(name):
    flags, expected = OFFICIAL_PARAM_COUNTS[name]
    assert count(param_shapes(create_model(**flags))) == expected
    text = "\n".join(f"{key}:{shape}" for key, shape in sorted(official_shapes(flags).items()))
    assert hashlib.sha256(text.encode()).hexdigest() == OFFICIAL_STRUCTURE_SHA256[name]


def test_fresh_model_has_zero_output_convs_and_torch_init():
    model = UNet(**TINY)
    x, t, y = init_inputs(model, 2)
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x, t, y, train=False), x, t, y,
                                             train=False))
    assert out.shape == (2, 16, 16, 6) and out.dtype == jnp.float32
    # One level and no attention but the middle one: every kind of layer, and fast to compile (the RNG
    # of ~100 initialisers dominates; rbg keys compile faster than threefry on the CPU).
    small = model.clone(image_size=8, channel_mult=(1,), attention_resolutions=())
    params = jax.jit(lambda key: small.init(key, *init_inputs(small), train=False))(
        jax.random.key(0, impl="unsafe_rbg"))
    for path, value in traverse_util.flatten_dict(params["params"]).items():
        if path[-2] in ("out_2", "out_layers_3", "proj_out"):  # official zero_module: the output is 0
            np.testing.assert_array_equal(value, 0.0, err_msg=str(path))
        elif path[-1] == "kernel":  # U(±1/√fan_in), fan_in = all axes but the output one
            bound = 1 / math.sqrt(math.prod(value.shape[:-1]))
            assert 0.5 * bound < np.abs(value).max() <= bound, path


def test_bfloat16_compute_is_close_to_float32_and_params_stay_float32():
    model, params, inputs, official = fixture_model("a")
    bf16 = model.clone(dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(param_shapes(bf16))} == {jnp.dtype(jnp.float32)}
    out = jax.jit(lambda p: bf16.apply({"params": p}, *inputs, train=False))(params)
    assert out.dtype == jnp.float32
    rel = float(jnp.abs(out - official).max() / np.abs(official).max())
    assert 1e-4 < rel < 5e-2, rel  # bf16 did run (float32 agrees to 1e-5) and stays close


@pytest.mark.parametrize("name", ["a", "b"])
def test_one_pass_norm_variance_matches_the_official_output(name):
    """One-pass (shifted) GroupNorm statistics: the same network to float32 rounding."""
    model, params, inputs, official = fixture_model(name)
    out = jax.jit(lambda p: model.clone(one_pass_norm=True).apply({"params": p}, *inputs,
                                                                  train=False))(params)
    rel = float(jnp.abs(out - official).max() / np.abs(official).max())
    assert rel < 1e-5, rel


def test_upsampling_kernel_sums_the_taps_that_read_one_source_pixel():
    """K[u, v] for 1-D taps (w0, w1, w2) along each axis: (w0, w0 + w1, w1 + w2, w2)."""
    w = np.arange(1.0, 10.0, dtype=np.float32).reshape(3, 3)
    sums = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)
    got = np.asarray(upsampling_kernel(jnp.asarray(w).reshape(3, 3, 1, 1)))[..., 0, 0]
    np.testing.assert_array_equal(got, sums @ w @ sums.T)


def test_upsample_conv_kernel_is_an_explicit_reversal():
    """The convolution's kernel is a ``rev`` of the (reversed) combined kernel: the form in which XLA hands a
    dilated-input convolution to cuDNN's backward-data kernel instead of writing out the dilated input."""
    x, kernel = jnp.zeros((1, 4, 4, 8), jnp.bfloat16), jnp.zeros((3, 3, 8, 8), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(upsample_conv)(x, kernel)
    conv, = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    producer, = [e for e in jaxpr.eqns if conv.invars[1] in e.outvars]
    while producer.primitive.name in ("pjit", "jit"):  # jnp.flip is a jitted function
        producer, = producer.params["jaxpr"].jaxpr.eqns
    assert producer.primitive.name == "rev" and producer.params["dimensions"] == (0, 1)
    assert conv.params["lhs_dilation"] == (2, 2) and conv.params["window_strides"] == (1, 1)


class UpsampleThenConv(nn.Module):
    """The official Upsample: nearest-neighbour, then a 3×3 conv named 'conv'."""
    @nn.compact
    def __call__(self, x):
        return conv2d(upsample_nearest(x), x.shape[-1], name="conv")


@pytest.mark.parametrize("shape", [(2, 4, 4, 8), (1, 3, 5, 6), (3, 1, 2, 5)])
def test_upsample_is_the_conv_of_the_upsampled_input(shape):
    """Upsample (one UpsampleConv) = conv2d(upsample_nearest(x)): the same parameters and initialisation,
    outputs and gradients (of x and the parameters) to float32 rounding, bfloat16 compute to its rounding."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    layer, reference = Upsample(), UpsampleThenConv()
    params = jax.jit(layer.init)(jax.random.key(3), x)
    reference_params = reference.init(jax.random.key(3), x)
    assert jax.tree.structure(params) == jax.tree.structure(reference_params)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    def loss(apply, p, x):
        y = apply(p, x)
        return jnp.sum(y * jnp.cos(y)), y  # a cotangent that varies over the output

    def value_and_grads(apply):
        return jax.value_and_grad(lambda p, x: loss(apply, p, x), argnums=(0, 1), has_aux=True)(params, x)
    (_, got), got_grads = value_and_grads(layer.apply)
    (_, want), want_grads = value_and_grads(reference.apply)
    assert got.shape == (shape[0], 2 * shape[1], 2 * shape[2], shape[3])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)
    bf16 = layer.clone(dtype=jnp.bfloat16).apply(params, x)
    assert bf16.dtype == jnp.bfloat16
    scale = float(jnp.abs(want).max())
    assert 1e-4 * scale < float(jnp.abs(bf16.astype(jnp.float32) - want).max()) < 2e-2 * scale


def test_upsample_conv_hands_its_bias_apart():
    """UpsampleConv(bias_apart=True) returns the conv without its bias and the bias parameter, which sum to
    its output (the up-sampling ResBlock hands the bias to the GroupNorm that reads the conv's output)."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 8)), jnp.float32)
    layer = UpsampleConv(16)
    params = layer.init(jax.random.key(0), x)
    y, bias = layer.apply(params, x, bias_apart=True)
    np.testing.assert_array_equal(np.asarray(bias), np.asarray(params["params"]["bias"]))
    np.testing.assert_allclose(np.asarray(y + bias), np.asarray(layer.apply(params, x)), rtol=1e-6, atol=1e-6)


def test_conv_by_taps_is_the_3x3_convolution():
    """conv3x3_by_taps against a direct float64 sum over the 3×3 window (zero padding), and TapConv3x3
    against conv2d with the same parameters: outputs, and gradients of x and the parameters."""
    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=(2, 5, 7, 8)), rng.normal(size=(3, 3, 8, 6))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(padded[:, u:u + 5, v:v + 7] @ kernel[u, v] for u in range(3) for v in range(3))
    got = conv3x3_by_taps(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    class Conv(nn.Module):
        @nn.compact
        def __call__(self, x):
            return conv2d(x, 6, name="conv")
    x = jnp.asarray(x, jnp.float32)
    layer = TapConv3x3(6)
    params = layer.init(jax.random.key(0), x)
    reference = Conv().init(jax.random.key(0), x)["params"]["conv"]
    assert jax.tree.map(jnp.shape, params["params"]) == jax.tree.map(jnp.shape, reference)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)

    def value_and_grads(apply, p):
        return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), argnums=(0, 1))(p, x)
    got, got_grads = value_and_grads(layer.apply, params)
    want, want_grads = value_and_grads(Conv().apply, {"params": {"conv": params["params"]}})
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    got_grads = (got_grads[0]["params"], got_grads[1])
    want_grads = (want_grads[0]["params"]["conv"], want_grads[1])
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                                   atol=1e-4 * float(jnp.abs(w).max()))


@pytest.mark.parametrize("new_order", [True, False])
def test_qkv_projection_equals_slicing_one_product(new_order):
    """q, k, v from the split kernel are the slices of the official single 3C-wide product (k and v without
    their biases, v's bias returned apart)."""
    channels, heads, d = 64, 4, 16
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, channels)), jnp.float32)
    proj = QKVProjection(heads, new_order)
    params = proj.init(jax.random.key(0), x)
    q, k, v, v_bias = proj.apply(params, x)
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    layout, qkv_axis = ((3, heads, d), -3) if new_order else ((heads, 3, d), -2)

    def split(t):  # (..., 3C) → (3, ..., heads, d)
        return jnp.moveaxis(t.reshape(*t.shape[:-1], *layout), qkv_axis, 0)
    want = split(x @ kernel + bias)
    biases = split(bias)
    for got, expected in zip((q, k + biases[1], v + biases[2]), want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v_bias), np.asarray(biases[2]).reshape(channels), rtol=0, atol=0)
    qkv, q_bias, fused_v_bias = proj.apply(params, x, fused=True)  # the one product, without biases
    np.testing.assert_allclose(np.asarray(qkv), np.asarray(x @ kernel), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(q_bias), np.asarray(biases[0]).reshape(channels))
    np.testing.assert_array_equal(np.asarray(fused_v_bias), np.asarray(v_bias))


def test_attention_without_k_and_v_biases_is_the_official_attention():
    """Dropping k's bias and folding v's into the output projection (ShiftedDense) gives the attention of
    the official layer with all three biases, for non-zero weights everywhere."""
    from jdiff.models.layers import AttentionBlock, ShiftedDense

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 32)), jnp.float32)
    block = AttentionBlock(num_heads=2, use_new_attention_order=True, implementation="xla")
    params = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype),
                          block.init(jax.random.key(0), x))["params"]
    got = block.apply({"params": params}, x)
    tokens = x.reshape(2, 16, 32)
    normed = GroupNorm().apply({"params": params["norm"]}, tokens, out_dtype=jnp.float32)
    qkv = (normed @ params["qkv"]["kernel"] + params["qkv"]["bias"]).reshape(2, 16, 3, 2, 16)
    a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation="xla")
    out = params["proj_out"]
    want = x + (a.reshape(2, 16, 32) @ out["kernel"] + out["bias"]).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    shift = jnp.arange(32.0)
    np.testing.assert_allclose(np.asarray(ShiftedDense(32).apply({"params": out}, tokens, shift)),
                               np.asarray((tokens + shift) @ out["kernel"] + out["bias"]), rtol=1e-5,
                               atol=1e-3)


def test_attention_implementation_auto_and_choices(monkeypatch):
    assert attention_implementation("xla", jnp.bfloat16, 32) == "xla"
    assert attention_implementation("cudnn", jnp.float32, 32) == "cudnn"  # as asked; cuDNN itself refuses f32
    assert attention_implementation("auto", jnp.bfloat16, 32) == ("cudnn" if jax.default_backend() == "gpu"
                                                                  else "xla")

    class FakeGpu:
        compute_capability = "9.0"

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda: [FakeGpu()])
    assert attention_implementation("auto", jnp.bfloat16, 32) == "cudnn"
    assert attention_implementation("auto", jnp.float16, 128) == "cudnn"
    # cuDNN flash attention is 16-bit only
    assert attention_implementation("auto", jnp.float32, 32) == "xla"
    assert attention_implementation("auto", jnp.bfloat16, 256) == "xla"   # head too wide
    assert attention_implementation("auto", jnp.bfloat16, 20) == "xla"    # not a multiple of 8
    FakeGpu.compute_capability = "7.5"                                     # a T4: no cuDNN flash attention
    assert attention_implementation("auto", jnp.bfloat16, 32) == "xla"
    del FakeGpu.compute_capability                                         # a GPU that is not CUDA
    assert attention_implementation("auto", jnp.bfloat16, 32) == "xla"
    with pytest.raises(ValueError, match="'auto', 'xla', 'cudnn', 'pallas'"):
        attention_implementation("", jnp.bfloat16, 32)
    with pytest.raises(ValueError, match="compute capability 8.0"):
        attention_implementation("pallas", jnp.bfloat16, 32, shape=(2, 64, 8, 32))


def test_auto_attention_takes_the_pallas_kernel_for_short_undifferentiated_sequences(monkeypatch):
    class FakeGpu:
        compute_capability = "9.0"

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda: [FakeGpu()])
    # without the Mosaic GPU kernel (jax 0.10), which takes L = 256 on Hopper: tests/test_mosaic_attention.py
    monkeypatch.setattr("jdiff.models.mosaic_gpu.jax_supports_it", lambda: False)
    short, long = (512, 64, 8, 32), (512, 256, 8, 32)
    assert attention_implementation("auto", jnp.bfloat16, 32, shape=short, differentiated=False) == "pallas"
    assert attention_implementation("auto", jnp.bfloat16, 32, shape=(512, 16, 8, 32),
                                    differentiated=False) == "pallas"
    assert attention_implementation("auto", jnp.bfloat16, 32, shape=short, differentiated=True) == "cudnn"
    assert attention_implementation("auto", jnp.bfloat16, 32, shape=long, differentiated=False) == "cudnn"
    assert attention_implementation("auto", jnp.float32, 32, shape=short, differentiated=False) == "xla"
    assert attention_implementation("auto", jnp.bfloat16, 32) == "cudnn"  # no shape: not the kernel
    assert attention_implementation("pallas", jnp.bfloat16, 32, shape=short) == "pallas"
    with pytest.raises(ValueError, match="L = 256"):
        attention_implementation("pallas", jnp.bfloat16, 32, shape=long)
    FakeGpu.compute_capability = "7.5"
    assert attention_implementation("auto", jnp.bfloat16, 32, shape=short, differentiated=False) == "xla"


def test_attention_block_with_the_pallas_kernel_computes_cudnns_network(monkeypatch):
    """The block with implementation='pallas' (the kernel in the interpreter) against the same block with
    XLA's attention, same weights, bf16 compute: within bf16 rounding, and the gradients run (XLA's
    backward)."""
    from jdiff.models import pallas_attention
    from jdiff.models.layers import AttentionBlock
    monkeypatch.setattr("jdiff.models.layers.nvidia_sm80_or_newer", lambda: True)
    monkeypatch.setattr("jdiff.models.pallas_attention.nvidia_sm80_or_newer", lambda: True)  # kernel_for's
    kernel, calls = pallas_attention.attention_from_qkv, []
    monkeypatch.setattr(pallas_attention, "attention_from_qkv", lambda qkv, q_bias, **kw: calls.append(
        qkv.shape) or kernel(qkv, q_bias, interpret=True, **kw))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 64))
    block = AttentionBlock(num_head_channels=16, use_new_attention_order=True, dtype=jnp.bfloat16)
    params = block.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params)
    calls.clear()  # init ran 'auto', which here (a GPU, sampling) is the kernel too
    got = block.clone(implementation="pallas").apply(params, x)
    want = block.clone(implementation="xla").apply(params, x)
    assert calls == [(2, 16, 3 * 64)]  # the q|k|v product, read by the kernel
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=0.02, atol=0.02)
    assert float(jnp.max(jnp.abs(got - x))) > 0.05  # the attention branch is not zero
    grad = jax.grad(lambda p: jnp.sum(block.clone(implementation="pallas").apply(p, x).astype(jnp.float32)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad(params)))


def test_dropout_draws_from_the_dropout_key_in_training():
    model, params, inputs, official = fixture_model("a")  # dropout 0.1
    apply = jax.jit(lambda key: model.apply({"params": params}, *inputs, train=True, rngs={"dropout": key}))
    a, b = apply(jax.random.key(1)), apply(jax.random.key(2))
    assert float(jnp.abs(a - b).max()) > 1e-3 and float(jnp.abs(a - official).max()) > 1e-3
    np.testing.assert_array_equal(a, apply(jax.random.key(1)))


def test_norms_take_their_vectors_unbroadcast_in_sampling_and_broadcast_in_training():
    """Every GroupNorm without a scale-shift hands normalise_affine its (C,) vectors when sampling, and
    (B, C) broadcasts in training (GroupNorm's docstring says why); the scale-shift norms take (B, C)."""
    model, params, inputs, _ = fixture_model("a")
    batch = inputs[0].shape[0]

    def affine_ranks(train):
        jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, *inputs, train=train,
                                                     rngs={"dropout": jax.random.key(0)}))(params).jaxpr
        shapes = [e.invars[1].aval.shape for e in jaxpr.eqns if e.primitive.name.startswith("custom_vjp_call")
                  and len(e.invars[0].aval.shape) == 3]
        assert shapes and all(s[-1] > 1 and (len(s) == 1 or s[0] == batch) for s in shapes), shapes
        return sorted(len(s) for s in shapes)

    sampling, training = affine_ranks(False), affine_ranks(True)
    assert 1 in sampling and 2 in sampling, "unshifted norms (C,), scale-shift norms (B, C)"
    assert training == [2] * len(sampling)


def test_invalid_inputs_and_settings_raise():
    model = UNet(**TINY)
    x, t, _ = init_inputs(model, 2)
    init = jax.random.key(0)
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: model.init(init, x.transpose(0, 3, 1, 2), t, train=False))
    with pytest.raises(ValueError, match="t must have shape"):
        jax.eval_shape(lambda: model.init(init, x, t[:1], train=False))
    cond = model.clone(num_classes=10)
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(lambda: cond.init(init, x, t, train=False))
    with pytest.raises(ValueError, match="not feature-map sizes"):
        param_shapes(model.clone(attention_resolutions=(2,)))
    with pytest.raises(ValueError, match="num_head_channels=24"):
        param_shapes(model.clone(num_head_channels=24))
    with pytest.raises(ValueError, match="divisible by 32"):
        param_shapes(model.clone(model_channels=48))


def test_flags_follow_the_official_create_model():
    kwargs = unet_kwargs_from_flags(dict(image_size="32", num_channels="128", attention_resolutions="16,8",
                                         learn_sigma="True", class_cond="False", diffusion_steps="1000"))
    assert kwargs["channel_mult"] == (1, 2, 2, 2)  # the forks' default at 32 px
    assert kwargs["attention_resolutions"] == (16, 8)
    assert kwargs["learn_sigma"] is True and kwargs["num_classes"] is None
    assert (kwargs["num_heads"], kwargs["num_res_blocks"], kwargs["use_scale_shift_norm"]) == (4, 2, True)
    assert unet_kwargs_from_flags(dict(image_size=512))["channel_mult"] == (0.5, 1, 1, 2, 2, 4, 4)
    assert unet_kwargs_from_flags(dict(class_cond=True, num_classes=10))["num_classes"] == 10
    with pytest.raises(ValueError, match="unknown guided-diffusion flags.*num_channel'"):
        unet_kwargs_from_flags(dict(num_channel=128))
    with pytest.raises(ValueError, match="not a boolean"):
        unet_kwargs_from_flags(dict(learn_sigma="maybe"))
    with pytest.raises(ValueError, match="no default channel_mult"):
        unet_kwargs_from_flags(dict(image_size=48))


def test_cotangent_barrier_is_the_identity_and_fences_its_cotangent():
    """cotangent_barrier changes neither values nor gradients; its backward holds an optimisation barrier
    (what keeps XLA from fusing the time embedding's summed cotangent with its consumers)."""
    from jdiff.models.layers import cotangent_barrier

    x = jnp.linspace(-2.0, 3.0, 12).reshape(3, 4)

    def loss(barrier):
        return lambda x: jnp.sum(jnp.sin(barrier(x)) * x + jnp.cos(barrier(x)))

    np.testing.assert_array_equal(cotangent_barrier(x), x)
    np.testing.assert_allclose(jax.grad(loss(cotangent_barrier))(x), jax.grad(loss(lambda v: v))(x),
                               rtol=1e-6)
    assert "optimization_barrier" in jax.jit(jax.grad(loss(cotangent_barrier))).lower(x).as_text()
    assert "optimization_barrier" not in jax.jit(loss(cotangent_barrier)).lower(x).as_text()


def test_sampling_split_keeps_the_upsampling_reversal_and_no_weight_conversion_in_the_loop():
    """samplers.split_weight_computation of the bf16 UNet (as make_generate_fn splits it): the loop body keeps
    each transposed conv's kernel reversal (jnp.flip: XLA runs the conv as cuDNN's backward-data kernel only
    when the reversal is in view) and converts no weight; the body computes the whole network's bits."""
    from jdiff.samplers import split_weight_computation

    model = UNet(**TINY, dtype=jnp.bfloat16)
    x, t, _ = init_inputs(model, batch=2)
    params = model.init(jax.random.key(0), x, t, train=False)["params"]
    params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape), params)

    def apply(p, x, t):
        return model.apply({"params": p}, x, t, train=False)
    weights, body = split_weight_computation(apply, params, x, t)
    jaxpr = jax.make_jaxpr(body)(weights, x, t).jaxpr
    weight_vars = set(jaxpr.invars[:len(weights)])
    assert sum(e.params.get("name") == "_flip" for e in jaxpr.eqns) == len(TINY["channel_mult"]) - 1
    assert [e for e in jaxpr.eqns if e.primitive.name == "convert_element_type"
            and e.invars[0] in weight_vars] == []
    x = jax.random.normal(jax.random.key(2), x.shape)
    t = jnp.asarray([10, 900], jnp.int32)
    np.testing.assert_array_equal(np.asarray(jax.jit(body)(weights, x, t)),
                                  np.asarray(jax.jit(apply)(params, x, t)))
