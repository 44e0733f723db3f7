"""The Pallas GroupNorm kernels, run in Pallas's interpreter on the CPU: the forward against
``normalise_affine`` and an independent float64 NumPy computation, the backward against XLA's hand-written
VJP (itself checked against float64 autodiff in test_group_norm.py, which also runs both kernels through
that check): channel widths that are and are not powers of two, one and several row chunks and channel
blocks per image, SiLU on and off, bf16 and float32 in and out, and a large mean against the spread (where
unshifted one-pass statistics would cancel).

The interpreter proves the kernels' arithmetic and indexing, not that Triton compiles them: that is
experiments/bench_group_norm.py's check on the GPU. The partitioning rule (each device runs the kernels on
its share of a sharded batch) is checked on 4 CPU devices in a subprocess."""

import json
import re
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_helper_on_devices
from jdiff.models.group_norm import EPS, NUM_GROUPS, dropout_seeds, norm_implementation, normalise_affine
from jdiff.models import mosaic_group_norm, pallas_group_norm
from jdiff.models.pallas_group_norm import unsupported_reason


def reference(x, a, b, groups, silu, with_statistics=False):
    """y = [SiLU]((x − μ)/√(σ² + ε)·a + b) in float64 NumPy, two-pass statistics per image and group
    (and μ, (σ² + ε)^(−1/2) on each group's channels, (B, C))."""
    x, a, b = (np.asarray(v, np.float64) for v in (x, a, b))
    batch, n, channels = x.shape
    g = x.reshape(batch, n, groups, channels // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = np.square(g - mean).mean(axis=(1, 3), keepdims=True)
    z = ((g - mean) / np.sqrt(var + EPS)).reshape(x.shape) * a[:, None, :] + b[:, None, :]
    y = z / (1.0 + np.exp(-z)) if silu else z
    if not with_statistics:
        return y
    per_channel = [np.broadcast_to(v, (batch, 1, groups, channels // groups)).reshape(batch, channels)
                   for v in (mean, 1.0 / np.sqrt(var + EPS))]
    return y, *per_channel


def forward(*args, **kwargs):
    """The kernel's y alone."""
    return pallas_group_norm.forward(*args, **kwargs)[0]


def inputs(shape, dtype, seed, mean=0.0):
    """x with per-channel offsets (around ``mean``) and spreads, so groups differ; a ≈ 1, b ≈ 0."""
    rng = np.random.default_rng(seed)
    batch, _, channels = shape
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=channels) + rng.normal(size=channels) + mean
    a = rng.normal(1.0, 0.3, size=(batch, channels))
    b = rng.normal(0.0, 0.5, size=(batch, channels))
    return jnp.asarray(x, dtype), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)


def as64(v):
    return np.asarray(jnp.asarray(v, jnp.float32), np.float64)


CASES = [  # (B, N, C), input dtype, silu, kernel settings (none: the defaults)
    ((1, 16, 128), jnp.float32, False, {}),
    ((3, 64, 128), jnp.bfloat16, True, dict(block_n=16)),  # 4 row chunks, pass 2 in reverse
    ((3, 16, 384), jnp.bfloat16, False, dict(channels_per_program=24)),  # 2 groups of 12 in 32 lanes
    ((2, 32, 384), jnp.bfloat16, True, {}),  # the defaults: 8 groups of 12 in 128 lanes
    ((1, 64, 384), jnp.float32, True, dict(block_n=32, channels_per_program=96)),
    ((1, 16, 384), jnp.bfloat16, True, dict(channels_per_program=384)),  # all 32 groups in 512 lanes
    ((3, 16, 128), jnp.float32, True, dict(channels_per_program=128, block_n=8, groups=16)),
    ((2, 32, 384), jnp.bfloat16, True, dict(block_n=32, channels_per_program=24)),  # one chunk: read once
]


@pytest.mark.parametrize("shape,dtype,silu,settings", CASES)
def test_float32_output_matches_normalise_affine_and_float64(shape, dtype, silu, settings):
    x, a, b = inputs(shape, dtype, seed=sum(shape))
    groups = settings.get("groups", NUM_GROUPS)
    y, mean, rstd = pallas_group_norm.forward(x, a, b, eps=EPS, silu=silu, out_dtype=jnp.float32,
                                              interpret=True, **settings)
    assert y.dtype == mean.dtype == rstd.dtype == jnp.float32
    assert y.shape == x.shape and mean.shape == rstd.shape == a.shape
    # float32 arithmetic on the same (rounded) inputs: a few float32 roundings of values of order 1–10
    y64, mean64, rstd64 = reference(x, a, b, groups, silu, with_statistics=True)
    np.testing.assert_allclose(as64(y), y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as64(mean), mean64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as64(rstd), rstd64, rtol=1e-5, atol=0)
    expected = normalise_affine(x, a, b, groups, EPS, silu, False, jnp.float32)
    np.testing.assert_allclose(as64(y), as64(expected), rtol=1e-5, atol=1e-5)


def test_bfloat16_output_is_the_rounded_result():
    shape = (3, 16, 128)
    x, a, b = inputs(shape, jnp.bfloat16, seed=1)
    y = forward(x, a, b, silu=True, out_dtype=jnp.bfloat16, interpret=True)
    assert y.dtype == jnp.bfloat16
    exact = reference(x, a, b, NUM_GROUPS, True)
    np.testing.assert_allclose(as64(y), exact, rtol=2**-8, atol=1e-6)  # half a bf16 ulp is 2^-9 relative
    expected = normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.bfloat16)
    np.testing.assert_allclose(as64(y), as64(expected), rtol=2**-7, atol=1e-6)  # one ulp apart at most


