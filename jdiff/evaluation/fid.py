"""FID, Inception Score and precision/recall from FID-Inception features; reference and dataset statistics.

Conventions (those of the standard tools; see :mod:`jdiff.evaluation.inception` for the network's):

- Samples are quantised to uint8 before they reach the network (``jdiff.images.to_uint8``: round((x+1)·127.5)
  clipped), as guided-diffusion saves them and as every reference set is stored: FID compares pictures.
- Features are the 2048-d ``pool_3`` activations; statistics are their mean and unbiased covariance in
  float64; the Fréchet distance is evaluated in float64 on the host.
- FID depends on the sample count (it is biased upwards for small N) and on the reference set: papers
  report FID-50k against the whole training set (CIFAR-10) or ADM's reference batches.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jdiff import sharding
from jdiff.config import default_cache_dir
from jdiff.evaluation import inception

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Statistics(NamedTuple):
    """Gaussian fit of a feature set: mean (D,) and covariance (D, D), float64."""

    mu: np.ndarray
    sigma: np.ndarray


# --- features --------------------------------------------------------------------------------------

def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or (N, H, W, 1), got "
                         f"{images.dtype} {images.shape}; quantise samples with jdiff.images.to_uint8")
    return images


def make_feature_fn(variables: Mapping[str, Any], *, mesh: Mesh | None = None, batch_size: int = 200,
                    model: inception.InceptionV3 | None = None) -> FeatureFn:
    """A function ``images (N, H, W, C) uint8 → (pool (N, 2048), logits (N, 1008))`` as float32 NumPy
    arrays, running one jitted Inception call per ``batch_size`` pictures, with the batch split over the
    ``"data"`` axis of ``mesh`` (default: all devices) and the weights replicated.

    The last batch is padded with black pictures to ``batch_size`` (and their rows dropped), so the
    network compiles once per picture size. With several processes, each passes its own pictures, the
    same number on every process, and every process gets the features of all of them, in process order.
    """
    mesh = mesh or sharding.make_mesh()
    devices, processes = mesh.shape[sharding.DATA_AXIS], jax.process_count()
    if batch_size <= 0 or batch_size % devices or batch_size % processes:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the number of devices "
                         f"({devices}) and of processes ({processes})")
    local_batch = batch_size // processes
    model = model or inception.InceptionV3()
    params = jax.device_put(variables, sharding.replicated(mesh))
    batch_sharding = sharding.batch_sharding(mesh)
    apply = jax.jit(model.apply, in_shardings=(sharding.replicated(mesh), batch_sharding),
                    out_shardings=(batch_sharding, batch_sharding))

    def gather(outputs: tuple[jax.Array, ...], valid: int) -> list[np.ndarray]:
        # Global rows are the processes' local batches one after another, each padded at its end.
        gathered = multihost_utils.process_allgather(outputs, tiled=True)
        return [np.asarray(g).reshape(processes, local_batch, -1)[:, :valid].reshape(processes * valid, -1)
                for g in gathered]

    def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = _check_images(images)
        counts = multihost_utils.process_allgather(np.array([len(images)]))
        if len(images) == 0 or np.any(counts != len(images)):
            raise ValueError("every process must pass the same, non-zero number of images; got "
                             f"{counts.ravel()}")
        results, pending = [], None
        for start in range(0, len(images), local_batch):
            chunk = images[start:start + local_batch]
            valid = len(chunk)
            if valid < local_batch:
                chunk = np.concatenate([chunk, np.zeros((local_batch - valid, *chunk.shape[1:]), np.uint8)])
            outputs = apply(params, jax.make_array_from_process_local_data(batch_sharding, chunk))
            # Fetch the previous batch only once this one is queued, so the device never waits on the host.
            if pending is not None:
                results.append(gather(*pending))
            pending = (outputs, valid)
        results.append(gather(*pending))
        pool, logits = (np.concatenate(parts) for parts in zip(*results))
        return pool, logits

    return features


# --- Fréchet distance ------------------------------------------------------------------------------

def statistics(features: np.ndarray) -> Statistics:
    """Mean and unbiased (N − 1) covariance of (N, D) features, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected features of shape (N, D) with N ≥ 2, got {features.shape}")
    return Statistics(features.mean(axis=0), np.cov(features, rowvar=False))


