"""``--mode=eval`` (jdiff.evaluation.run.evaluate) on a few 8×8 pictures with random Inception weights:
a sample folder against an ADM-style reference batch, a checkpoint sampled first against cached training
statistics, and the errors that must come before any sampling."""

import json
import os

import numpy as np
import pytest

from jdiff import config as config_lib
from jdiff import data as data_lib
from jdiff import sampling
from jdiff.evaluation import inception, run

BATCH = 5  # one Inception shape for every test (compiled once, and cached across runs)


@pytest.fixture(scope="module")
def variables():
    return inception.convert_state_dict(inception.random_inception_state_dict(7))


def pictures(n, seed):
    """Smooth random 8×8 grey pictures (blobs), so that Inception's random features differ between sets."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:8, 0:8]
    centres = rng.uniform(1, 7, (n, 2, 1, 1))
    blobs = np.exp(-((y - centres[:, 0]) ** 2 + (x - centres[:, 1]) ** 2) / rng.uniform(2, 8, (n, 1, 1)))
    return np.round(255 * blobs).astype(np.uint8)[..., None]


def write_shards(directory, images, size):
    os.makedirs(directory, exist_ok=True)
    for start in range(0, len(images), size):
        end = min(start + size, len(images))
        np.savez(os.path.join(directory, f"samples_{start:07d}_{end:07d}.npz"), images=images[start:end],
                 indices=np.arange(start, end))
    # A shard being written (not renamed yet) is ignored.
    np.savez(os.path.join(directory, "samples_0000099_0000100.npz.tmp"), images=images[:1])


def eval_config(**eval_settings):
    c = config_lib.default_config()
    c.data.name, c.data.image_size, c.data.channels = "digits", 8, 1
    c.eval.batch_size = BATCH
    for key, value in eval_settings.items():
        c.eval[key] = value
    return c


def test_sample_folder_against_an_adm_reference_batch(tmp_path, variables):
    """Samples = the reference pictures: FID ≈ 0, precision = recall = 1; IS from the same logits is ≥ 1.
    The reference file holds only arr_0, so its features serve both the statistics and precision/recall."""
    images = pictures(10, seed=0)
    folder = str(tmp_path / "samples" / "my_run")
    write_shards(folder, images, 6)  # shards of 6 and 4, Inception batches of 5 and 5
    reference = str(tmp_path / "ref_batch.npz")
    np.savez(reference, arr_0=images)
    config = eval_config(samples_dir=folder, reference_stats=reference, inception_score=True,
                         precision_recall=True)
    result = run.evaluate(config, str(tmp_path), inception_params=variables)
    assert result["num_samples"] == 10 and result["run"] == "my_run"
    assert abs(result["fid"]) < 1e-3 * 2048
    assert result["precision"] == result["recall"] == 1.0 and result["precision_recall_real_images"] == 10
    assert result["inception_score"] >= 1.0 and result["inception_score_std"] >= 0.0
    with open(tmp_path / "eval" / "my_run.json") as f:
        assert json.load(f) == json.loads(json.dumps(result))
    assert os.listdir(tmp_path / "tensorboard")
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert logged[-1]["eval/fid"] == pytest.approx(result["fid"]) and logged[-1]["step"] == 0


def test_checkpoint_is_sampled_then_scored(tmp_path, variables):
    """No samples_dir: the checkpoint is sampled into <workdir>/samples/<run name>, then scored against
    the statistics file (the FID's value itself is checked by the identical-sets test above)."""
    from test_exposure_bias import converted_tiny_unet, tiny_unet_config

    reference = str(tmp_path / "stats.npz")
    np.savez(reference, mu=np.full(2048, 0.1), sigma=np.eye(2048) * 0.5)
    config = tiny_unet_config()
    config.sampling.num_samples, config.eval.batch_size, config.eval.reference_stats = 4, BATCH, reference
    converted_tiny_unet(str(tmp_path), config)
    result = run.evaluate(config, str(tmp_path), inception_params=variables)
    name = sampling.run_name(config, 0)
    assert result["run"] == name and result["checkpoint_step"] == 0 and result["num_samples"] == 4
    assert sampling.completed_shards(str(tmp_path / "samples" / name)) == {0: 4}
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert result["reference"] == f"file {reference}"
    assert result["sampling_config"]["sampling"]["respacing"] == "4"
    assert os.path.exists(tmp_path / "eval" / f"{name}.json")


def test_training_statistics_are_cached_at_the_model_resolution(tmp_path, monkeypatch):
    """The data set is loaded only to fill the cache (or for precision/recall pictures); the cache name
    carries the resolution and channels."""
    monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path))
    training = pictures(6, seed=1)
    loads = []

    def load_dataset(name, **kwargs):
        loads.append(kwargs)
        return data_lib.ArrayDataset(training, None, name)

    monkeypatch.setattr(data_lib, "load_dataset", load_dataset)

    def pixels(images):
        flat = images.reshape(len(images), -1).astype(np.float32)
        return flat, flat

    config = eval_config()
    first = run.load_reference(config, pixels, network="pixels")
    assert loads == [dict(split="train", image_size=8, channels=1, data_dir=None)]
    assert os.path.exists(tmp_path / "fid_stats" / "digits_train_8x8x1_pixels.npz")
    np.testing.assert_allclose(first.stats.mu, training.reshape(6, -1).mean(0))
    assert first.description == "training data digits train_8x8x1" and first.images is None
    again = run.load_reference(config, pixels, network="pixels")
    assert len(loads) == 1
    np.testing.assert_array_equal(again.stats.sigma, first.stats.sigma)
    with_images = run.load_reference(config, pixels, network="pixels", with_images=True)
    assert len(loads) == 2 and np.array_equal(with_images.images, training)


def test_errors_come_before_any_sampling(tmp_path, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking")

    monkeypatch.setattr(sampling, "sample_to_directory", no_sampling)
    # No checkpoint in the workdir either: the Inception weights' error must come first.
    with pytest.raises(FileNotFoundError, match=inception.FID_WEIGHTS_URL):
        run.evaluate(eval_config(inception_weights=str(tmp_path / "missing.npz")), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no sample shards"):
        run.evaluate(eval_config(samples_dir=str(tmp_path)), str(tmp_path))
    config = eval_config(inception_score=True)
    config.sampling.num_samples = 9
    with pytest.raises(ValueError, match="at least 10 samples"):
        run.evaluate(config, str(tmp_path))
    stats_only = str(tmp_path / "stats.npz")
    np.savez(stats_only, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="needs reference pictures"):
        run.evaluate(eval_config(reference_stats=stats_only, precision_recall=True), str(tmp_path),
                     inception_params={})
    assert not os.path.exists(tmp_path / "samples")