@pytest.mark.parametrize("channels", [128, 384])
def test_shifted_statistics_survive_a_large_mean(channels):
    """Mean 1000 against spreads of 0.5–3: E[x²] − E[x]² in float32 would lose the variance (x² ≈ 10⁶ has
    an ulp of 0.06); with the first row as shift the error is that of x − μ in float32 (ulp of 1000 ≈ 6e-5)
    over σ."""
    x, a, b = inputs((2, 64, channels), jnp.float32, seed=channels, mean=1000.0)
    y = forward(x, a, b, out_dtype=jnp.float32, interpret=True, block_n=16)
    np.testing.assert_allclose(as64(y), reference(x, a, b, NUM_GROUPS, False), rtol=0, atol=3e-4)


@pytest.mark.parametrize("shape,settings,message", [
    ((2, 16, 100), {}, "not divisible by 32 groups"),
    ((2, 16, 384), dict(channels_per_program=32), "whole number of groups"),
    ((2, 16, 384), dict(channels_per_program=72), "divide C"),
    ((2, 16, 128), dict(block_n=12), "power of two"),
    ((2, 16, 128), dict(block_n=32), "multiple of block_n"),
    ((16, 128), {}, r"\(B, N, C\)"),
])
def test_unsupported_settings_raise(shape, settings, message):
    assert unsupported_reason(shape, jnp.float32, **settings)
    x = jnp.zeros(shape, jnp.float32)
    a = jnp.ones((shape[0], shape[-1]), jnp.float32)
    with pytest.raises(ValueError, match=message):
        pallas_group_norm.forward(x, a, a, interpret=True, **settings)
    if len(shape) == 3:
        with pytest.raises(ValueError, match=message):
            pallas_group_norm.backward(x, x, a, a, a, a, interpret=True, **settings)


def test_default_settings_fit_the_unet_shapes():
    for n in (1024, 256, 64, 16):
        for channels in (128, 256, 384, 512):
            for dtype in (jnp.bfloat16, jnp.float32):
                assert unsupported_reason((512, n, channels), dtype) is None
    assert unsupported_reason((2, 48, 128), jnp.float32) is None  # N not a power of two: smaller chunks
    for (n, channels), (block_n, cpp, _) in pallas_group_norm.TUNED_BACKWARD.items():
        assert unsupported_reason((128, n, channels), jnp.bfloat16, block_n=block_n,
                                  channels_per_program=cpp) is None
    for (n, channels), (block_n, cpp, _) in pallas_group_norm.TUNED_FORWARD.items():
        assert n <= pallas_group_norm.GROUPED_MAX_POSITIONS  # measured in the grouped layout 'auto' takes
        assert unsupported_reason((512, n, channels), jnp.bfloat16, block_n=block_n, channels_per_program=cpp,
                                  tile_layout="groups") is None


LAYOUT_CASES = [  # (B, N, C), kernel settings: shapes whose groups the grouped layout holds
    ((3, 64, 256), dict(block_n=16)),  # 4 row chunks, pass 2 in reverse
    ((2, 16, 512), {}),  # groups of 16, one chunk: read once
    ((2, 256, 128), dict(channels_per_program=32)),  # groups of 4, 8 per program
    ((3, 16, 128), dict(groups=16, channels_per_program=128)),  # 16 groups of 8 in one program
]


