"""The UNet decoder without its concatenations: a ResBlock given its input as parts (the decoder's activations
and the encoder's skip) reads them as they are where it samples with the GroupNorm kernels (its first
GroupNorm's kernel and the skip's 1×1 product, jdiff.models.pallas_concat_dense, in Pallas's interpreter
here), with the parameters of the block that takes their concatenation and its output within one bf16
rounding; everywhere else (training, XLA's norms, resampling blocks, parts the kernels cannot take, no skip
product) it concatenates them and computes exactly what it computed before; and which of the CIFAR-10
UNet's decoder blocks read their parts at batch 512 (traced for an sm80+ GPU faked on the CPU)."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import train
from jdiff.models import group_norm, layers
from jdiff.models.layers import ResBlock

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "cifar10_debias.py")


def decoder_inputs(parts, spatial=(4, 4), seed=0):
    """Parts (2, H, W, C_k) in bf16 of different means and spreads, and a timestep embedding (2, 128)."""
    rng = np.random.default_rng(seed)
    xs = tuple(jnp.asarray(k + (1.0 + k) * rng.normal(size=(2, *spatial, c)), jnp.bfloat16)
               for k, c in enumerate(parts))
    return xs, jnp.asarray(rng.normal(size=(2, 128)), jnp.float32)


def random_params(block, xs, emb, seed=1):
    """Parameters of the tree ``block`` initialises on the concatenation of ``xs``, drawn at random (norm
    scales ≈ 1, kernels of spread 1/√fan-in, biases ≈ 0.1; none zero, so the zero-initialised output conv
    is not)."""
    shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), jnp.concatenate(xs, -1), emb,
                                               train=False))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        spread = 1.0 / np.sqrt(np.prod(shape[:-1])) if name == "kernel" else 0.1
        return jnp.asarray((name == "scale") + spread * rng.normal(size=shape), leaf.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def bf16_ulp(value):
    """The spacing of bf16 numbers at |value| (8 significant bits)."""
    return 2.0 ** (np.floor(np.log2(abs(value))) - 7)


@pytest.mark.parametrize("scale_shift", [True, False])
def test_a_sampling_resblock_reads_its_parts_as_they_are(scale_shift):
    """With the GroupNorm kernels (interpreted) and bf16, a block given (h, s) reads them as they are: its
    program has the product's kernel and no concatenation, its parameters are those of the block given
    [h | s] (the skip product's 'kernel' (1, 1, C, F) and 'bias' as the 1×1 conv's), and its output is that
    block's within one bf16 rounding of the skip product (the kernel rounds its product plus bias once, XLA
    twice) carried through the final sum: at most 2 bf16 ulps of the output's scale."""
    xs, emb = decoder_inputs((64, 64))
    block = ResBlock(64, use_scale_shift_norm=scale_shift, norm_implementation="pallas_interpret",
                     dtype=jnp.bfloat16)
    params = random_params(block, xs, emb)
    from_parts = jax.eval_shape(lambda: block.init(jax.random.key(1), xs, emb, train=False))["params"]
    assert jax.tree.map(jnp.shape, from_parts) == jax.tree.map(jnp.shape, params)
    assert params["skip_connection"]["kernel"].shape == (1, 1, 128, 64)
    assert block.bind({"params": params}).reads_parts(xs, False)
    jaxpr = str(jax.make_jaxpr(lambda p: block.apply({"params": p}, xs, emb, train=False))(params))
    assert "concat_dense" in jaxpr and "concatenate" not in jaxpr
    got = block.apply({"params": params}, xs, emb, train=False)
    want = block.apply({"params": params}, jnp.concatenate(xs, -1), emb, train=False)
    assert got.shape == want.shape == (2, 4, 4, 64) and got.dtype == jnp.bfloat16
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 2 * bf16_ulp(scale)
    assert np.mean(got == want) > 0.5  # the same norm and convolutions: most elements agree exactly


BLOCKS = {  # why a block does not read its parts: the parts, the block's settings, train
    "training": ((64, 64), {}, True),
    "xla_norms": ((64, 64), dict(norm_implementation="xla"), False),
    "up": ((64, 64), dict(up=True), False),
    "down": ((64, 64), dict(down=True), False),
    "not_whole_programs": ((48, 80), {}, False),  # the norm's kernel takes 64 channels per program
    "no_skip_product": ((32, 32), {}, False),  # 64 channels in and out
}


