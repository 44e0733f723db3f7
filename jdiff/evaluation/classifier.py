"""classifier-FID: the Fréchet distance in the feature space of a small CNN trained on the data set's
labels, for offline data sets (``digits``, ``mnist5k``) where no standard Inception weights are at hand.

This is the common practice for MNIST-like sets: a classifier trained on the same data replaces the
ImageNet Inception network, and the Fréchet distance (Heusel et al. 2017, eq. 6; :func:`fid.frechet_distance`)
is taken between the Gaussian fits of its penultimate-layer activations on samples and on real images.
The numbers are **not FID**: they depend on this classifier, its training and the data set, and compare
only with other classifier-FIDs of the same classifier, reference and sample count. Label them
``classifier-FID (<data set>)`` (:func:`metric_name`), never "FID".

The network (:class:`DigitClassifier`): three 3×3 convolutions (the second with stride 2), a dense
feature layer (``feature_dim``, ReLU) — the features — and a linear read-out to the classes. It is trained
with Adam on cross-entropy over a fixed split of the data set (``holdout_fraction`` held out to measure
its accuracy), one compiled step at a time (about 15 seconds on a 2-core CPU for the 8×8 digits),
and cached as an ``.npz`` with the settings that made it, so every experiment of a data set scores with
the same network (:func:`load_or_train_classifier`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jdiff import data as data_lib
from jdiff.evaluation import fid


def metric_name(dataset: str) -> str:
    """The label of the metric in tables, JSON and plots: ``classifier-FID (<data set>)``."""
    return f"classifier-FID ({dataset})"


class DigitClassifier(nn.Module):
    """uint8 NHWC images → (features (N, feature_dim), logits (N, num_classes)), float32."""

    num_classes: int = 10
    width: int = 32
    feature_dim: int = 64

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = images.astype(jnp.float32) / 127.5 - 1.0
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3))(x))
        features = nn.relu(nn.Dense(self.feature_dim)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(self.num_classes)(features)


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    """A trained :class:`DigitClassifier`: its parameters and what made it (``settings``: data set,
    image shape, number of classes, seed, steps, held-out fraction and accuracy, ...)."""

    params: Mapping[str, Any]
    settings: Mapping[str, Any]

    @property
    def module(self) -> DigitClassifier:
        s = self.settings
        return DigitClassifier(num_classes=s["num_classes"], width=s["width"], feature_dim=s["feature_dim"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.settings["image_shape"])


def holdout_split(num_examples: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, held-out) indices: a random ``holdout_fraction`` of ``range(num_examples)`` held out,
    drawn with ``default_rng(seed)``."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be strictly between 0 and 1")
    held = int(round(num_examples * holdout_fraction))
    if not 0 < held < num_examples:
        raise ValueError(f"holdout_fraction={holdout_fraction} of {num_examples} examples leaves an empty "
                         "part; use more examples or another fraction")
    permutation = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(permutation[held:]), np.sort(permutation[:held])


def _check_images(images: np.ndarray, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}; quantise "
                         "samples with jdiff.images.to_uint8")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"the classifier was trained on images of shape {tuple(image_shape)}, got "
                         f"{tuple(images.shape[1:])}: sample at the classifier's resolution or train one for "
                         "this one")
    return images


def train_classifier(images: np.ndarray, labels: np.ndarray, *, num_classes: int = 10, seed: int = 0,
                     steps: int = 500, batch_size: int = 128, learning_rate: float = 2e-3,
                     width: int = 32, feature_dim: int = 64) -> Mapping[str, Any]:
    """Parameters of a :class:`DigitClassifier` trained with Adam on the mean cross-entropy of
    ``labels`` (int, 0 … num_classes − 1) given ``images`` (uint8 NHWC), ``steps`` batches of
    ``batch_size`` drawn as jdiff's training batches (one permutation per epoch,
    :func:`jdiff.data.example_indices` with ``seed``), one compiled step."""
    images = _check_images(images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected integer labels of shape ({len(images)},), got {labels.dtype} "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels span {labels.min()} … {labels.max()}, outside 0 … {num_classes - 1}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must be positive")
    module = DigitClassifier(num_classes=num_classes, width=width, feature_dim=feature_dim)
    params = module.init(jax.random.key(seed), jnp.zeros((1,) + images.shape[1:], jnp.uint8))["params"]
    tx = optax.adam(learning_rate)
    positions = np.arange(steps * batch_size, dtype=np.int64)
    batches = data_lib.example_indices(len(images), positions, seed).reshape(steps, batch_size)

    # One jitted step called from Python: XLA's CPU convolutions run ~10x slower inside a scan's loop.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels, rows):
        def loss_fn(p):
            _, logits = module.apply({"params": p}, images[rows])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[rows]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    device_images, device_labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    for rows in batches:
        params, opt_state = step(params, opt_state, device_images, device_labels, rows)
    return jax.device_get(params)


def make_classifier_feature_fn(classifier: TrainedClassifier, batch_size: int = 1000) -> fid.FeatureFn:
    """``images (N, H, W, C) uint8 → (features (N, feature_dim), logits (N, classes))`` as float32 NumPy,
    ``batch_size`` pictures per jitted call (the last padded, so it compiles once); the same signature as
    :func:`jdiff.evaluation.fid.make_feature_fn`, so it plugs into the λ search's FID score."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    module, params = classifier.module, jax.device_put(classifier.params)
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x))

    def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = _check_images(images, classifier.image_shape)
        if len(images) == 0:
            raise ValueError("no images to compute features of")
        size = min(batch_size, len(images))
        parts = []
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            valid = len(chunk)
            if valid < size:
                chunk = np.concatenate([chunk, np.zeros((size - valid,) + chunk.shape[1:], np.uint8)])
            parts.append(tuple(np.asarray(out)[:valid] for out in apply(params, chunk)))
        return tuple(np.concatenate(column) for column in zip(*parts))

    return features