@pytest.mark.parametrize("shape,settings", LAYOUT_CASES)
@pytest.mark.parametrize("variant", ["per_image", "shared", "shift", "dropout"])
def test_both_tile_layouts_compute_the_same_norm(shape, settings, variant):
    """The grouped layout ((positions, groups, channels per group) tiles) against the lanes layout on the same
    inputs, y, mean and rstd in float32: a, b per image or shared (C,), an input shift, dropout (the same
    mask); y against the float64 reference; and the backward's dx, da, db (not for the shift, which it does
    not take)."""
    x, a, b = inputs(shape, jnp.bfloat16, seed=sum(shape) + 3)
    groups = settings.get("groups", NUM_GROUPS)
    extra = {}
    if variant == "shared":
        a, b = a[0], b[0]
    elif variant == "shift":
        extra = dict(shift=jnp.asarray(np.random.default_rng(3).normal(size=shape[-1]), jnp.float32))
    elif variant == "dropout":
        extra = dict(dropout=0.3, seeds=dropout_seeds(jax.random.key(sum(shape)), shape[0], shape[2]))
    lanes, grouped = (pallas_group_norm.forward(x, a, b, silu=True, out_dtype=jnp.float32, interpret=True,
                                                tile_layout=layout, **settings, **extra)
                      for layout in ("lanes", "groups"))
    for got, want in zip(grouped, lanes):  # float32 sums of the same values in another order
        np.testing.assert_allclose(as64(got), as64(want), rtol=1e-5, atol=1e-5)
    if variant in ("per_image", "shared"):
        wide = (lambda v: np.broadcast_to(v, (shape[0], shape[2])))
        np.testing.assert_allclose(as64(grouped[0]), reference(x, wide(a), wide(b), groups, True),
                                   rtol=1e-5, atol=1e-5)
    if variant == "dropout":
        assert 0.2 < float(jnp.mean(grouped[0] == 0)) < 0.4
    if variant != "shift":
        dy = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.bfloat16)
        extra.pop("shift", None)
        lanes, grouped = (pallas_group_norm.backward(x, dy, a, b, *grouped[1:], silu=True, interpret=True,
                                                     tile_layout=layout, **settings, **extra)
                          for layout in ("lanes", "groups"))
        for got, want in zip(grouped, lanes):
            scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
            np.testing.assert_allclose(as64(got), as64(want), rtol=0,
                                       atol=scale * (2**-7 if got.dtype == jnp.bfloat16 else 1e-5))


def test_the_forward_chooses_its_tile_layout_and_tuned_settings(monkeypatch):
    """'auto' takes the grouped layout for N ≤ GROUPED_MAX_POSITIONS where its blocks are powers of two, the
    lanes layout otherwise; TUNED_FORWARD's settings only when the caller gives none and not 'lanes'."""
    launched = []
    real_launch = pallas_group_norm._launch
    monkeypatch.setattr(pallas_group_norm, "_launch",
                        lambda kernel, name, settings, operands, **options: launched.append(settings)
                        or real_launch(kernel, name, settings, operands, **options))
    monkeypatch.setitem(pallas_group_norm.TUNED_FORWARD, (16, 128), (8, 32, 2))

    def settings_of(shape, **kwargs):
        x, a, b = inputs(shape, jnp.float32, seed=9)
        pallas_group_norm.forward(x, a, b, interpret=True, **kwargs)
        s = launched.pop()
        return s.grouped, (s.block_n, s.channels_per_program, s.num_warps)

    assert settings_of((2, 16, 128)) == (True, (8, 32, 2))  # tuned
    assert settings_of((2, 16, 128), block_n=16) == (True, (16, 64, 4))  # given: the rules for the rest
    assert settings_of((2, 16, 128), tile_layout="lanes") == (False, (16, 64, 4))  # not the grouped table
    assert settings_of((2, 16, 96), groups=24, channels_per_program=12)[0] is False  # 3 groups of 4
    assert settings_of((2, 16, 384))[0] is False  # groups of 12 channels
    assert settings_of((1, 512, 128))[0] is False  # N > GROUPED_MAX_POSITIONS
    assert settings_of((1, 256, 128)) == (True, (32, 64, 4))


