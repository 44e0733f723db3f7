"""The Flax FID Inception against pytorch-fid's network, and the weight loading paths.

tests/data/inception_parity.npz holds pytorch-fid's pool3 features for two fixed pictures under the
random weights ``random_inception_state_dict(seed)`` (made by experiments/make_inception_fixture.py),
so the test regenerates the weights instead of shipping 95 MB of them.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import env_with_devices
from jdiff.evaluation import fid, inception

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "inception_parity.npz")


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def state_dict(fixture):
    return inception.random_inception_state_dict(int(fixture["seed"]))


@pytest.fixture(scope="module")
def npz_weights(tmp_path_factory, state_dict):
    path = str(tmp_path_factory.mktemp("weights") / "random_inception.npz")
    np.savez(path, **state_dict)
    return path


@pytest.fixture(scope="module")
def variables(npz_weights):
    return inception.load_inception_params(path=npz_weights)


@pytest.fixture(scope="module")
def features(fixture, variables):
    """The parity run: weights through the .npz loading path, pictures through the sharded feature fn."""
    feature_fn = fid.make_feature_fn(variables, batch_size=jax.device_count() * 2)
    return feature_fn(fixture["images"])


def test_pool3_matches_pytorch_fid(fixture, features):
    pool, _ = features
    reference = fixture["pool3"]
    assert pool.shape == reference.shape == (2, 2048)
    # Non-degenerate features: a broken port cannot pass by producing zeros.
    assert np.abs(reference).max() > 1.0 and np.mean(reference > 0) > 0.3
    assert np.abs(reference[0] - reference[1]).max() > 0.1
    assert np.abs(pool - reference).max() <= 1e-4 * np.abs(reference).max()


def test_logits_are_the_bias_free_classifier(fixture, features, state_dict):
    _, logits = features
    expected = fixture["pool3"].astype(np.float64) @ state_dict["fc.weight"].astype(np.float64).T
    assert logits.shape == (2, 1008)
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("case", ["up_down", "down_up"])
def test_resize_matches_torch_interpolate(fixture, case):
    x, expected = fixture[f"resize/{case}/in"], fixture[f"resize/{case}/out"]
    out = inception.resize_bilinear(jnp.asarray(x), expected.shape[1:3])
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-6)


def test_bilinear_matrix_rows_are_convex_weights():
    for in_size, out_size in [(32, 299), (512, 299), (1, 5)]:
        m = inception._bilinear_matrix(in_size, out_size)
        np.testing.assert_allclose(m.sum(axis=1), 1.0)
        assert m.min() >= 0.0
    np.testing.assert_array_equal(inception._bilinear_matrix(7, 7), np.eye(7))


def test_grayscale_is_repeated_to_rgb():
    gray = np.arange(2 * 9 * 7, dtype=np.uint8).reshape(2, 9, 7, 1)
    x = inception.preprocess(jnp.asarray(gray))
    assert x.shape == (2, 299, 299, 3)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(inception.preprocess(jnp.repeat(gray, 3, -1))))
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_rejects_float_and_bad_channel_images(variables):
    with pytest.raises(ValueError, match="uint8"):
        jax.eval_shape(inception.InceptionV3().apply, variables, jnp.zeros((1, 8, 8, 3), jnp.float32))
    with pytest.raises(ValueError, match="shape"):
        jax.eval_shape(inception.InceptionV3().apply, variables, jnp.zeros((1, 8, 8, 4), jnp.uint8))
    feature_fn = fid.make_feature_fn(variables, batch_size=jax.device_count())
    with pytest.raises(ValueError, match="to_uint8"):
        feature_fn(np.zeros((1, 8, 8, 3), np.float32))


def test_random_state_dict_is_deterministic_and_complete(state_dict):
    again = inception.random_inception_state_dict(2015)
    assert state_dict.keys() == again.keys()
    assert all(np.array_equal(state_dict[k], again[k]) for k in state_dict)
    layout = inception.state_dict_layout()
    assert len(layout) == 471 and sum(np.prod(s) for s in layout.values()) == 23_884_384
    assert layout["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert layout["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert layout["fc.weight"] == (1008, 2048)


def test_convert_state_dict_rejects_wrong_dicts(state_dict):
    missing = {k: v for k, v in state_dict.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    with pytest.raises(ValueError, match="1 missing keys"):
        inception.convert_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected keys"):
        inception.convert_state_dict({**state_dict, "AuxLogits.fc.weight": np.zeros((1008, 768))})
    transposed = dict(state_dict, **{"Mixed_6b.branch7x7_2.conv.weight":
                                     state_dict["Mixed_6b.branch7x7_2.conv.weight"].transpose(0, 1, 3, 2)})
    with pytest.raises(ValueError, match="branch7x7_2.conv.weight has shape"):
        inception.convert_state_dict(transposed)


def test_missing_weights_without_network_says_where_to_put_them(tmp_path):
    # Port 9 on the loopback refuses at once: the same failure as an offline machine.
    with pytest.raises(FileNotFoundError) as info:
        inception.load_inception_params(cache_dir=str(tmp_path), url="http://127.0.0.1:9/weights.pth")
    message = str(info.value)
    assert inception.FID_WEIGHTS_URL in message
    assert os.path.join(str(tmp_path), inception.FID_WEIGHTS_FILENAME) in message
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match=inception.FID_WEIGHTS_URL):
        inception.load_inception_params(path=str(tmp_path / "nowhere.npz"))


def test_download_with_wrong_checksum_is_rejected(tmp_path):
    source = tmp_path / "mirror" / inception.FID_WEIGHTS_FILENAME
    source.parent.mkdir()
    source.write_bytes(b"not the weights")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="SHA-256"):
        inception.load_inception_params(cache_dir=str(cache), url=source.as_uri())
    assert os.listdir(cache) == []
    # A file placed in the cache by hand is checked too.
    (cache / inception.FID_WEIGHTS_FILENAME).write_bytes(b"not the weights either")
    with pytest.raises(ValueError, match=inception.FID_WEIGHTS_SHA256_PREFIX):
        inception.load_inception_params(cache_dir=str(cache))


def test_cached_npz_is_preferred(tmp_path, npz_weights, state_dict):
    cached = tmp_path / (os.path.splitext(inception.FID_WEIGHTS_FILENAME)[0] + ".npz")
    os.symlink(npz_weights, cached)
    assert inception.inception_weights_path(str(tmp_path)) == str(cached)
    variables = inception.load_inception_params(cache_dir=str(tmp_path))
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
    np.testing.assert_array_equal(variables["batch_stats"]["Mixed_5b"]["branch1x1"]["bn"]["var"],
                                  state_dict["Mixed_5b.branch1x1.bn.running_var"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_pth_is_read_with_torch_and_converts_to_npz(tmp_path, state_dict, variables):
    import torch

    pth, npz = str(tmp_path / "weights.pth"), str(tmp_path / "weights.npz")
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, pth)
    inception.convert_pth_to_npz(pth, npz)
    for path in (pth, npz):
        loaded = inception.load_inception_params(path=path)
        assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_pth_without_torch_points_to_the_npz_conversion(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match="convert_pth_to_npz"):
        inception.load_inception_params(path=str(path))


@pytest.mark.slow
def test_sharded_over_two_devices_with_padding(fixture, npz_weights):
    """Three pictures, batches of two over a 2-device mesh (the last batch padded): same features."""
    script = textwrap.dedent(f"""
        import numpy as np, jax
        from jdiff import sharding
        from jdiff.evaluation import fid, inception
        assert jax.device_count() == 2
        images = np.load({FIXTURE!r})["images"]
        images = np.concatenate([images, images[:1]])
        variables = inception.load_inception_params(path={npz_weights!r})
        pool, logits = fid.make_feature_fn(variables, mesh=sharding.make_mesh(), batch_size=2)(images)
        np.save({npz_weights + '.pool.npy'!r}, pool)
    """)
    env = dict(env_with_devices(2), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    pool = np.load(npz_weights + ".pool.npy")
    reference = fixture["pool3"][[0, 1, 0]]
    assert np.abs(pool - reference).max() <= 1e-4 * np.abs(reference).max()