def block_for(settings):
    return ResBlock(64, use_scale_shift_norm=True, dtype=jnp.bfloat16,
                    **dict(dict(norm_implementation="pallas_interpret"), **settings))


def test_reads_parts_only_where_the_kernels_take_them():
    """reads_parts is True for a sampling block with the GroupNorm kernels whose parts both kernels take,
    and False in training, with XLA's norms, for up- and down-sampling blocks, for parts that are not whole
    programs of the norm's kernel, when the block keeps the width (no skip product) and for parts of two
    dtypes (concatenated, they promote); and at initialisation (the block then creates the 1×1 conv's
    parameters)."""
    xs, _ = decoder_inputs((64, 64))
    assert block_for({}).bind({}).reads_parts(xs, False)
    for name, (parts, settings, training) in BLOCKS.items():
        xs, _ = decoder_inputs(parts)
        assert not block_for(settings).bind({}).reads_parts(xs, training), name
    h, s = decoder_inputs((64, 64))[0]
    assert not block_for({}).bind({}).reads_parts((h, s.astype(jnp.float32)), False)  # two dtypes
    seen = []

    class Probe(ResBlock):
        def reads_parts(self, parts, train):
            seen.append(super().reads_parts(parts, train))
            return seen[-1]

    xs, emb = decoder_inputs((64, 64))
    jax.eval_shape(lambda: Probe(64, norm_implementation="pallas_interpret", dtype=jnp.bfloat16).init(
        jax.random.key(0), xs, emb, train=False))
    assert seen == [False]


@pytest.mark.parametrize("case", ["training", "up", "not_whole_programs"])
def test_a_resblock_that_cannot_read_its_parts_computes_their_concatenations_output(case):
    """Where reads_parts is False (in training, an up-sampling block, parts that are not whole programs of
    the norm's kernel) the block concatenates the parts: its program has no product kernel, and its output
    is bit for bit that of the block given the concatenation (the GroupNorm kernels run, interpreted, on
    the concatenation in both)."""
    parts, settings, training = BLOCKS[case]
    xs, emb = decoder_inputs(parts)
    block = block_for(settings)
    params = random_params(block, xs, emb)

    def apply(p, x):
        return block.apply({"params": p}, x, emb, train=training)

    jaxpr = str(jax.make_jaxpr(apply)(params, xs))
    assert "concat_dense" not in jaxpr and "concatenate" in jaxpr
    got, want = apply(params, xs), apply(params, jnp.concatenate(xs, -1))
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_the_cifar10_unet_samples_without_most_decoder_concatenations(monkeypatch):
    """The CIFAR-10 UNet (configs/cifar10_debias.py, bf16) at batch 512 with the GroupNorm kernels (an
    sm80+ GPU faked; with jax 0.10 on the CPU the Mosaic kernel is not preferred): of its 16 decoder
    ResBlocks, sampling reads the parts in 14 (skip products 'concat_dense'), and concatenates the two
    whose 384 = 256 + 128 channels are not whole programs of the Triton norm (96 channels each) at 16×16
    and 32×32; training concatenates all 16."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("cifar10_debias", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.compute_dtype = "bfloat16"
    config.model.attention_implementation = "xla"
    assert config.model.norm_implementation == "auto"
    monkeypatch.setattr(group_norm, "nvidia_sm80_or_newer", lambda: True)
    monkeypatch.setattr(layers, "nvidia_sm80_or_newer", lambda: True)
    model = train.build_model(config)
    x, t, _ = train.dummy_inputs(config, batch=512)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], t[:1], train=False))

    def program(training):
        return str(jax.make_jaxpr(lambda p: model.apply(p, x, t, train=training,
                                                        rngs={"dropout": jax.random.key(1)}))(params))

    def concatenations(text):  # (H, W, C) of the 4-d concatenations (the decoder's [h | skip])
        shapes = re.findall(r"bf16\[([\d,]+)\] = concatenate", text)
        return sorted(tuple(map(int, shape.split(",")[1:])) for shape in shapes if shape.count(",") == 3)

    sampling = program(False)
    assert sampling.count("name=concat_dense") == 14
    assert concatenations(sampling) == [(16, 16, 384), (32, 32, 384)]
    training = program(True)
    assert training.count("name=concat_dense") == 0
    assert concatenations(training) == sorted([(4, 4, 512)] * 4 + [(8, 8, 512)] * 4 + [(16, 16, 512)] * 3
                                              + [(16, 16, 384), (32, 32, 384)] + [(32, 32, 256)] * 3)