@pytest.mark.parametrize("shape,settings,message", [
    ((2, 16, 384), dict(tile_layout="groups"), "power-of-two group size"),
    ((2, 16, 96), dict(tile_layout="groups", groups=24, channels_per_program=12),
     "power-of-two number of groups"),
    ((2, 16, 128), dict(tile_layout="rows"), "not one of"),
    ((2, 16, 128), dict(tile_layout="lanes", kernel="mosaic"), "takes no Triton settings"),
])
def test_unsupported_tile_layouts_raise(shape, settings, message):
    x = jnp.zeros(shape, jnp.float32)
    a = jnp.ones((shape[0], shape[-1]), jnp.float32)
    with pytest.raises(ValueError, match=message):
        pallas_group_norm.forward(x, a, a, interpret=True, **settings)


def test_the_backward_takes_its_tuned_settings_only_when_given_none(monkeypatch):
    """The backward's launch gets TUNED_BACKWARD's settings for a tuned (N, C), the rules' otherwise and
    whatever the caller gives; the result is the same float32 arithmetic either way."""
    launched = []
    real_launch = pallas_group_norm._launch
    monkeypatch.setattr(pallas_group_norm, "_launch",
                        lambda kernel, name, settings, operands, **options: launched.append(settings)
                        or real_launch(kernel, name, settings, operands, **options))
    shape = (2, 16, 128)
    monkeypatch.setitem(pallas_group_norm.TUNED_BACKWARD, shape[1:], (8, 32, 2))
    x, a, b = inputs(shape, jnp.float32, seed=5)
    dy = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)
    _, mean, rstd = pallas_group_norm.forward(x, a, b, silu=True, interpret=True)
    tuned = pallas_group_norm.backward(x, dy, a, b, mean, rstd, silu=True, interpret=True)
    given = pallas_group_norm.backward(x, dy, a, b, mean, rstd, silu=True, interpret=True, block_n=16)
    forward_settings, tuned_settings, given_settings = launched
    tuned_choice = (tuned_settings.block_n, tuned_settings.channels_per_program, tuned_settings.num_warps)
    assert tuned_choice == (8, 32, 2)
    assert (given_settings.block_n, given_settings.channels_per_program) == (16, 64)  # the rules' width
    assert (forward_settings.block_n, forward_settings.channels_per_program) == (16, 64)  # forward: no table
    for t, g in zip(tuned, given):
        np.testing.assert_allclose(np.asarray(t), np.asarray(g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,dtype,silu,settings", CASES)
def test_backward_matches_the_xla_vjp(shape, dtype, silu, settings):
    """dx, da, db of the backward kernel, from the forward kernel's statistics, against XLA's hand-written VJP
    of the same loss (whose statistics are two-pass: both are float32 roundings of the exact gradient)."""
    x, a, b = inputs(shape, dtype, seed=sum(shape) + 1)
    groups = settings.get("groups", NUM_GROUPS)
    dy = jnp.asarray(np.random.default_rng(sum(shape)).normal(size=shape), dtype)
    _, mean, rstd = pallas_group_norm.forward(x, a, b, eps=EPS, silu=silu, interpret=True, **settings)
    dx, da, db = pallas_group_norm.backward(x, dy, a, b, mean, rstd, silu=silu, interpret=True, **settings)
    _, vjp = jax.vjp(lambda x, a, b: normalise_affine(x, a, b, groups, EPS, silu, False, dtype, "xla"),
                     x, a, b)
    expected = vjp(dy)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert da.dtype == db.dtype == jnp.float32 and da.shape == db.shape == a.shape
    for got, want in zip((dx, da, db), expected):
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        # dx in bf16: one rounding of values up to `scale` (2^-8 relative), from float32 results that differ
        tolerance = scale * (2**-7 if dtype == jnp.bfloat16 and got is dx else 2e-5)
        np.testing.assert_allclose(as64(got), as64(want), rtol=0, atol=tolerance)


@pytest.mark.parametrize("shape,dtype,silu,settings", CASES[1:4] + CASES[6:])
def test_dropout_in_the_kernels_drops_what_xla_drops(shape, dtype, silu, settings):
    """With dropout the kernels compute the mask of group_norm.dropout_keep for their tiles (chunks of
    positions, channel blocks with masked lanes): y and the backward's dx, da, db match XLA's with the same
    seeds, zeros in the same places."""
    rate = 0.3
    x, a, b = inputs(shape, dtype, seed=sum(shape) + 2)
    groups = settings.get("groups", NUM_GROUPS)
    seeds = dropout_seeds(jax.random.key(sum(shape)), shape[0], shape[2])
    dy = jnp.asarray(np.random.default_rng(sum(shape)).normal(size=shape), dtype)
    y, mean, rstd = pallas_group_norm.forward(x, a, b, eps=EPS, silu=silu, interpret=True, dropout=rate,
                                              seeds=seeds, **settings)
    expected, vjp = jax.vjp(lambda x, a, b: normalise_affine(x, a, b, groups, EPS, silu, False, jnp.float32,
                                                             "xla", rate, seeds), x, a, b)
    np.testing.assert_array_equal(np.asarray(y) == 0, np.asarray(expected) == 0)
    assert 0.2 < float(jnp.mean(y == 0)) < 0.4
    np.testing.assert_allclose(as64(y), as64(expected), rtol=1e-5, atol=1e-5)
    got = pallas_group_norm.backward(x, dy, a, b, mean, rstd, silu=silu, interpret=True, dropout=rate,
                                     seeds=seeds, **settings)
    for g, want in zip(got, vjp(dy.astype(jnp.float32))):
        scale = float(jnp.max(jnp.abs(want)))
        tolerance = scale * (2**-7 if dtype == jnp.bfloat16 and g is got[0] else 2e-5)
        np.testing.assert_allclose(as64(g), as64(want), rtol=0, atol=tolerance)
    with pytest.raises(ValueError, match="needs seeds"):
        pallas_group_norm.forward(x, a, b, interpret=True, dropout=rate, **settings)
    with pytest.raises(ValueError, match=r"seed0 must be \(B, C\)"):
        pallas_group_norm.backward(x, dy, a, b, mean, rstd, interpret=True, dropout=rate,
                                   seeds=(seeds[0][:1], seeds[1]), **settings)


def test_normalise_affine_uses_the_kernels_undifferentiated_and_under_grad():
    """implementation='pallas_interpret' gives XLA's output and, through the custom VJP, XLA's gradients."""
    x, a, b = inputs((2, 16, 128), jnp.float32, seed=7)
    args = (NUM_GROUPS, EPS, True, False, jnp.float32)
    np.testing.assert_allclose(normalise_affine(x, a, b, *args, "pallas_interpret"),
                               normalise_affine(x, a, b, *args, "xla"), rtol=1e-5, atol=1e-5)

    def loss(implementation):
        return lambda x, a, b: jnp.sum(jnp.sin(normalise_affine(x, a, b, *args, implementation)))

    kernel_grads = jax.grad(loss("pallas_interpret"), argnums=(0, 1, 2))(x, a, b)
    xla_grads = jax.grad(loss("xla"), argnums=(0, 1, 2))(x, a, b)
    for kernel_grad, xla_grad in zip(kernel_grads, xla_grads):
        np.testing.assert_allclose(kernel_grad, xla_grad, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss("pallas_interpret")))(x, a, b))
    assert "group_norm_forward" in jaxpr and "group_norm_backward" in jaxpr
    with pytest.raises(ValueError, match="implementation"):
        normalise_affine(x, a, b, *args, "triton")


