"""Fréchet distance, Inception Score, precision/recall and statistics files against closed forms and
independent computations."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.evaluation import fid, inception


def random_covariance(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


def rotation(rng, d):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


# --- Fréchet distance ------------------------------------------------------------------------------

def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    a, b = rng.uniform(0.1, 3, 12), rng.uniform(0.1, 3, 12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # Rotating both (commuting covariances) changes nothing.
    q = rotation(rng, 12)
    rotated = fid.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_one_dimensional():
    assert fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2)


@pytest.mark.parametrize("rank", [None, 5])
def test_identical_and_shifted_gaussians(rank):
    """FID(X, X) = 0 and a pure shift costs ‖Δμ‖², also for singular covariances (rank 5 of 32)."""
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 32, rank)
    mu, shift = rng.standard_normal(32), rng.standard_normal(32)
    scale = np.trace(sigma)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * scale
    shifted = fid.frechet_distance(mu, sigma, mu + shift, sigma)
    assert shifted == pytest.approx(shift @ shift, abs=1e-9 * scale)


def test_singular_against_diagonal_closed_form():
    """Fewer samples than dimensions: zero eigenvalues on both sides, in different directions."""
    a = np.array([2.0, 0.0, 1.0, 0.0, 0.5])
    b = np.array([0.0, 3.0, 1.0, 0.0, 2.0])
    q = rotation(np.random.default_rng(2), 5)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = fid.frechet_distance(np.zeros(5), q @ np.diag(a) @ q.T, np.zeros(5), q @ np.diag(b) @ q.T)
    assert value == pytest.approx(expected, abs=1e-9)


def test_matches_the_sqrtm_formulation():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    s1, s2 = random_covariance(rng, 20), random_covariance(rng, 20)
    reference = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)


def test_frechet_distance_rejects_bad_input():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="shapes"):
        fid.frechet_distance(np.zeros(3), eye, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="positive semi-definite"):
        fid.frechet_distance(np.zeros(3), np.diag([1.0, -0.5, 1.0]), np.zeros(3), eye)
    with pytest.raises(ValueError, match="symmetric"):
        fid.frechet_distance(np.zeros(3), eye, np.zeros(3), eye + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="non-finite"):
        fid.frechet_distance(np.array([0.0, np.nan, 0.0]), eye, np.zeros(3), eye)


def test_statistics():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    stats = fid.statistics(x)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, centred.T @ centred / 49, rtol=1e-12)
    assert stats.mu.dtype == stats.sigma.dtype == np.float64
    with pytest.raises(ValueError, match="N ≥ 2"):
        fid.statistics(x[:1])


# --- Inception Score -------------------------------------------------------------------------------

def test_inception_score_closed_forms():
    assert fid.inception_score(np.zeros((40, 7))) == pytest.approx((1.0, 0.0))
    # Confident and balanced over C classes in every split: IS = C.
    classes = 8
    logits = 60.0 * np.eye(classes)[np.arange(80) % classes]
    mean, std = fid.inception_score(logits, splits=10)
    assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Two classes, p(y|x) = (p, 1-p) or (1-p, p) half the time: IS = 2 p^p (1-p)^(1-p).
    p = 0.8
    rows = np.log(np.array([[p, 1 - p], [1 - p, p]]))[np.arange(20) % 2]
    assert fid.inception_score(rows, splits=2)[0] == pytest.approx(2 * p ** p * (1 - p) ** (1 - p), rel=1e-12)


def test_inception_score_splits_are_contiguous():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((23, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for i in range(4):
        part = probs[i * 23 // 4:(i + 1) * 23 // 4]
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0))), axis=1))))
    mean, std = fid.inception_score(logits, splits=4)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)
    with pytest.raises(ValueError, match="splits"):
        fid.inception_score(logits[:3], splits=4)


# --- precision and recall --------------------------------------------------------------------------

def brute_force_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def coverage(points, centres, r):
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return np.mean(np.any(d <= r[None, :], axis=1))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((40, 5))
    fake = rng.standard_normal((30, 5)) * 1.5 + 0.7
    expected = brute_force_precision_recall(real, fake, 3)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
    assert fid.precision_recall(real, fake, k=3, block_size=7) == pytest.approx(expected)


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((25, 4))
    assert fid.precision_recall(x, x) == (1.0, 1.0)
    assert fid.precision_recall(x, x + 100.0) == (0.0, 0.0)
    # A fake set that covers only half of the real set: precision 1, recall about 1/2.
    clusters = np.concatenate([rng.standard_normal((20, 4)) * 0.1, rng.standard_normal((20, 4)) * 0.1 + 50])
    precision, recall = fid.precision_recall(clusters, clusters[:20] + 0.01)
    assert precision == 1.0 and recall == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k=3"):
        fid.precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="expected features"):
        fid.precision_recall(x, x[:, :2])


# --- feature batching ------------------------------------------------------------------------------

class TinyNet(nn.Module):
    """Stands in for the Inception: per-picture channel means and the top-left pixel."""

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32) * self.param("scale", nn.initializers.ones, ())
        return jnp.mean(x, axis=(1, 2)), x[:, 0, 0, :]


def test_feature_fn_batches_and_pads():
    rng = np.random.default_rng(8)
    images = np.floor(rng.random((5, 4, 3, 3)) * 256).astype(np.uint8)
    variables = {"params": {"scale": jnp.float32(2.0)}}
    batch = 2 * jax.device_count()
    pool, logits = fid.make_feature_fn(variables, batch_size=batch, model=TinyNet())(images)
    np.testing.assert_allclose(pool, 2.0 * images.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(logits, 2.0 * images[:, 0, 0, :])
    with pytest.raises(ValueError, match="non-zero number"):
        fid.make_feature_fn(variables, batch_size=batch, model=TinyNet())(images[:0])
    with pytest.raises(ValueError, match="positive multiple"):
        fid.make_feature_fn(variables, batch_size=0, model=TinyNet())


# --- statistics files ------------------------------------------------------------------------------

def fake_features(images):
    flat = images.reshape(len(images), -1).astype(np.float32)
    return flat, flat


def test_reference_statistics_formats(tmp_path):
    rng = np.random.default_rng(9)
    images = np.floor(rng.random((12, 2, 2, 3)) * 256).astype(np.uint8)
    computed = fid.statistics(fake_features(images)[0])
    stats = fid.Statistics(rng.standard_normal(12), random_covariance(rng, 12))

    path = str(tmp_path / "stats.npz")
    fid.save_statistics(path, stats)
    loaded = fid.load_reference_statistics(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)

    adm = str(tmp_path / "adm_reference.npz")
    np.savez(adm, arr_0=images, mu=stats.mu, sigma=stats.sigma, mu_s=stats.mu, sigma_s=stats.sigma)
    np.testing.assert_array_equal(fid.load_reference_statistics(adm).mu, stats.mu)
    recomputed = fid.load_reference_statistics(adm, fake_features, use_precomputed=False)
    np.testing.assert_allclose(recomputed.sigma, computed.sigma)

    images_only = str(tmp_path / "images.npz")
    np.savez(images_only, arr_0=images)
    np.testing.assert_allclose(fid.load_reference_statistics(images_only, fake_features).mu, computed.mu)
    with pytest.raises(ValueError, match="feature_fn"):
        fid.load_reference_statistics(images_only)
    np.savez(str(tmp_path / "other.npz"), x=np.zeros(3))
    with pytest.raises(ValueError, match="mu/sigma or arr_0"):
        fid.load_reference_statistics(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError):
        fid.load_reference_statistics(str(tmp_path / "missing.npz"))


def test_dataset_statistics_are_cached(tmp_path):
    rng = np.random.default_rng(10)
    images = np.floor(rng.random((10, 2, 2, 3)) * 256).astype(np.uint8)
    calls = []

    def batches():
        calls.append(1)
        return [images[:4], images[4:]]

    first = fid.dataset_statistics(batches, fake_features, dataset="toy", split="train[:10]",
                                   network="fake", cache_dir=str(tmp_path))
    second = fid.dataset_statistics(batches, fake_features, dataset="toy", split="train[:10]",
                                    network="fake", cache_dir=str(tmp_path))
    assert len(calls) == 1
    np.testing.assert_array_equal(first.sigma, second.sigma)
    np.testing.assert_allclose(first.mu, fake_features(images)[0].mean(0))
    path = fid.statistics_cache_path("toy", "train[:10]", "fake", str(tmp_path))
    assert os.path.dirname(path) == str(tmp_path / "fid_stats")
    with np.load(path) as f:
        assert int(f["num_images"]) == 10 and set(f.files) == {"mu", "sigma", "num_images"}
    # another network's statistics are computed afresh, never read from the first one's file
    other = fid.dataset_statistics(batches, lambda x: (fake_features(x)[0] + 1.0, None), dataset="toy",
                                   split="train[:10]", network="other", cache_dir=str(tmp_path))
    assert len(calls) == 2
    np.testing.assert_allclose(other.mu, first.mu + 1.0)
    with pytest.raises(ValueError, match="name the feature network"):
        fid.statistics_cache_path("toy", "train", "", str(tmp_path))


def test_inception_fingerprint_names_the_weights():
    variables = inception.convert_state_dict(inception.random_inception_state_dict(0))
    again = inception.convert_state_dict(inception.random_inception_state_dict(0))
    other = inception.convert_state_dict(inception.random_inception_state_dict(1))
    assert inception.fingerprint(variables) == inception.fingerprint(again)
    assert inception.fingerprint(variables) != inception.fingerprint(other)
    leaf_path = jax.tree_util.tree_flatten_with_path(variables)[0][0][0]
    one_changed = jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(x).copy() + (1e-7 if p == leaf_path else 0.0), variables)
    assert inception.fingerprint(one_changed) != inception.fingerprint(variables)
    assert len(inception.fingerprint(variables)) == 12
