"""--mode=sample: shards are resumable and the images do not depend on the batch size."""

import os

import numpy as np

from jdiff import sampling
from test_exposure_bias import converted_tiny_unet
from test_train import tiny_config


def test_resume_and_batch_size_independence(tmp_path):
    config = tiny_config()
    config.sampling.num_samples = 6
    config.sampling.batch_size = 4
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.02
    # Random parameters with non-zero output convs, so the samples depend on the network and not only on
    # the noise (drawn in NumPy: the eager init of the UNet took ~25 s of op-by-op compilation).
    converted_tiny_unet(str(tmp_path), config)
    folder = sampling.sample_to_directory(config, str(tmp_path))
    first = sampling.load_samples(folder)
    assert first.shape == (6, 8, 8, 1) and first.dtype == np.uint8
    assert os.path.exists(os.path.join(folder, "grid.png"))

    # A killed job: the last shard is missing and a temporary file is left; the rerun completes it.
    last = sorted(f for f in os.listdir(folder) if f.startswith("samples_"))[-1]
    os.rename(os.path.join(folder, last), os.path.join(folder, last + ".tmp"))
    kept = sorted(f for f in os.listdir(folder) if f.startswith("samples_") and f.endswith(".npz"))
    mtimes = {f: os.path.getmtime(os.path.join(folder, f)) for f in kept}
    sampling.sample_to_directory(config, str(tmp_path))
    np.testing.assert_array_equal(sampling.load_samples(folder), first)
    assert all(os.path.getmtime(os.path.join(folder, f)) == m for f, m in mtimes.items())  # not redone

    # Another batch size draws the same noise per image; XLA's kernels for another batch shape may sum in
    # another order (~1e-6 relative on the CPU), which can move a pixel that sits at a rounding boundary
    # of the uint8 quantisation by one level, no more.
    config.sampling.batch_size = 3
    config.sampling.output_dir = str(tmp_path / "other")
    other = sampling.load_samples(sampling.sample_to_directory(config, str(tmp_path)))
    levels = np.abs(other.astype(np.int16) - first.astype(np.int16))
    assert levels.max() <= 1 and np.mean(levels > 0) < 0.01, (levels.max(), np.mean(levels > 0))


def test_generate_fn_hoists_the_weight_computation_and_samples_the_same_bits(tmp_path):
    """With a bfloat16 compute dtype, make_generate_fn computes the network's weight-only part once
    (samplers.split_weight_computation: the conversions, the q|k|v slices and the shifted biases leave the
    scan's body) and draws exactly the images of the sampler that calls the whole network at every step;
    what its ``lower`` compiles draws them too."""
    import jax
    import jax.numpy as jnp

    from jdiff import samplers, sharding, train

    config = tiny_config()
    config.model.compute_dtype = "bfloat16"
    config.sampling.eps_scaling = "constant"
    config.sampling.eps_scale_b = 1.02
    params = jax.tree.map(jnp.asarray, converted_tiny_unet(str(tmp_path), config))
    model = train.build_model(config)
    indices = jnp.arange(4, dtype=jnp.int32)
    generate_fn = sampling.make_generate_fn(config, model, sharding.make_mesh())
    images = generate_fn(params, indices, None)
    # its lower(): the same computation, compiled without running (profile_step reads the HLO of it)
    compiled = generate_fn.lower(params, indices, None).compile()
    eps_scaling = sampling.eps_scaling_from_config(config.sampling)
    np.testing.assert_array_equal(np.asarray(compiled(params, indices, None, eps_scaling)),
                                  np.asarray(images))

    def apply(p, x, t):
        return model.apply({"params": p}, x, t, None, train=False)

    shapes = (jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32), jax.ShapeDtypeStruct((4,), jnp.int32))
    weights, _ = samplers.split_weight_computation(apply, params, *shapes)
    conv_kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 4]
    cast_kernels = [w for w in weights if w.ndim == 4 and w.dtype == jnp.bfloat16]
    assert len(cast_kernels) >= len(conv_kernels), "the conv kernels at least should be cast before the loop"

    schedule, options = sampling.sampler_settings(config)
    base_key = jax.random.key(config.seed)

    @jax.jit
    def uncast(params):
        keys = jax.vmap(lambda n: jax.random.fold_in(base_key, n))(indices)
        return samplers.sample(lambda x, t: apply(params, x, t), schedule, (4, 8, 8, 1), keys=keys,
                               eps_scaling=sampling.eps_scaling_from_config(config.sampling), **options)

    np.testing.assert_array_equal(np.asarray(images), np.asarray(uncast(params)))
