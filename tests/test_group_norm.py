"""The fused GroupNorm (+ scale-shift + SiLU) and its hand-written VJP, in XLA and as the Pallas kernels (in
Pallas's interpreter), against autodiff of the textbook formula in float64, across input dtypes, shapes and
options; and against flax.linen.GroupNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models.group_norm import (EPS, NUM_GROUPS, GroupNorm, dropout_keep, dropout_keep_scale,
                                     dropout_seeds, dropout_threshold, normalise_affine)


@pytest.fixture(autouse=True)
def float64_references():
    """float64 for the references, in this module only."""
    with jax.enable_x64(True):
        yield


def reference(x, a, b, silu):
    """y = [SiLU]((x − μ)/√(σ² + ε)·a + b), groups of C/32 channels, two-pass statistics, in float64."""
    batch, n, channels = x.shape
    g = x.reshape(batch, n, NUM_GROUPS, channels // NUM_GROUPS)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    xhat = ((g - mean) / jnp.sqrt(var + EPS)).reshape(x.shape)
    z = xhat * a[:, None, :] + b[:, None, :]
    return jax.nn.silu(z) if silu else z


def inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    batch, _, channels = shape
    # per-channel offsets and scales, so groups have distinct means and spreads
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=channels) + rng.normal(size=channels)
    a = rng.normal(1.0, 0.3, size=(batch, channels))
    b = rng.normal(0.0, 0.5, size=(batch, channels))
    dy = rng.normal(size=shape)
    return jnp.asarray(x, dtype), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), dy


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@pytest.mark.parametrize("shape", [(2, 16, 64), (3, 5, 96), (1, 64, 32)])
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-6)])
@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
def test_forward_and_gradients_match_autodiff_of_the_formula(shape, silu, dtype, tol, implementation):
    x, a, b, dy = inputs(shape, dtype, seed=sum(shape))
    # the reference sees the same (rounded) input, in float64
    x64, a64, b64 = (v.astype(jnp.float64) for v in (x, a, b))

    def fused(x, a, b):
        return jnp.vdot(normalise_affine(x, a, b, NUM_GROUPS, EPS, silu, False, jnp.float32, implementation),
                        dy.astype(np.float32))

    def ref(x, a, b):
        return jnp.vdot(reference(x, a, b, silu), dy)

    y = jax.jit(normalise_affine, static_argnums=(3, 4, 5, 6, 7, 8))(x, a, b, NUM_GROUPS, EPS, silu, False,
                                                                     jnp.dtype(jnp.float32), implementation)
    assert y.dtype == jnp.float32
    assert rel(y, reference(x64, a64, b64, silu)) < tol
    grads = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(x, a, b)
    grads_ref = jax.jit(jax.grad(ref, argnums=(0, 1, 2)))(x64, a64, b64)
    assert grads[0].dtype == dtype, "the input gradient keeps the input's dtype"
    # the input gradient is rounded to the input dtype once, at the end
    grad_tol = {jnp.float32: 1e-5, jnp.bfloat16: 6e-3}[dtype]
    assert rel(grads[0], grads_ref[0]) < grad_tol
    assert rel(grads[1], grads_ref[1]) < 1e-5
    assert rel(grads[2], grads_ref[2]) < 1e-5


@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
@pytest.mark.parametrize("dtype,rate", [(jnp.float32, 0.0), (jnp.bfloat16, 0.3)])
def test_input_shift_normalises_the_shifted_input(implementation, dtype, rate):
    """normalise_affine(x, ..., shift=c) is the norm of x + c (in float32), forward and backward, c's gradient
    Σ_{b,n} dx; a shift that is not (C,) is refused."""
    shape = (2, 16, 64)
    x, a, b, dy = inputs(shape, dtype, seed=11)
    shift = jnp.asarray(np.random.default_rng(12).normal(0.0, 2.0, size=shape[2]), jnp.float32)
    seeds = dropout_seeds(jax.random.key(3), shape[0], shape[2]) if rate else None

    def norm(x, a, b, shift=None):
        return normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation, rate,
                                seeds, shift)

    def shifted_loss(x, a, b, c):
        return jnp.vdot(norm(x, a, b, c), dy.astype(np.float32))

    def reference_loss(x, a, b, c):  # the shift added by XLA first, the norm of the sum
        return jnp.vdot(norm(x.astype(jnp.float32) + c, a, b), dy.astype(np.float32))

    got = jax.jit(norm)(x, a, b, shift)
    want = jax.jit(norm)(x.astype(jnp.float32) + shift, a, b)
    assert rel(got, want) < 2e-6
    grads = jax.jit(jax.grad(shifted_loss, argnums=(0, 1, 2, 3)))(x, a, b, shift)
    grads_ref = jax.jit(jax.grad(reference_loss, argnums=(0, 1, 2, 3)))(x, a, b, shift)
    assert grads[0].dtype == dtype and grads[3].shape == shift.shape
    tolerance = {jnp.float32: 1e-5, jnp.bfloat16: 6e-3}[dtype]  # dx, and c's gradient from it, rounded to x's
    for got_grad, want_grad, tol in zip(grads, grads_ref, (tolerance, 1e-5, 1e-5, tolerance)):
        assert rel(got_grad, want_grad) < tol
    with pytest.raises(ValueError, match="shift must be \\(C,\\)"):
        norm(x, a, b, shift[:32])


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_dropout_mask_keeps_the_right_fraction_independently(rate):
    """The hash mask keeps 1 − rate of the elements (binomial tolerance, 5σ), the same fraction in every
    image and channel, without correlation between neighbouring positions or channels; 1/p is exact."""
    batch, n, channels = 4, 1024, 64
    s0, s1 = dropout_seeds(jax.random.key(7), batch, channels)
    keep = np.asarray(dropout_keep(jnp.arange(n)[None, :, None], s0[:, None, :], s1[:, None, :],
                                   dropout_threshold(rate)))
    p = 1.0 - dropout_threshold(rate) / 2**24
    assert abs(p - (1.0 - rate)) < 2**-24 and dropout_keep_scale(rate) == pytest.approx(1.0 / p, rel=1e-12)
    total = keep.size
    assert abs(keep.mean() - p) < 5 * np.sqrt(p * (1 - p) / total)
    per_column = keep.mean(axis=1)                   # (B, C): each image's channel over its positions
    assert np.all(np.abs(per_column - p) < 5 * np.sqrt(p * (1 - p) / n))
    centred = keep - p
    for a, b in ((centred[:, 1:], centred[:, :-1]), (centred[..., 1:], centred[..., :-1]),
                 (centred[1:], centred[:-1])):        # next position, next channel, next image
        correlation = np.mean(a * b) / (p * (1 - p))
        assert abs(correlation) < 5 / np.sqrt(a.size)
    assert np.all(np.asarray(dropout_keep(jnp.arange(n), s0[0, 0], s1[0, 0], dropout_threshold(0.0))))
    with pytest.raises(ValueError, match="dropout rate"):
        dropout_threshold(1.0)


@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
def test_dropout_forward_and_gradients_match_autodiff_with_the_same_mask(implementation):
    """With dropout, y = where(keep, SiLU(z)/p, 0) and its gradients equal float64 autodiff of that formula
    with the mask of dropout_keep; XLA and the kernels drop the same elements."""
    rate, shape = 0.3, (2, 16, 64)
    x, a, b, dy = inputs(shape, jnp.float32, seed=3)
    seeds = dropout_seeds(jax.random.key(1), shape[0], shape[2])
    keep = dropout_keep(jnp.arange(shape[1])[None, :, None], seeds[0][:, None, :], seeds[1][:, None, :],
                        dropout_threshold(rate))

    def ours(x, a, b):
        return normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation, rate,
                                seeds)

    def ref(x, a, b):
        return jnp.where(keep, reference(x, a, b, True) * dropout_keep_scale(rate), 0.0)

    x64, a64, b64 = (v.astype(jnp.float64) for v in (x, a, b))
    y = jax.jit(ours)(x, a, b)
    np.testing.assert_array_equal(np.asarray(y) == 0,
                                  ~np.asarray(keep) | (np.asarray(ref(x64, a64, b64)) == 0))
    assert rel(y, ref(x64, a64, b64)) < 2e-6
    grads = jax.jit(jax.grad(lambda *v: jnp.vdot(ours(*v), dy.astype(np.float32)),
                             argnums=(0, 1, 2)))(x, a, b)
    grads_ref = jax.grad(lambda *v: jnp.vdot(ref(*v), dy), argnums=(0, 1, 2))(x64, a64, b64)
    for got, want in zip(grads, grads_ref):
        assert rel(got, want) < 1e-5
    with pytest.raises(ValueError, match="needs seeds"):
        normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation, rate)


@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_shared_affine_equals_the_per_image_one_broadcast(implementation, rate):
    """a, b (C,) for all images give the output of the same vectors broadcast to (B, C), bit for bit, and
    as their gradients the per-image ones summed over the images; mixed or wrong shapes are refused."""
    shape = (3, 16, 64)
    x, a, b, dy = inputs(shape, jnp.float32, seed=7)
    a, b = a[0], b[0]
    seeds = dropout_seeds(jax.random.key(2), shape[0], shape[2]) if rate else None

    def loss(x, a, b):
        y = normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation, rate, seeds)
        return jnp.vdot(y, dy.astype(np.float32)), y

    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, y), (dx, da, db) = value_and_grads(x, a, b)
    per_image = (jnp.broadcast_to(v, (shape[0], shape[2])) for v in (a, b))
    (_, y_per_image), (dx_per_image, da_per_image, db_per_image) = value_and_grads(x, *per_image)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_per_image))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_per_image))
    assert da.shape == db.shape == (shape[2],)
    for shared, per_image in ((da, da_per_image), (db, db_per_image)):  # float32 sums in another order
        want = np.asarray(per_image.sum(0))
        np.testing.assert_allclose(np.asarray(shared), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    for bad_a, bad_b in ((a, b[None].repeat(3, 0)), (a[:32], b[:32]), (a[None], b[None])):
        with pytest.raises(ValueError, match="a and b must both be"):
            normalise_affine(x, bad_a, bad_b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation, rate,
                             seeds)


def test_group_norm_module_dropout_uses_the_dropout_rng():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 64))
    norm = GroupNorm()
    params = norm.init(jax.random.key(1), x)
    y = {k: norm.apply(params, x, silu=True, dropout=0.5, rngs={"dropout": jax.random.key(k)})
         for k in (2, 3)}
    np.testing.assert_array_equal(y[2], norm.apply(params, x, silu=True, dropout=0.5,
                                                   rngs={"dropout": jax.random.key(2)}))
    assert not np.array_equal(np.asarray(y[2]) == 0, np.asarray(y[3]) == 0)
    undropped = norm.apply(params, x, silu=True)
    kept = np.asarray(y[2]) != 0
    np.testing.assert_allclose(np.asarray(y[2])[kept], 2.0 * np.asarray(undropped)[kept], rtol=1e-6)
    assert 0.4 < 1 - kept.mean() < 0.6
    with pytest.raises(Exception, match="dropout"):  # flax: no 'dropout' RNG stream given
        norm.apply(params, x, dropout=0.5)


def test_output_dtype_and_one_pass_statistics():
    x, a, b, _ = inputs((2, 32, 64), jnp.float32, seed=0)
    want = reference(*(v.astype(jnp.float64) for v in (x, a, b)), True)
    y16 = normalise_affine(x.astype(jnp.bfloat16), a, b, NUM_GROUPS, EPS, True, False,
                           jnp.dtype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    assert rel(y16, want) < 1e-2
    y1 = normalise_affine(x, a, b, NUM_GROUPS, EPS, True, True, jnp.dtype(jnp.float32))
    assert rel(y1, want) < 2e-6


def test_one_pass_statistics_survive_a_large_mean():
    """E[x²] − E[x]² in float32 loses every digit at mean/spread = 1000; the shifted sums lose few."""
    x, a, b, _ = inputs((2, 32, 64), jnp.float32, seed=1)
    x = x + 1000.0
    want = reference(*(v.astype(jnp.float64) for v in (x, a, b)), False)
    for one_pass in (False, True):
        y = normalise_affine(x, a, b, NUM_GROUPS, EPS, False, one_pass, jnp.dtype(jnp.float32))
        assert rel(y, want) < 1e-3
    xf = x.astype(jnp.float32).reshape(2, 32, NUM_GROUPS, 2)
    naive = jnp.mean(jnp.square(xf), axis=(1, 3)) - jnp.square(jnp.mean(xf, axis=(1, 3)))
    exact = jnp.var(xf.astype(jnp.float64), axis=(1, 3))
    assert rel(naive, exact) > 1e-2, "the unshifted formula should fail here, or this test proves nothing"


def test_module_matches_flax_group_norm_with_scale_shift_and_silu():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(2.0, 1.5, size=(3, 4, 4, 64)), jnp.float32)
    s, t = (jnp.asarray(rng.normal(size=(3, 64)), jnp.float32) for _ in range(2))
    flax_norm = nn.GroupNorm(num_groups=32, epsilon=EPS)
    params = flax_norm.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)

    def ours(params, x):
        return GroupNorm().apply(params, x, scale_shift=(s, t), silu=True)

    def theirs(params, x):
        return jax.nn.silu(flax_norm.apply(params, x) * (1 + s[:, None, None]) + t[:, None, None])

    assert jax.tree.structure(GroupNorm().init(jax.random.key(0), x)) == jax.tree.structure(params)
    assert rel(ours(params, x), theirs(params, x)) < 1e-6
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))  # noqa: E731
    g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    g_theirs = jax.jit(jax.grad(loss(theirs), argnums=(0, 1)))(params, x)
    for got, want in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        assert rel(got, want) < 1e-5


def test_module_hands_on_its_vectors_unbroadcast_unless_asked():
    """Without a scale-shift the norm gives normalise_affine its (C,) scale and bias (or (B, C) broadcasts
    with broadcast_affine=True, as in training): the same values and parameter gradients either way."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(1.0, 2.0, size=(3, 4, 4, 64)), jnp.float32)
    norm = GroupNorm()
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype),
                          norm.init(jax.random.key(0), x))

    def apply(params, broadcast):
        return norm.apply(params, x, silu=True, broadcast_affine=broadcast)

    def affine_shapes(broadcast):
        eqns = jax.make_jaxpr(apply, static_argnums=1)(params, broadcast).jaxpr.eqns
        return [tuple(e.invars[1].aval.shape) for e in eqns if e.primitive.name.startswith("custom_vjp_call")]

    assert affine_shapes(False) == [(64,)] and affine_shapes(True) == [(3, 64)]
    np.testing.assert_array_equal(np.asarray(apply(params, False)), np.asarray(apply(params, True)))
    grads = [jax.grad(lambda p: jnp.sum(jnp.sin(apply(p, b))))(params) for b in (False, True)]
    for got, want in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match="divisible by 32"):
        GroupNorm().init(jax.random.key(0), jnp.zeros((1, 4, 48)))


