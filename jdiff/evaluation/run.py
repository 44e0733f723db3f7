"""``--mode=eval``: FID (and optionally Inception Score and precision/recall) of a folder of samples, or of
a checkpoint sampled first, written to ``<workdir>/eval/<run name>.json`` and to TensorBoard.

What is scored: ``config.eval.samples_dir`` (``.npz`` shards as :func:`jdiff.sampling.sample_to_directory`
writes them), or else the checkpoint in the workdir, sampled with ``config.sampling`` into
``<workdir>/samples/<run name>`` (a restarted evaluation reuses the complete shards). The run name is the
sample folder's name.

Reference: ``config.eval.reference_stats``, an ``.npz`` with ``mu``/``sigma`` (pytorch-fid's
``--save-stats``, jdiff's cache) or an ADM reference batch (``arr_0`` pictures, with or without its
``mu``/``sigma``; see :func:`jdiff.evaluation.fid.load_reference_statistics`); or, when empty, the
statistics of the whole training split of ``config.data`` at the model's resolution, computed once per
Inception weights and cached as ``<cache>/fid_stats/<data set>_<split>_<H>x<W>x<C>_<weights>.npz``
(``<weights>``: :func:`jdiff.evaluation.inception.fingerprint`). Precision/recall need reference
pictures (an ADM batch, or the training set), not just statistics: their real set is as many reference
pictures as there are samples (all when fewer), a subset drawn with ``config.seed``.

Inception weights: ``config.eval.inception_weights``, or the cache (downloaded there once). What can fail
without sampling (the weights, the reference, the sample folder) fails before any sampling starts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Iterable, Iterator, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jdiff import sharding
from jdiff.evaluation import fid, inception


def start_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """What every jdiff command does before its work: refuse a bad config (ValueError naming the key),
    start ``jax.distributed`` when ``config.distributed`` asks for it, and log to ``<workdir>/log.txt``."""
    from jdiff import config as config_lib
    from jdiff.metrics import configure_logging

    config_lib.validate(config)
    d = config.distributed
    sharding.maybe_initialize_distributed(d.initialize, d.coordinator_address, d.num_processes, d.process_id)
    configure_logging(workdir)


def replicated_input(feature_fn: fid.FeatureFn) -> fid.FeatureFn:
    """``feature_fn`` for pictures that every process holds in full (a sample shard, a data set): each
    process passes its part of them (padded to equal parts with copies of the last picture), and the
    features of all of them come back, in order, on every process."""
    processes, index = jax.process_count(), jax.process_index()

    def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = len(images)
        part = -(-count // processes)
        padded = np.concatenate([images, np.repeat(images[-1:], part * processes - count, axis=0)])
        pool, logits = feature_fn(padded[index * part:(index + 1) * part])
        return pool[:count], logits[:count]

    return features


@dataclasses.dataclass(frozen=True)
class Reference:
    """The reference side of the FID: statistics, what they are (for the JSON), and, when asked for, the
    reference pictures for the real set of precision/recall with their features where already computed."""

    stats: fid.Statistics
    description: str
    images: np.ndarray | None = None
    features: np.ndarray | None = None


def _chunks(images: np.ndarray, size: int) -> Iterable[np.ndarray]:
    return (images[i:i + size] for i in range(0, len(images), size))


def _rebatch(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The rows of consecutive arrays (sample shards) in batches of ``size``, the last one shorter:
    shards of any size cost no padding but the last batch's."""
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += len(array)
        while count >= size:
            rows = np.concatenate(pending)
            yield rows[:size]
            pending, count = [rows[size:]], count - size
    if count:
        yield np.concatenate(pending)


def features_of(images: np.ndarray, feature_fn: fid.FeatureFn, batch_size: int) -> np.ndarray:
    """pool_3 features of pictures that every process holds in full, ``batch_size`` at a time."""
    return np.concatenate([feature_fn(chunk)[0] for chunk in _chunks(images, batch_size)])


def load_reference(config: ml_collections.ConfigDict, feature_fn: fid.FeatureFn, *, network: str,
                   with_images: bool = False) -> Reference:
    """The reference of ``config.eval.reference_stats`` or of the training data (see the module
    docstring); ``feature_fn`` takes pictures that every process holds in full (:func:`replicated_input`),
    ``network`` names its weights (:func:`jdiff.evaluation.inception.fingerprint`; the cache key).
    ``with_images``: also the reference pictures, for precision/recall (an error if there are none)."""
    e, d = config.eval, config.data
    if e.reference_stats:
        path = e.reference_stats
        if not os.path.exists(path):
            raise FileNotFoundError(f"config.eval.reference_stats={path!r} does not exist")
        with np.load(path) as f:
            keys = set(f.files)
            images = f["arr_0"] if with_images and "arr_0" in keys else None
        if with_images and images is None:
            raise ValueError(f"config.eval.precision_recall needs reference pictures, but {path} holds only "
                             f"{sorted(keys)}: use an ADM reference batch (arr_0), or leave "
                             "config.eval.reference_stats empty to use the training set")
        description = f"file {os.path.abspath(path)}"
        if images is not None and not {"mu", "sigma"} <= keys:
            # The pictures are all the file has: their features give the statistics, one pass for both.
            features = features_of(images, feature_fn, e.batch_size)
            return Reference(fid.statistics(features), description, images, features)
        return Reference(fid.load_reference_statistics(path, feature_fn), description, images)
    from jdiff import data as data_lib

    # Loaded only if the statistics are not cached yet, or for precision/recall.
    dataset = functools.cache(lambda: data_lib.load_dataset(d.name, split=d.split, image_size=d.image_size,
                                                            channels=d.channels, data_dir=d.data_dir or None))
    # The cache knows only (data set, split): the resolution and channels go into the split's name.
    split = f"{d.split}_{d.image_size}x{d.image_size}x{d.channels}"
    stats = fid.dataset_statistics(lambda: _chunks(dataset().images, e.batch_size), feature_fn,
                                   dataset=d.name, split=split, network=network)
    return Reference(stats, f"training data {d.name} {split}", dataset().images if with_images else None)


