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