def test_norm_implementation_choice_off_the_gpu():
    """On the CPU 'auto' is XLA, 'pallas' is refused with what to do; unknown names are refused."""
    assert jax.default_backend() == "cpu"
    assert norm_implementation("xla") == "xla"
    assert norm_implementation("auto") == "xla"
    with pytest.raises(ValueError, match="NVIDIA GPUs.*use 'xla' or 'auto'"):
        norm_implementation("pallas")
    with pytest.raises(ValueError, match="not one of"):
        norm_implementation("triton")


def test_partitioned_over_a_sharded_batch():
    """On 4 devices with the batch split, each device runs the forward kernel on its own images (no collective
    in the compiled program) and the result is the unsharded one; x split along its channels is still right;
    the gradients through both kernels equal the unsharded ones and dx stays split; the same with a, b
    shared by the images, and the forward with an input shift."""
    result = run_helper_on_devices("sharded_group_norm.py", 4)
    assert result["batch_split_collectives"] == []
    assert result["batch_split_output_axis"] == "data"
    assert result["batch_split_max_diff"] == 0.0
    assert result["channel_split_max_diff"] == 0.0
    # under jax.grad: dx stays split; the one collective sums da, db over the batch, as the test's loss asks
    assert result["gradients_dx_axis"] == "data"
    assert result["gradients_collectives"] == ["all-reduce"]
    assert result["gradients_max_diff"] < 1e-4  # float32 sums over the batch in another order
    # a, b (C,) shared by the images: replicated, the same results; only the gradients' batch sum all-reduces
    assert result["shared_max_diff"] == 0.0
    assert result["shared_collectives"] == []
    assert result["shared_gradients_max_diff"] < 1e-4
    assert result["shared_gradients_collectives"] == ["all-reduce"]
    # an input shift (C,): replicated, no collective
    assert result["shifted_max_diff"] == 0.0
    assert result["shifted_collectives"] == []
    # the grouped tile layout (C = 128: groups of 4), operands reshaped inside each device's call
    assert result["grouped_max_diff"] == 0.0
    assert result["grouped_collectives"] == []