def _nonzero_eigenvalues(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those that float64 rounding cannot tell from zero (below
    D·ε·λ_max, including slightly negative ones) set to zero: their square roots, ~√(ε·λ_max) each, would
    otherwise add up to a visible error for singular covariances."""
    tolerance = len(values) * np.finfo(np.float64).eps * np.abs(values).max()
    return np.where(values > tolerance, values, 0.0)


def _check_covariance(sigma: np.ndarray, eigenvalues: np.ndarray, name: str) -> None:
    if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-12 * np.abs(sigma).max()):
        raise ValueError(f"{name} is not symmetric")
    if eigenvalues.min() < -1e-5 * max(eigenvalues.max(), 0.0):
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue "
                         f"{eigenvalues.min():.3g}, largest {eigenvalues.max():.3g})")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(μ1, Σ1) and N(μ2, Σ2) (Heusel et al. 2017, eq. 6):

        d² = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½,

    in float64. tr (Σ1^½ Σ2 Σ1^½)^½ equals the usual tr (Σ1 Σ2)^½ (same eigenvalues) but is the trace of a
    symmetric PSD matrix's root, read off its eigenvalues. That stays accurate for singular covariances
    (fewer samples than dimensions) without the ε offset on the diagonal that the sqrtm formulation needs,
    and agrees with it to float64 rounding for full-rank ones."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {sigma2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} has non-finite entries")
    values1, vectors1 = np.linalg.eigh(sigma1)
    _check_covariance(sigma1, values1, "sigma1")
    _check_covariance(sigma2, np.linalg.eigvalsh(sigma2), "sigma2")
    root1 = (vectors1 * np.sqrt(_nonzero_eigenvalues(values1))) @ vectors1.T
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = np.sqrt(_nonzero_eigenvalues(eigenvalues)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


# --- Inception Score and precision / recall --------------------------------------------------------

def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), with p(y|x) = softmax(logits)
    and p(y) the mean of p(y|x) over a split; the mean and standard deviation over ``splits`` contiguous
    splits (rows i·N/s … (i+1)·N/s, as improved-GAN's code). Use the bias-free logits of
    :class:`~jdiff.evaluation.inception.InceptionV3`, as that code and ADM's evaluator do."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or splits < 1 or len(logits) < splits:
        raise ValueError(f"expected logits (N, classes) with N ≥ splits ≥ 1, got {logits.shape} and "
                         f"splits={splits}")
    log_p = logits - _logsumexp(logits, axis=1)
    n = len(log_p)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = _logsumexp(part, axis=0) - np.log(len(part))
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(rows: jax.Array, columns: jax.Array) -> jax.Array:
    dot = jnp.matmul(rows, columns.T, precision=jax.lax.Precision.HIGHEST)
    norms_r, norms_c = jnp.sum(rows * rows, axis=1), jnp.sum(columns * columns, axis=1)
    return jnp.maximum(norms_r[:, None] - 2.0 * dot + norms_c[None, :], 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_neighbour(rows: jax.Array, points: jax.Array, k: int) -> jax.Array:
    # The (k+1)-th smallest distance: the first is the point itself, at distance 0.
    return -jax.lax.top_k(-_squared_distances(rows, points), k + 1)[0][:, k]


@jax.jit
def _inside_any_ball(rows: jax.Array, centres: jax.Array, radii: jax.Array) -> jax.Array:
    return jnp.any(_squared_distances(rows, centres) <= radii[None, :], axis=1)


def _blocks(fn: Callable[[jax.Array], jax.Array], rows: jax.Array, block_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(rows[i:i + block_size])) for i in range(0, len(rows), block_size)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     block_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
    around its points with radius the distance to the point's k-th nearest neighbour in its own set;
    precision is the fraction of fake points inside the real manifold, recall the fraction of real
    points inside the fake manifold. Distances are Euclidean in feature space, in float32 on the default
    device, ``block_size`` rows at a time."""
    real, fake = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected features (N, D) and (M, D), got {real.shape} and {fake.shape}")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k={k} must be at least 1 and smaller than both set sizes "
                         f"({len(real)}, {len(fake)})")
    radii_real = jnp.asarray(_blocks(lambda r: _kth_neighbour(r, real, k), real, block_size))
    radii_fake = jnp.asarray(_blocks(lambda r: _kth_neighbour(r, fake, k), fake, block_size))
    precision = _blocks(lambda r: _inside_any_ball(r, real, radii_real), fake, block_size).mean()
    recall = _blocks(lambda r: _inside_any_ball(r, fake, radii_fake), real, block_size).mean()
    return float(precision), float(recall)


