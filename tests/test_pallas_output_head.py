"""The fused output head (jdiff.models.pallas_output_head), its Triton kernel run in Pallas's interpreter: the
head ε = conv3×3(SiLU(GN(h)·γ + β), W) + c against an independent float64 NumPy computation (several tiles and
one, lanes masked past C, a non-square image, 9F near its limit, a large mean), its gradients (the unfused
head's VJP), the shapes it refuses, where the UNet takes it (sampling with the GroupNorm kernels, never at
initialisation or in training), and on 4 CPU devices its per-image partitioning over a split batch. The
compiled kernel, checked against the unfused head on an H200, is in docs/benchmarks.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_helper_on_devices
from jdiff.models import group_norm, pallas_output_head
from jdiff.models.group_norm import EPS, NUM_GROUPS
from jdiff.models.unet import UNet


def operands(batch, height, width, channels, features, dtype, mean=1.0, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    x = (mean + 1.5 * jax.random.normal(keys[0], (batch, height, width, channels))).astype(dtype)
    return (x, 1.0 + 0.2 * jax.random.normal(keys[1], (channels,)),
            0.2 * jax.random.normal(keys[2], (channels,)),
            0.05 * jax.random.normal(keys[3], (3, 3, channels, features)),
            0.1 * jax.random.normal(keys[4], (features,)))


def float64_head(x, gamma, beta, kernel, bias):
    """GroupNorm (two-pass, float64), SiLU, and the 3×3 convolution with zero padding as a sum of its taps."""
    x, gamma, beta, kernel, bias = (np.asarray(jnp.asarray(v, jnp.float32), np.float64)
                                    for v in (x, gamma, beta, kernel, bias))
    batch, height, width, channels = x.shape
    groups = x.reshape(batch, height * width, NUM_GROUPS, channels // NUM_GROUPS)
    mean = groups.mean(axis=(1, 3), keepdims=True)
    variance = ((groups - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    z = ((groups - mean) / np.sqrt(variance + EPS)).reshape(x.shape) * gamma + beta
    a = np.pad(z / (1.0 + np.exp(-z)), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(np.einsum("bhwc,cf->bhwf", a[:, u:u + height, v:v + width], kernel[u, v])
               for u in range(3) for v in range(3)) + bias


CASES = [  # (B, H, W, C, F), dtype, block_n, mean of x
    ((2, 8, 8, 64, 6), jnp.bfloat16, 16, 1.0),  # 4 tiles, pass 2 in reverse
    ((1, 4, 4, 32, 3), jnp.float32, 16, 1.0),  # one tile: the image read once; groups of one channel
    ((2, 8, 8, 96, 2), jnp.bfloat16, 32, 1.0),  # 96 channels in 128 lanes
    ((1, 8, 4, 64, 14), jnp.float32, 16, 1.0),  # H ≠ W; 9F = 126 taps of 128 columns
    ((1, 8, 8, 64, 6), jnp.float32, 32, 200.0),  # the shifted sums keep the variance of a large mean
]


@pytest.mark.parametrize("shape,dtype,block_n,mean", CASES)
def test_matches_float64(shape, dtype, block_n, mean):
    args = operands(*shape, dtype, mean=mean)
    got = pallas_output_head.output_head(*args, block_n=block_n, interpret=True)
    expected = float64_head(*args)
    assert got.shape == shape[:3] + (shape[4],) and got.dtype == jnp.float32
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=2e-5 * scale, rtol=0)
    # and the unfused head in XLA, as the UNet computes it without the kernel
    np.testing.assert_allclose(got, pallas_output_head.reference(*args), atol=2e-5 * scale, rtol=0)


def test_gradients_are_the_unfused_heads():
    args = operands(2, 8, 8, 64, 6, jnp.float32)

    def loss(head):
        return lambda *a: jnp.sum(jnp.sin(head(*a)))
    fused = jax.grad(loss(lambda *a: pallas_output_head.output_head(*a, block_n=16, interpret=True)),
                     argnums=tuple(range(5)))(*args)
    unfused = jax.grad(loss(pallas_output_head.reference), argnums=tuple(range(5)))(*args)
    for got, expected in zip(fused, unfused):
        np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


@pytest.mark.parametrize("shape,features,block_n,message", [
    ((2, 64, 64), 6, 16, r"must be \(B, H, W, C\)"),
    ((1, 8, 8, 48), 6, 16, "not divisible by 32 groups"),
    ((1, 8, 8, 64), 15, 16, "135 taps"),
    ((1, 6, 6, 64), 6, 16, "multiple of block_n = 16"),
    ((1, 8, 8, 64), 6, 24, "power of two"),
])
def test_unsupported_shapes_raise(shape, features, block_n, message):
    x = jnp.zeros(shape, jnp.float32)
    channels = shape[-1]
    with pytest.raises(ValueError, match=message):
        pallas_output_head.output_head(x, jnp.ones((channels,)), jnp.zeros((channels,)),
                                       jnp.zeros((3, 3, channels, features)), jnp.zeros((features,)),
                                       block_n=block_n, interpret=True)


def test_wrong_parameter_shapes_raise():
    x, gamma, beta, kernel, bias = operands(1, 8, 8, 64, 6, jnp.float32)
    with pytest.raises(ValueError, match=r"expected γ, β \(C,\), W \(3, 3, C, F\) and c \(F,\)"):
        pallas_output_head.output_head(x, gamma, beta, kernel, bias[:5], interpret=True)
    with pytest.raises(ValueError, match="expected"):
        pallas_output_head.output_head(x, gamma[:32], beta, kernel, bias, interpret=True)


def small_unet(learn_sigma=True):
    return UNet(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                attention_resolutions=(), channel_mult=(1, 2), learn_sigma=learn_sigma, dtype=jnp.bfloat16)


def test_the_unet_samples_with_it_on_gpus_that_run_the_norm_kernels(monkeypatch):
    """With the GroupNorm kernels ('auto' on an sm80+ GPU, faked here) the undifferentiated forward ends in
    the fused head and reads the parameters 'out_0', 'out_2' as they are; training and initialisation do
    not."""
    model = small_unet()
    x, t = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,), jnp.int32)
    params = model.init(jax.random.key(0), x, t, train=False)["params"]
    on_the_cpu = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x, t, train=False))(params))
    assert "output_head" not in on_the_cpu
    monkeypatch.setattr(group_norm, "nvidia_sm80_or_newer", lambda: True)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, train=False))["params"]
    assert jax.tree.structure(abstract) == jax.tree.structure(params)  # the kernel takes no part in init

    def jaxpr(train):
        return str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x, t, train=train,
                                                        rngs={"dropout": jax.random.key(1)}))(params))
    assert "output_head" in jaxpr(train=False)
    assert "output_head" not in jaxpr(train=True)


def test_unet_output_with_the_fused_head_is_the_unfused_one(monkeypatch):
    """The UNet's sampling forward with the head's kernel (in the interpreter) against the same network with
    the head in XLA: the other layers identical (XLA's GroupNorms in both), only the head differs."""
    model = small_unet()
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    t = jnp.array([10, 500])
    params = model.init(jax.random.key(0), x, t, train=False)["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape, p.dtype), params)
    unfused = model.apply({"params": params}, x, t, train=False)
    interpreted = pallas_output_head.output_head

    def head_in_the_interpreter(*args, **kwargs):
        return interpreted(*args, block_n=16, interpret=True)
    monkeypatch.setattr(pallas_output_head, "output_head", head_in_the_interpreter)
    monkeypatch.setattr(UNet, "_fused_head", lambda self, shape, features, train, norms: not train
                        and not self.is_initializing())
    fused = model.apply({"params": params}, x, t, train=False)
    np.testing.assert_allclose(fused, unfused, atol=2e-5 * np.abs(unfused).max(), rtol=0)


def test_partitioned_over_a_sharded_batch():
    """On 4 devices with the batch split and the parameters replicated, each device runs the kernel on its
    own images (no collective in the compiled program) and the result is the unsharded one."""
    result = run_helper_on_devices("sharded_output_head.py", 4)
    assert result["collectives"] == []
    assert result["output_axis"] == "data"
    assert result["max_diff"] == 0.0
