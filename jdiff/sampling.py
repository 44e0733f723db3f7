"""Sampling at scale: N images from a checkpoint's EMA parameters, over every device and host.

Image n's noise comes from ``fold_in(key(seed), n)`` alone, so a sample set is the same whatever the
number of devices, the batch size or how often the job was restarted (bit for bit across restarts;
across batch shapes up to float rounding, which XLA's kernels may do in another order: now and then
a pixel moves by one uint8 level). Images are written as
``.npz`` shards of uint8 NHWC arrays (each shard atomically: a temporary file renamed into place), and a
restarted job skips the shards that are complete.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from jdiff import compilation, samplers, sharding
from jdiff.images import make_grid, save_png, to_uint8

SHARD_PATTERN = re.compile(r"samples_(\d+)_(\d+)\.npz$")


def eps_scaling_from_config(s: ml_collections.ConfigDict) -> samplers.EpsScaling:
    """The λ schedule that ``config.sampling`` names (see :class:`jdiff.samplers.EpsScaling`)."""
    if s.eps_scaling == "none":
        return samplers.EpsScaling.constant(1.0)
    if s.eps_scaling == "constant":
        return samplers.EpsScaling.constant(s.eps_scale_b)
    if s.eps_scaling == "linear":
        return samplers.EpsScaling.linear(s.eps_scale_k, s.eps_scale_b)
    return samplers.EpsScaling.linear_mean(s.eps_scale_k, s.eps_scale_mean)


def run_name(config: ml_collections.ConfigDict, step: int) -> str:
    """A folder name that says which checkpoint, sampler, steps and λ made a sample set."""
    s = config.sampling
    es = {"none": "es-none", "constant": f"es-{s.eps_scale_b:g}",
          "linear": f"es-lin-k{s.eps_scale_k:g}-b{s.eps_scale_b:g}",
          "linear_mean": f"es-linmean-k{s.eps_scale_k:g}-m{s.eps_scale_mean:g}"}[s.eps_scaling]
    eta = f"-eta{s.eta:g}" if s.sampler == "ddim" else ""
    return f"step{step}_{s.sampler}{eta}_r{s.respacing or 'all'}_{es}_seed{config.seed}"


def edm_num_steps(respacing: str) -> int:
    """The number of EDM noise levels: ``sampling.respacing`` read as a plain step count."""
    try:
        return int(respacing)
    except ValueError:
        raise ValueError(f"sampler 'heun'/'euler' needs config.sampling.respacing to be a number of noise "
                         f"levels such as '18', got {respacing!r}") from None


def sampler_settings(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
    """The schedule the config's sampler runs on and the keyword arguments of
    :func:`jdiff.samplers.sample` that ``config.sampling``/``config.diffusion`` fix: everything but the
    randomness, the start point and Epsilon Scaling."""
    from jdiff.train import build_schedule

    s, d = config.sampling, config.diffusion
    edm = s.sampler in ("heun", "euler")
    # EDM's samplers pick their own σ grid on the full schedule; the others run the respaced chain.
    schedule = build_schedule(config, None if edm else (s.respacing or None))
    options = dict(sampler=s.sampler, target=d.target, variance=d.variance, clip_denoised=s.clip_denoised)
    if edm:
        options["num_steps"] = edm_num_steps(s.respacing)
    if s.sampler == "ddim":
        options["eta"] = s.eta
    return schedule, options


def make_generate_fn(config: ml_collections.ConfigDict, model: Any,
                     mesh: jax.sharding.Mesh) -> Any:
    """A jitted ``fn(params, indices, labels, eps_scaling=None) -> images in [-1, 1]`` that samples the
    images with the given global indices, the batch sharded over the mesh. ``eps_scaling`` (default: the
    config's) is an argument of the compiled function, so trying other λ does not recompile.
    ``fn.lower(...)`` (same arguments) lowers it without running, as ``jax.jit``'s ``lower``: for its HLO,
    cost analysis or memory use. Compiled with :func:`jdiff.compilation.compiler_options` (on GPUs: the
    whole sampling loop as CUDA graphs), so it is called at the top level, not inside another jit."""
    schedule, options = sampler_settings(config)
    default_eps_scaling = eps_scaling_from_config(config.sampling)
    shape_tail = (config.data.image_size, config.data.image_size, config.data.channels)
    base_key = jax.random.key(config.seed)

    def generate(params, indices, labels, eps_scaling):
        keys = jax.vmap(lambda n: jax.random.fold_in(base_key, n))(indices)

        def apply(params, x, t):
            return model.apply({"params": params}, x, t, labels, train=False)

        shape = (indices.shape[0],) + shape_tail
        model_fn = samplers.model_fn_with_hoisted_weights(apply, params, shape, schedule.betas.dtype)
        return samplers.sample(model_fn, schedule, shape, keys=keys,
                               eps_scaling=eps_scaling, **options)

    batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    jitted = jax.jit(generate, in_shardings=(replicated, batch, batch, replicated), out_shardings=batch,
                     compiler_options=compilation.compiler_options())

    num_steps = options.get("num_steps", schedule.num_steps)

    def checked(eps_scaling):
        eps_scaling = default_eps_scaling if eps_scaling is None else eps_scaling
        eps_scaling.check(num_steps)  # inside the jit λ is traced and cannot be checked
        return eps_scaling

    def generate_fn(params, indices, labels, eps_scaling=None):
        return jitted(params, indices, labels, checked(eps_scaling))

    def lower(params, indices, labels, eps_scaling=None) -> jax.stages.Lowered:
        return jitted.lower(params, indices, labels, checked(eps_scaling))

    generate_fn.lower = lower
    return generate_fn


def labels_for(config: ml_collections.ConfigDict, indices: np.ndarray) -> np.ndarray | None:
    """Class labels of class-conditional samples: image n gets class n mod num_classes (balanced)."""
    if not config.data.class_conditional:
        return None
    return (indices % config.data.num_classes).astype(np.int32)


def generate(config: ml_collections.ConfigDict, model: Any, params: Any, indices: np.ndarray,
             mesh: jax.sharding.Mesh, generate_fn: Any = None,
             eps_scaling: samplers.EpsScaling | None = None) -> np.ndarray:
    """uint8 NHWC images with the given global indices, on every process (Epsilon Scaling: the
    config's, or ``eps_scaling``)."""
    from jax.experimental import multihost_utils

    generate_fn = generate_fn or make_generate_fn(config, model, mesh)
    indices = np.asarray(indices, dtype=np.int32)
    padded = -(-len(indices) // mesh.size) * mesh.size
    # Pad to a multiple of the device count with repeats of the last index; the extras are dropped.
    full = np.concatenate([indices, np.full(padded - len(indices), indices[-1], np.int32)])
    labels = labels_for(config, full)
    images = generate_fn(params, full, labels, eps_scaling)
    images = multihost_utils.process_allgather(images, tiled=True) if jax.process_count() > 1 \
        else jax.device_get(images)
    return to_uint8(images[:len(indices)])


def completed_shards(directory: str) -> dict[int, int]:
    """{start index: end index} of the complete shards in ``directory``."""
    shards = {}
    for path in glob.glob(os.path.join(directory, "samples_*.npz")):
        match = SHARD_PATTERN.search(path)
        if match:
            shards[int(match.group(1))] = int(match.group(2))
    return shards


def sample_to_directory(config: ml_collections.ConfigDict, workdir: str) -> str:
    """``--mode=sample``: ``sampling.num_samples`` images from the EMA parameters of the latest (or
    ``sampling.checkpoint_step``) checkpoint into ``.npz`` shards plus a PNG grid; returns the folder."""
    from jdiff.train import build_model, restore_ema_params

    s = config.sampling
    mesh = sharding.make_mesh()
    model = build_model(config)
    params, step = restore_ema_params(workdir, config, model, mesh,
                                      step=None if s.checkpoint_step < 0 else s.checkpoint_step)
    out = s.output_dir or os.path.join(workdir, "samples", run_name(config, step))
    os.makedirs(out, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out, "sampling_config.json"), "w") as f:
            json.dump(dict(checkpoint_step=step, sampling=json.loads(s.to_json()),
                           diffusion=json.loads(config.diffusion.to_json()), seed=config.seed), f, indent=2)
    done = completed_shards(out)
    generate_fn = make_generate_fn(config, model, mesh)
    for start in range(0, s.num_samples, s.batch_size):
        end = min(start + s.batch_size, s.num_samples)
        if done.get(start) == end:
            continue
        images = generate(config, model, params, np.arange(start, end), mesh, generate_fn)
        if jax.process_index() == 0:
            path = os.path.join(out, f"samples_{start:07d}_{end:07d}.npz")
            with open(path + ".tmp", "wb") as f:
                np.savez(f, images=images, indices=np.arange(start, end))
            os.replace(path + ".tmp", path)
            logging.info("wrote %s", path)
    if jax.process_index() == 0:
        grid = load_samples(out, limit=64)
        save_png(os.path.join(out, "grid.png"), make_grid(grid), scale=max(1, 128 // grid.shape[1]))
    return out


def iter_sample_shards(directory: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, indices) of each complete shard in ``directory``, in index order, one shard in memory at
    a time."""
    shards = sorted(completed_shards(directory).items())
    if not shards:
        raise FileNotFoundError(f"no sample shards (samples_*.npz) in {directory}")
    for start, end in shards:
        with np.load(os.path.join(directory, f"samples_{start:07d}_{end:07d}.npz")) as f:
            yield f["images"], f["indices"]


def load_samples(directory: str, limit: int | None = None) -> np.ndarray:
    """The images of all complete shards in ``directory``, in index order (uint8 NHWC)."""
    images, count = [], 0
    for shard, _ in iter_sample_shards(directory):
        images.append(shard)
        count += len(shard)
        if limit is not None and count >= limit:
            break
    images = np.concatenate(images)
    return images if limit is None else images[:limit]
