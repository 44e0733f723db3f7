"""The attention block's residual added in its output projection's kernel: where a block samples with the
GroupNorm kernels (Pallas's interpreter here) at 256 positions or more, x + a·W + c is one call of
jdiff.models.pallas_concat_dense.concat_dense (no add of XLA's after the product), with the parameters and,
within one bf16 rounding, the output of the block that adds x in XLA; everywhere else (training,
initialisation, XLA's norms, x in another dtype than the block's, fewer positions) the block computes
exactly what it did before; and ShiftedDense's product choices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models.layers import AttentionBlock, ShiftedDense


def inputs(spatial, channels=64, dtype=jnp.bfloat16, seed=0):
    """x (2, H, W, C) of mean 1 and spread 2."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(1.0 + 2.0 * rng.normal(size=(2, *spatial, channels)), dtype)


def random_params(block, x, seed=1):
    """The block's parameters drawn at random (norm scales ≈ 1, kernels of spread 1/√fan-in, biases ≈ 0.1;
    the zero-initialised output projection is not zero)."""
    shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), x))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        spread = 1.0 / np.sqrt(np.prod(shape[:-1])) if name == "kernel" else 0.1
        return jnp.asarray((name == "scale") + spread * rng.normal(size=shape), leaf.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def bf16_ulp(value):
    """The spacing of bf16 numbers at |value| (8 significant bits)."""
    return 2.0 ** (np.floor(np.log2(abs(value))) - 7)


class Unfused(AttentionBlock):
    """The same block adding its residual in XLA (the path it takes where fuses_residual is False)."""

    def fuses_residual(self, x, train):
        return False


def block(cls=AttentionBlock, **settings):
    return cls(**dict(dict(num_head_channels=32, norm_implementation="pallas_interpret", dtype=jnp.bfloat16),
                      **settings))


@pytest.mark.parametrize("spatial", [(16, 16), (8, 32)])
def test_a_sampling_attention_block_adds_its_residual_in_the_product_kernel(spatial):
    """With the GroupNorm kernels and bf16 the sampling block's output projection is the product kernel with
    the residual: its program has one concat_dense and two adds of bf16 (B, N, C) activations fewer (the
    bias and the residual, XLA's passes after its product; the one left is q's bias); the
    parameters are the unfused block's, and the output is its output within one bf16 rounding of a·W + c
    carried through the sum (the kernel rounds a·W + c + x once, XLA rounds a·W + c, then the sum): at
    most 2 bf16 ulps of the output's scale, most elements equal."""
    x = inputs(spatial)
    fused, unfused = block(), block(Unfused)
    params = random_params(fused, x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, random_params(unfused, x))
    assert fused.bind({"params": params}).fuses_residual(x, False)
    jaxpr = str(jax.make_jaxpr(lambda p: fused.apply({"params": p}, x))(params))
    unfused_jaxpr = str(jax.make_jaxpr(lambda p: unfused.apply({"params": p}, x))(params))
    assert jaxpr.count("name=concat_dense") == 1 and "concat_dense" not in unfused_jaxpr
    image_adds = f"bf16[2,{spatial[0] * spatial[1]},64] = add"
    assert unfused_jaxpr.count(image_adds) == 3 and jaxpr.count(image_adds) == 1
    got, want = fused.apply({"params": params}, x), unfused.apply({"params": params}, x)
    assert got.shape == want.shape == x.shape and got.dtype == want.dtype == jnp.bfloat16
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.abs(got - want).max() <= 2 * bf16_ulp(np.abs(want).max())
    assert np.mean(got == want) > 0.5
    # the residual is there: the block's output is not the projection alone
    assert np.abs(want - np.asarray(x, np.float32)).max() < np.abs(want).max()


CASES = {  # why a block does not fuse: the block's settings, x's dtype, train
    "training": ({}, jnp.bfloat16, True),
    "xla_norms": (dict(norm_implementation="xla"), jnp.bfloat16, False),
    "x_in_float32": ({}, jnp.float32, False),  # x + h promotes to float32; the kernel writes bf16
    "few_positions": ({}, jnp.bfloat16, False),  # 8×8: below FUSED_RESIDUAL_MIN_POSITIONS
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_block_that_does_not_fuse_computes_what_it_did(case):
    """In training, with XLA's norms, for x in float32 under a bf16 block and at 8×8, fuses_residual is
    False and the block's output is bit for bit that of the block that never fuses (XLA's product, then
    x + h)."""
    settings, dtype, training = CASES[case]
    x = inputs((8, 8) if case == "few_positions" else (16, 16), dtype=dtype)
    fused, unfused = block(**settings), block(Unfused, **settings)
    params = random_params(fused, x)
    assert not fused.bind({"params": params}).fuses_residual(x, training)

    def apply(module):
        return module.apply({"params": params}, x, train=training)

    assert "concat_dense" not in str(jax.make_jaxpr(lambda: apply(fused))())
    np.testing.assert_array_equal(np.asarray(apply(fused), np.float32),
                                  np.asarray(apply(unfused), np.float32))


def test_initialisation_does_not_fuse():
    """At initialisation the block creates its parameters through XLA's path (the same tree)."""
    seen = []

    class Probe(AttentionBlock):
        def fuses_residual(self, x, train):
            seen.append(super().fuses_residual(x, train))
            return seen[-1]

    x = inputs((16, 16))
    params = jax.eval_shape(lambda: block(Probe).init(jax.random.key(0), x))["params"]
    assert seen == [False]
    assert params["proj_out"]["kernel"].shape == (64, 64) and params["proj_out"]["bias"].shape == (64,)


def test_shifted_dense_products():
    """ShiftedDense: (x + s)·W + b + r by XLA and by the product kernel (interpreted), float32 within float32
    roundings of float64 NumPy; an unknown product is a ValueError naming the choices."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32)
    s = jnp.asarray(rng.normal(size=32), jnp.float32)
    r = jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32)
    params = {"kernel": jnp.asarray(rng.normal(size=(32, 32)) / 6, jnp.float32),
              "bias": jnp.asarray(rng.normal(size=32), jnp.float32)}
    w, b = (np.asarray(params[k], np.float64) for k in ("kernel", "bias"))
    want = (np.asarray(x, np.float64) + np.asarray(s, np.float64)) @ w + b + np.asarray(r, np.float64)
    for product in ("xla", "pallas_interpret"):
        got = ShiftedDense(32, product=product).apply({"params": params}, x, s, r)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="'xla', 'pallas' or 'pallas_interpret', got 'cuda'"):
        ShiftedDense(32, product="cuda").apply({"params": params}, x, s, r)