@pytest.mark.parametrize("direction,dropout", [("forward", 0.0), ("training", 0.0), ("training", 0.3)])
def test_benchmark_script_smoke(tmp_path, direction, dropout):
    """experiments/bench_group_norm.py runs end to end (kernels in the interpreter) and every setting it
    times agrees with XLA's two-pass result (with dropout: with XLA's on the same mask)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "experiments"))
    import bench_group_norm

    out = tmp_path / "gn.json"
    bench_group_norm.main(["--smoke", "--direction", direction, "--dropout", str(dropout), "--out", str(out)])
    result = json.loads(out.read_text())["results"][0]
    assert (result["direction"] == direction and result["shape"] == [2, 16, 384]
            and result["dropout"] == dropout)
    rows = result["pallas"]
    assert len(rows) == 2  # the defaults and the one swept setting
    assert all(row["ok"] and row["max_diff_f32"] < 1e-5 and row["ms"] > 0 for row in rows)


def test_benchmark_script_sweeps_tile_layouts(tmp_path):
    """--tile-layouts lanes,groups times each swept setting in both layouts where the shape takes them (groups
    of 4 channels), in lanes only where it does not (groups of 12); an unknown layout is refused."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "experiments"))
    import bench_group_norm

    out = tmp_path / "gn.json"
    bench_group_norm.main(["--smoke", "--direction", "training", "--tile-layouts", "lanes,groups",
                           "--out", str(out)])
    twelve, four = json.loads(out.read_text())["results"]
    assert [r.get("tile_layout") for r in twelve["pallas"]] == [None, "lanes"]  # defaults, then the sweep
    assert [r.get("tile_layout") for r in four["pallas"]] == [None, "lanes", "groups"]
    assert all(row["ok"] and row["max_diff_f32"] < 1e-5 for row in twelve["pallas"] + four["pallas"])
    with pytest.raises(SystemExit):
        bench_group_norm.main(["--smoke", "--tile-layouts", "rows", "--out", str(out)])


@pytest.mark.parametrize("n,channels,dropout", [(16, 256, 0.0), (16, 512, 0.0), (64, 256, 0.3),
                                                (64, 512, 0.0), (256, 256, 0.3), (256, 512, 0.0),
                                                (256, 384, 0.0)])
