"""classifier-FID: the digits classifier is accurate on held-out digits, its cache round-trips and refuses
other settings, and the score is ~0 for the reference set itself, small for real held-out digits and large
for noise."""

import jax
import numpy as np
import pytest

from jdiff import data
from jdiff.evaluation import classifier, fid

STEPS = 200


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits", image_size=8, channels=1)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("classifier") / "digits.npz")
    return path, classifier.load_or_train_classifier(path, digits, seed=0, steps=STEPS)


def test_heldout_accuracy_above_90_percent(digits, trained):
    _, clf = trained
    train, held = classifier.holdout_split(len(digits), 0.2, 0)
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == len(digits)
    measured = classifier.accuracy(clf, digits.images[held], digits.labels[held])
    assert measured > 0.9
    assert clf.settings["heldout_accuracy"] == pytest.approx(measured)


def test_cache_round_trip_and_refuses_other_settings(digits, trained):
    path, clf = trained
    again = classifier.load_or_train_classifier(path, digits, seed=0, steps=STEPS)
    jax.tree.map(np.testing.assert_array_equal, clf.params, again.params)
    with pytest.raises(ValueError, match="other settings"):
        classifier.load_or_train_classifier(path, digits, seed=0, steps=STEPS + 1)


def test_classifier_fid_self_real_noise(digits, trained):
    _, clf = trained
    features = classifier.make_classifier_feature_fn(clf, batch_size=500)
    reference = classifier.reference_statistics(digits.images, features)
    assert classifier.classifier_fid(digits.images, reference, features) == pytest.approx(0.0, abs=1e-6)
    _, held = classifier.holdout_split(len(digits), 0.2, 0)
    real = classifier.classifier_fid(digits.images[held], reference, features)
    noise_images = np.random.default_rng(0).integers(0, 256, (len(held), 8, 8, 1), dtype=np.uint8)
    noise = classifier.classifier_fid(noise_images, reference, features)
    assert 0 < real and noise > 20 * real
    # The batching of the feature function (padded last batch) does not change the features.
    one_batch = classifier.make_classifier_feature_fn(clf, batch_size=len(digits))(digits.images)[0]
    np.testing.assert_allclose(features(digits.images)[0], one_batch, rtol=1e-5, atol=1e-5)
    # The same number as the Fréchet distance of the two feature sets' statistics.
    stats = fid.statistics(features(noise_images)[0])
    assert noise == pytest.approx(fid.frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma))


def test_bad_inputs(digits, trained):
    _, clf = trained
    features = classifier.make_classifier_feature_fn(clf)
    with pytest.raises(ValueError, match="trained on images of shape"):
        features(np.zeros((2, 16, 16, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        features(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="labels span"):
        classifier.train_classifier(digits.images[:4], np.array([0, 1, 2, 10]), steps=1)
    with pytest.raises(ValueError, match="holdout_fraction"):
        classifier.holdout_split(10, 1.0, 0)
    assert classifier.metric_name("digits") == "classifier-FID (digits)"