def _sampling_record(samples_dir: str) -> dict[str, Any] | None:
    """What :func:`jdiff.sampling.sample_to_directory` recorded of how it made the folder (checkpoint
    step, sampling and diffusion settings, seed), or None for a folder made otherwise."""
    path = os.path.join(samples_dir, "sampling_config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *,
             inception_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """FID of ``config.eval.samples_dir`` or of the workdir's checkpoint (module docstring); also the
    Inception Score (``config.eval.inception_score``, 10 splits: needs ≥ 10 samples) and precision/recall
    (``config.eval.precision_recall``, k = 3). Writes ``<workdir>/eval/<run name>.json`` (the scores, the
    number of samples, the reference, and how the folder was sampled: checkpoint step and settings, as
    ``sampling_config.json`` in the folder records them) and the scalars ``eval/fid`` … to TensorBoard at
    the checkpoint's step (process 0), and returns the JSON's content.

    ``inception_params``: Flax variables of the FID Inception instead of loading them (tests)."""
    from jdiff import config as config_lib
    from jdiff import sampling
    from jdiff.metrics import MetricsWriter

    config_lib.validate(config)
    e = config.eval
    samples_dir = e.samples_dir
    if samples_dir and not sampling.completed_shards(samples_dir):
        raise FileNotFoundError(f"config.eval.samples_dir={samples_dir!r} holds no sample shards "
                                "(samples_*.npz); make them with --mode=sample, or leave it empty to sample "
                                "the workdir's checkpoint")
    num_samples = (sum(end - start for start, end in sampling.completed_shards(samples_dir).items())
                   if samples_dir else config.sampling.num_samples)
    if e.inception_score and num_samples < 10:
        raise ValueError(f"config.eval.inception_score needs at least 10 samples (10 splits), got "
                         f"{num_samples}")
    if inception_params is None:
        inception_params = inception.load_inception_params(e.inception_weights or None)
    mesh = sharding.make_mesh()
    feature_fn = replicated_input(fid.make_feature_fn(inception_params, mesh=mesh, batch_size=e.batch_size))
    reference = load_reference(config, feature_fn, network=inception.fingerprint(inception_params),
                               with_images=e.precision_recall)

    if not samples_dir:
        samples_dir = sampling.sample_to_directory(config, workdir)
        multihost_utils.sync_global_devices("samples_written")
    pools, logits = [], []
    for chunk in _rebatch((images for images, _ in sampling.iter_sample_shards(samples_dir)), e.batch_size):
        pool, logit = feature_fn(chunk)
        pools.append(pool)
        logits.append(logit)
    pool, logits = np.concatenate(pools), np.concatenate(logits)
    stats = fid.statistics(pool)
    name = os.path.basename(os.path.normpath(samples_dir))
    result: dict[str, Any] = dict(
        run=name, samples_dir=os.path.abspath(samples_dir), num_samples=len(pool),
        fid=fid.frechet_distance(stats.mu, stats.sigma, reference.stats.mu, reference.stats.sigma),
        reference=reference.description, inception_weights=e.inception_weights or "cache")
    record = _sampling_record(samples_dir)
    result["checkpoint_step"] = None if record is None else record.get("checkpoint_step")
    result["sampling_config"] = record
    if e.inception_score:
        result["inception_score"], result["inception_score_std"] = fid.inception_score(logits)
    if e.precision_recall:
        real_images, real = reference.images, reference.features
        if len(real_images) > len(pool):
            # As many real pictures as samples: precision and recall depend on the two set sizes.
            rng = np.random.default_rng(config.seed)
            chosen = np.sort(rng.choice(len(real_images), len(pool), replace=False))
            real_images, real = real_images[chosen], None if real is None else real[chosen]
        if real is None:
            real = features_of(real_images, feature_fn, e.batch_size)
        result["precision"], result["recall"] = fid.precision_recall(real, pool)
        result["precision_recall_real_images"] = len(real)
    logging.info("%s: FID %.4f on %d samples", name, result["fid"], len(pool))

    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"{name}.json"), "w") as f:
            json.dump(result, f, indent=2)
        writer = MetricsWriter(workdir)
        scalars = {f"eval/{key}": result[key] for key in ("fid", "inception_score", "precision", "recall")
                   if key in result}
        writer.scalars(result["checkpoint_step"] or 0, scalars)
        writer.close()
    return result