def test_jit_vmap_free_and_sharded_over_the_batch():
    """Under jit with the batch split over devices the result is the single-device one."""
    x, a, b, _ = inputs((8, 16, 64), jnp.float32, seed=3)
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    sharded = jax.sharding.NamedSharding(mesh, jax.P("data"))
    f = jax.jit(lambda x, a, b: jax.grad(lambda x: jnp.sum(
        normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32) ** 2))(x))
    want = f(x, a, b)
    got = f(*(jax.device_put(v, sharded) for v in (x, a, b)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", ["xla", "pallas_interpret"])
def test_parts_stand_for_their_concatenation_forward_and_backward(implementation):
    """normalise_affine of x given as parts (B, N, C_k) is the norm of their concatenation along the channels
    (XLA concatenates: bit for bit; the kernel reads the parts: the same float32 arithmetic, see
    test_pallas_group_norm), and under jax.grad the parts' gradient is a tuple of arrays of the parts'
    shapes and dtype, the concatenation's gradient cut at the parts' bounds, bit for bit (the backward
    concatenates x and reads the same statistics); a and b get the concatenation's gradients."""
    x, a, b, dy = inputs((2, 16, 128), jnp.bfloat16, seed=21)
    parts = (x[..., :64], x[..., 64:])
    cotangent = jnp.asarray(dy, jnp.float32)

    def loss(x, a, b):
        return jnp.vdot(normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation),
                        cotangent)

    y_parts = normalise_affine(parts, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation)
    y_whole = normalise_affine(x, a, b, NUM_GROUPS, EPS, True, False, jnp.float32, implementation)
    if implementation == "xla":
        np.testing.assert_array_equal(np.asarray(y_parts), np.asarray(y_whole))
    else:  # float32 roundings of values of order 1
        np.testing.assert_allclose(np.asarray(y_parts), np.asarray(y_whole), rtol=0, atol=4e-6)
    assert rel(y_parts, reference(*(v.astype(jnp.float64) for v in (x, a, b)), True)) < 2e-6
    d_parts, da_parts, db_parts = jax.grad(loss, argnums=(0, 1, 2))(parts, a, b)
    d_whole, da_whole, db_whole = jax.grad(loss, argnums=(0, 1, 2))(x, a, b)
    assert isinstance(d_parts, tuple) and len(d_parts) == 2
    assert [(d.shape, d.dtype) for d in d_parts] == [((2, 16, 64), jnp.bfloat16)] * 2
    for d, bounds in zip(d_parts, (slice(0, 64), slice(64, 128))):
        np.testing.assert_array_equal(np.asarray(d, np.float32), np.asarray(d_whole[..., bounds], np.float32))
    np.testing.assert_array_equal(np.asarray(da_parts), np.asarray(da_whole))
    np.testing.assert_array_equal(np.asarray(db_parts), np.asarray(db_whole))


def test_module_takes_parts_with_the_concatenations_parameters():
    """GroupNorm given (B, H, W, C_k) parts has the parameters of the concatenation's norm and its output
    (XLA, bit for bit, with a scale-shift); three parts of unequal widths too."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(1.0, 2.0, size=(2, 4, 4, 128)), jnp.float32)
    s, t = (jnp.asarray(rng.normal(size=(2, 128)), jnp.float32) for _ in range(2))
    parts = (x[..., :32], x[..., 32:96], x[..., 96:])
    norm = GroupNorm()
    params = norm.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, norm.init(jax.random.key(0), parts)) == jax.tree.map(jnp.shape, params)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    got = norm.apply(params, parts, scale_shift=(s, t), silu=True)
    assert got.shape == x.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(norm.apply(params, x, scale_shift=(s, t),
                                                                         silu=True)))