def accuracy(classifier: TrainedClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of ``images`` whose arg-max logit is their label."""
    _, logits = make_classifier_feature_fn(classifier)(images)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def classifier_fid(images: np.ndarray, reference: fid.Statistics, feature_fn: fid.FeatureFn) -> float:
    """classifier-FID of uint8 ``images`` against ``reference`` statistics: the Fréchet distance between
    the Gaussian fits of their classifier features (``feature_fn``: :func:`make_classifier_feature_fn`)."""
    stats = fid.statistics(feature_fn(images)[0])
    return fid.frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)


def reference_statistics(images: np.ndarray, feature_fn: fid.FeatureFn) -> fid.Statistics:
    """Mean and covariance of the classifier features of real ``images`` (uint8 NHWC)."""
    return fid.statistics(feature_fn(images)[0])


# --- the cache -------------------------------------------------------------------------------------

def save_classifier(path: str, classifier: TrainedClassifier) -> None:
    """The parameters (one array per ``/``-joined path) and the settings (JSON) in an ``.npz``, atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    arrays = {"/".join(key): np.asarray(value)
              for key, value in traverse_util.flatten_dict(classifier.params).items()}
    fd, temporary = tempfile.mkstemp(dir=directory, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, settings=np.asarray(json.dumps(dict(classifier.settings))), **arrays)
        os.chmod(temporary, 0o644)   # mkstemp's 0600 would keep a shared cache from other users
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_classifier(path: str) -> TrainedClassifier:
    """A classifier written by :func:`save_classifier`."""
    with np.load(path) as f:
        if "settings" not in f.files:
            raise ValueError(f"{path} is not a jdiff classifier (no 'settings' entry)")
        settings = json.loads(str(f["settings"]))
        params = traverse_util.unflatten_dict({tuple(k.split("/")): f[k] for k in f.files if k != "settings"})
    return TrainedClassifier(params, settings)


def load_or_train_classifier(cache_path: str, dataset: data_lib.ArrayDataset, *, seed: int = 0,
                             steps: int = 500, holdout_fraction: float = 0.2,
                             num_classes: int = 10) -> TrainedClassifier:
    """The classifier cached at ``cache_path``, or one trained on ``dataset`` (all but a held-out
    ``holdout_fraction``, :func:`holdout_split` with ``seed``) and written there, with its held-out
    accuracy in ``settings["heldout_accuracy"]``. A cache made with other settings (data set, image shape,
    seed, steps, ...) is refused: delete it or choose another path."""
    if dataset.labels is None:
        raise ValueError(f"data set {dataset.name!r} has no labels to train a classifier on")
    wanted = dict(dataset=dataset.name, image_shape=list(dataset.image_shape), num_images=len(dataset),
                  num_classes=num_classes, seed=seed, steps=steps, holdout_fraction=holdout_fraction,
                  width=DigitClassifier.width, feature_dim=DigitClassifier.feature_dim)
    if os.path.exists(cache_path):
        classifier = load_classifier(cache_path)
        differ = {k: (classifier.settings.get(k), v) for k, v in wanted.items()
                  if classifier.settings.get(k) != v}
        if differ:
            raise ValueError(f"the classifier cached at {cache_path} was made with other settings "
                             f"{differ} (cached, wanted): delete the file or pass another cache path")
        return classifier
    train, held = holdout_split(len(dataset), holdout_fraction, seed)
    params = train_classifier(dataset.images[train], dataset.labels[train], num_classes=num_classes,
                              seed=seed, steps=steps)
    classifier = TrainedClassifier(params, dict(wanted, num_train=len(train), num_heldout=len(held)))
    held_accuracy = accuracy(classifier, dataset.images[held], dataset.labels[held])
    classifier = TrainedClassifier(params, dict(classifier.settings, heldout_accuracy=held_accuracy))
    save_classifier(cache_path, classifier)
    return classifier