def test_the_forward_lowers_to_triton_for_cuda(monkeypatch, n, channels, dropout):
    """Pallas's Triton lowering (what the interpreter does not run) of the UNet's 16×16 and smaller norms at
    batch 512, for the CUDA platform on the CPU: the grouped layout with TUNED_FORWARD's settings (with
    dropout, as training runs them), and C = 384 (groups of 12) in lanes."""
    from jax._src.pallas.triton import pallas_call_registration
    if hasattr(pallas_call_registration, "gpu_info_lib"):  # jax ≥ 0.11 asks the GPU for its capability
        monkeypatch.setattr(pallas_call_registration, "gpu_info_lib", type("FakeHopper", (), dict(
            get_gpu_info=staticmethod(lambda: type("Info", (), dict(compute_capability=90))))))
    x = jax.ShapeDtypeStruct((512, n, channels), jnp.bfloat16)
    affine = jax.ShapeDtypeStruct((512, channels), jnp.float32)
    seeds = jax.ShapeDtypeStruct((512, channels), jnp.int32)

    def norm(x, a, b, s0, s1):
        return pallas_group_norm.forward(x, a, b, silu=True, out_dtype=jnp.bfloat16, kernel="triton",
                                         dropout=dropout, seeds=(s0, s1) if dropout else None)

    text = jax.jit(norm).trace(x, affine, affine, seeds, seeds).lower(lowering_platforms=("cuda",)).as_text()
    assert "group_norm_forward" in text
    grid = dict(re.findall(r"(grid_[xy]) = (\d+)", text))
    default = (None, pallas_group_norm.default_channels_per_program(channels))
    cpp = pallas_group_norm.TUNED_FORWARD.get((n, channels), default)[1]
    assert grid == {"grid_x": str(channels // cpp), "grid_y": "512"}


def part_inputs(batch, n, parts, dtype, seed):
    """x as parts (B, N, C_k) with per-channel offsets and spreads (:func:`inputs` of the concatenation, cut
    along the channels), their concatenation, and a, b (B, C)."""
    whole, a, b = inputs((batch, n, sum(parts)), dtype, seed)
    bounds = np.cumsum(parts)[:-1]
    return tuple(jnp.split(whole, bounds, axis=-1)), whole, a, b


PARTS_CASES = [  # N, the parts' channels, kernel settings, variant
    (16, (64, 64), dict(tile_layout="groups", channels_per_program=32), "per_image"),  # 4 programs, 2 a part
    (16, (64, 64), dict(tile_layout="lanes", channels_per_program=32), "shared"),
    (64, (128, 64, 64), dict(channels_per_program=32), "shift"),  # 'auto': groups of 8, 4 + 2 + 2 programs
    (16, (96, 96), {}, "dropout"),  # the defaults: lanes, 16 groups of 6 = 96 channels in 128 lanes
    (64, (32, 96), dict(tile_layout="groups", channels_per_program=32, block_n=16), "dropout"),  # 4 chunks
    (16, (96, 96), dict(block_n=8), "shift"),  # lanes, masked lanes, 2 row chunks
]


@pytest.mark.parametrize("n,parts,settings,variant", PARTS_CASES)
def test_the_forward_of_parts_is_the_forward_of_their_concatenation(n, parts, settings, variant):
    """x given as parts (B, N, C_k): each program reads its channels from the part that holds them, so mean
    and rstd are bit for bit those of the concatenation (the same float32 sums per program) and y is the
    same float32 arithmetic, in the grouped and lanes layouts, with a, b per image or shared (C,), an input
    shift, and dropout (the mask of the concatenation's channel indices: zeros in the same places); and y is
    the float64 norm of the concatenation.

    y is compared within a few float32 roundings, not bit for bit: in the interpreter the parts' program body
    runs inside a branch (pl.when), which XLA's CPU compiler contracts differently (checked: the
    concatenation's body put in an always-true pl.when gives the parts' y bit for bit). A program reading
    the wrong channels, rows or part is off by O(1)."""
    batch = 2
    xs, whole, a, b = part_inputs(batch, n, parts, jnp.bfloat16, seed=n + len(parts) + parts[0])
    channels = sum(parts)
    extra = {}
    if variant == "shared":
        a, b = a[1], b[1]
    elif variant == "shift":
        extra = dict(shift=jnp.asarray(np.random.default_rng(n).normal(0.0, 2.0, size=channels), jnp.float32))
    elif variant == "dropout":
        extra = dict(dropout=0.3, seeds=dropout_seeds(jax.random.key(n), batch, channels))
    kw = dict(silu=True, out_dtype=jnp.float32, interpret=True, **settings, **extra)
    got = pallas_group_norm.forward(xs, a, b, **kw)
    want = pallas_group_norm.forward(whole, a, b, **kw)
    assert [v.shape for v in got] == [(batch, n, channels), (batch, channels), (batch, channels)]
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    scale = float(jnp.max(jnp.abs(want[0])))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=0, atol=1e-6 * scale)
    if variant == "dropout":
        np.testing.assert_array_equal(np.asarray(got[0]) == 0, np.asarray(want[0]) == 0)
        assert 0.2 < float(jnp.mean(got[0] == 0)) < 0.4
        return
    x64 = as64(whole) + (as64(extra["shift"]) if variant == "shift" else 0.0)
    a64, b64 = (np.broadcast_to(as64(v), (batch, channels)) for v in (a, b))
    np.testing.assert_allclose(as64(got[0]), reference(x64, a64, b64, NUM_GROUPS, True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parts,settings,message", [
    (((2, 16, 48), (2, 16, 80)), {}, "whole number of programs' 64 channels"),  # the default 64 per program
    (((2, 16, 64), (2, 16, 64)), dict(channels_per_program=128), "whole number of programs' 128 channels"),
    (((2, 16, 64), (2, 32, 64)), {}, "must agree in every axis but the last"),
    (((2, 16, 64), (1, 16, 64)), {}, "must agree in every axis but the last"),
])
def test_parts_that_do_not_fit_are_refused(parts, settings, message):
    """Parts whose channels are not a whole number of programs' channels, and parts that disagree in B or N,
    raise ValueError with what is wrong; unsupported_reason names the first."""
    xs = tuple(jnp.zeros(shape, jnp.float32) for shape in parts)
    channels = sum(shape[-1] for shape in parts)
    a = jnp.ones((2, channels), jnp.float32)
    with pytest.raises(ValueError, match=message):
        pallas_group_norm.forward(xs, a, a, interpret=True, **settings)
    if "programs'" in message:
        reason = unsupported_reason((2, 16, channels), jnp.float32, parts=tuple(s[-1] for s in parts),
                                    **settings)
        assert reason is not None and message in reason
        assert unsupported_reason((2, 16, channels), jnp.float32, **settings) is None  # the concatenation


def test_parts_of_two_dtypes_are_refused():
    xs = (jnp.zeros((2, 16, 64), jnp.float32), jnp.zeros((2, 16, 64), jnp.bfloat16))
    a = jnp.ones((2, 128), jnp.float32)
    with pytest.raises(ValueError, match="must agree in every axis but the last and in dtype"):
        pallas_group_norm.forward(xs, a, a, interpret=True)


def test_parts_reason_follows_the_kernel_forward_would_take(monkeypatch):
    """parts_reason: None where the default forward (TUNED_FORWARD's 64 channels per program at 16×16, C =
    512) takes the parts; the reason for 384 = 256 + 128 channels (96 per program); and where the Mosaic
    kernel is preferred (N = 1024, faked to run here), None for parts of its 32-channel slabs and a reason
    naming it for parts that are not (136 + 120)."""
    bf16 = jnp.bfloat16
    assert pallas_group_norm.parts_reason((512, 256, 512), bf16, bf16, (256, 256)) is None
    reason = pallas_group_norm.parts_reason((512, 256, 384), bf16, bf16, (256, 128))
    assert reason is not None and "whole number of programs' 96 channels" in reason
    assert not mosaic_group_norm.preferred((512, 1024, 256), bf16, bf16)  # on the CPU
    monkeypatch.setattr(mosaic_group_norm, "runs_here", lambda: True)
    assert mosaic_group_norm.preferred((512, 1024, 256), bf16, bf16)
    assert pallas_group_norm.parts_reason((512, 1024, 256), bf16, bf16, (128, 128)) is None
    reason = pallas_group_norm.parts_reason((512, 1024, 256), bf16, bf16, (136, 120))
    assert reason is not None and "Mosaic" in reason
    # nor would the Triton kernel take them (64 channels per program at C = 256 divide neither part)
    reason = pallas_group_norm.unsupported_reason((512, 1024, 256), bf16, parts=(136, 120))
    assert reason is not None and "programs' 64 channels" in reason


@pytest.mark.parametrize("n", [16, 64, 256])
def test_the_forward_of_parts_lowers_to_triton_for_cuda(monkeypatch, n):
    """Pallas's Triton lowering of the parts forward at the UNet's decoder shapes (256 + 256 channels, batch
    512), for the CUDA platform on the CPU: one kernel over TUNED_FORWARD's grid, reading both parts (no
    concatenation in the program)."""
    from jax._src.pallas.triton import pallas_call_registration
    if hasattr(pallas_call_registration, "gpu_info_lib"):  # jax ≥ 0.11 asks the GPU for its capability
        monkeypatch.setattr(pallas_call_registration, "gpu_info_lib", type("FakeHopper", (), dict(
            get_gpu_info=staticmethod(lambda: type("Info", (), dict(compute_capability=90))))))
    part = jax.ShapeDtypeStruct((512, n, 256), jnp.bfloat16)
    affine = jax.ShapeDtypeStruct((512, 512), jnp.float32)

    def norm(h, s, a, b):
        return pallas_group_norm.forward((h, s), a, b, silu=True, out_dtype=jnp.bfloat16, kernel="triton")

    text = jax.jit(norm).trace(part, part, affine, affine).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("group_norm_forward") >= 1 and "concatenate" not in text
    grid = dict(re.findall(r"(grid_[xy]) = (\d+)", text))
    cpp = pallas_group_norm.TUNED_FORWARD[(n, 512)][1]
    assert grid == {"grid_x": str(512 // cpp), "grid_y": "512"}