# --- reference and dataset statistics --------------------------------------------------------------

def save_statistics(path: str, stats: Statistics, **metadata: Any) -> None:
    """Writes ``mu``/``sigma`` (the format pytorch-fid and ADM's evaluator read) and any metadata arrays
    to an ``.npz``, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, **metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_reference_statistics(path: str, feature_fn: FeatureFn | None = None,
                              use_precomputed: bool = True) -> Statistics:
    """Reference statistics from an ``.npz``: ``mu``/``sigma`` (pytorch-fid's ``--save-stats``, jdiff's
    cache, ADM's reference batches), or ADM's ``arr_0`` pictures (uint8 NHWC) run through ``feature_fn``.

    ADM's reference batches carry both; their ``mu``/``sigma`` come from the TF graph, whose resize differs
    slightly from this port's (see :mod:`jdiff.evaluation.inception`). ``use_precomputed=False`` recomputes
    them from ``arr_0`` with ``feature_fn``, so that both sides of the FID see the same network."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no reference statistics at {path}")
    with np.load(path) as f:
        keys = set(f.files)
        if use_precomputed and {"mu", "sigma"} <= keys:
            return Statistics(f["mu"].astype(np.float64), f["sigma"].astype(np.float64))
        if "arr_0" not in keys:
            wanted = "mu/sigma or arr_0 images" if use_precomputed else "arr_0 images"
            raise ValueError(f"{path} holds {sorted(keys)}, not {wanted}")
        if feature_fn is None:
            raise ValueError(f"{path} holds images (arr_0) to compute statistics from: pass feature_fn="
                             "make_feature_fn(load_inception_params())")
        return statistics(feature_fn(f["arr_0"])[0])


def statistics_cache_path(dataset: str, split: str, network: str, cache_dir: str | None = None) -> str:
    """``<cache_dir>/fid_stats/<dataset>_<split>_<network>.npz`` (cache_dir:
    :func:`jdiff.config.default_cache_dir`; network: which feature network, e.g.
    :func:`jdiff.evaluation.inception.fingerprint` of its weights)."""
    if not network:
        raise ValueError("name the feature network (e.g. inception.fingerprint(params)): statistics of "
                         "different networks must not share a cache file")
    name = re.sub(r"[^A-Za-z0-9._\-\[\]:]", "_", f"{dataset}_{split}_{network}")
    return os.path.join(cache_dir or default_cache_dir(), "fid_stats", f"{name}.npz")


def dataset_statistics(batches: Callable[[], Iterable[np.ndarray]], feature_fn: FeatureFn, *, dataset: str,
                       split: str, network: str, cache_dir: str | None = None) -> Statistics:
    """Statistics of a data set's pictures, computed once per (dataset, split, feature network) and cached
    as an ``.npz`` with ``mu``/``sigma`` and ``num_images`` (:func:`statistics_cache_path`). ``batches()``
    yields uint8 NHWC pictures; it is called only when the cache is empty. Name subsets in ``split`` (e.g.
    ``"train[:10000]"``), as the cache knows only the names; ``network`` names ``feature_fn``'s weights
    (:func:`jdiff.evaluation.inception.fingerprint`)."""
    path = statistics_cache_path(dataset, split, network, cache_dir)
    if os.path.exists(path):
        return load_reference_statistics(path)
    features = np.concatenate([feature_fn(batch)[0] for batch in batches()])
    stats = statistics(features)
    if jax.process_index() == 0:
        save_statistics(path, stats, num_images=np.int64(len(features)))
    return stats
