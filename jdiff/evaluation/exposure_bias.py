"""Exposure bias of a sampler: the variance error δ_t of Ning et al. (ICLR 2024, §4) and their ε-norm
diagnostic, for any network and any sampler of :mod:`jdiff.samplers`, with and without Epsilon Scaling.

Procedure, as the authors run it: take training images x₀, noise them to the sampler's first (noisiest)
level with q(x_T | x₀) = N(√ᾱ_T x₀, (1 − ᾱ_T) I), run the sampler from there, and after every step compare
the sampled x̂_t with what training feeds the network at the same level, x_t ~ q(x_t | x₀). Every standard
deviation below is per pixel, over the images (population std, as the authors' NumPy code), then averaged
over the pixels. Two variance errors come out per step:

- ``delta_paired``, the authors' formula: β̂_t = std(x̂_t − √ᾱ_t·x₀) and δ_t = (β̂_t − √(1 − ᾱ_t))².
- ``delta``, jdiff's (the one the λ search uses by default): δ_t = (std(x̂_t) − std(x_t))², the spread of
  the sampled inputs against the spread of the training inputs at the same level, with
  std(x_t)² = ᾱ_t·var(x₀) + 1 − ᾱ_t per pixel (the expectation over the training noise, so that no second
  noise draw adds to the estimate).

For a single training image (any point-mass data) the two are the same number. For a data set they are
not, and that is why the authors' δ_t can look the same with and without Epsilon Scaling. The chain
cannot come back to the x₀ it started from: x_T keeps only √ᾱ_T of it (0.0016 at the last cosine step),
so even a perfect model draws x̂_t from q(x_t | x_T), not from q(x_t | x₀), and β̂_t² = (1 − ᾱ_t) + a term
that every sampler has, perfect or not, growing to ≈ 2·var(x₀) at the last step (a generated image minus
an unrelated training image). On CIFAR-10 (pixel std ≈ 0.5 in [−1, 1]) that is β̂ ≈ 0.7 at the last
step, which is what the official repository's 20-step log shows (β̂ = 0.69, δ = 0.47): the authors' δ_t
there is mostly this floor, not exposure bias. What Epsilon Scaling changes, the spread of x̂_t, enters
β̂_t² only as var(x̂_t) on top of the floor, so δ_t moves by a fraction of its size (on a log plot, often
not visibly), and in a direction that rewards shrunken samples: a network that over-predicts ε has a
*lower* paired δ_t than the exact one, and the λ that undoes its bias *raises* it. Closed form (x₀ ~ N(0, 1)
per pixel, the exact ε oracle ε*(x, t) = √(1 − ᾱ_t)·x and a biased 1.01·ε*, DDPM with the β_t variances,
which is exact for this data, cosine schedule, no clipping), Σ_t δ_t for exact / biased / biased with
λ = 1.01:

  100 steps:   authors' 55.1 / 60.7 / 55.1      jdiff's 0 / 6.32 / 0
  1000 steps:  authors' 529 / 520 / 529         jdiff's 0 / 0.098 / 0

and, as ADM samples (x̂₀ clipped), N(0, 0.25) data, 20 steps, a 3 % over-prediction of ε: jdiff's Σδ_t
doubles and λ = 1.03 restores it, while the authors' falls by 5 % (``tests/test_exposure_bias.py``).

jdiff's δ_t is zero for a sampler whose x̂_t has the training inputs' spread, whatever x₀ it started
from, and it sees exactly what Epsilon Scaling acts on: the spread of the sampler's inputs. It is not
zero for an exact ε with a sampler whose own discretisation misses that spread (DDPM with the β̃ variances
on 20 steps keeps only ~74 % of the variance of N(0, 0.25) data even with the exact ε), and then the λ
that minimises it corrects both errors together. ``tests/test_exposure_bias.py`` checks both formulas
against the closed form.

The second diagnostic (the authors' ε-norm figure): the L2 norm of the network's ε̂ per image along
sampling, at each step's input, against the norm of ε̂ at x_t ~ q(x_t | x₀) of the same level (same
network, same timestep); ``eps_norm_sampling`` is the network's ε̂, ``eps_norm_sampling_scaled`` ε̂/λ_t
as the sampler used it. The gap at the last steps is what Epsilon Scaling closes.

Levels: the sampler starts at level 0 (the noisiest respaced index N − 1, or EDM's first grid point) and
step k lands on level k + 1; the last level is the data (ᾱ = 1). The x recorded after step k therefore
pairs with ᾱ of level k + 1 (respaced index i − 1 after the step from index i), its ε̂ with level k.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from jax.experimental import multihost_utils

from jdiff import samplers, sharding, targets
from jdiff.samplers import edm
from jdiff.schedules import Schedule

# apply_fn(variables, x, t, labels) -> network output; variables are a jit argument (never baked into
# the compiled program as constants), labels None for an unconditional network.
ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


# --- levels ---------------------------------------------------------------------------------------

@struct.dataclass
class Levels:
    """The noise levels a sampler visits, noisiest first: ``index`` (S,) the schedule index of levels
    0 … S − 1 (where the network evaluates step k), and ``alpha``/``sigma``/``timestep`` (S + 1,) of all
    levels, √ᾱ, √(1 − ᾱ) and the original timestep, level S being the data (1, 0, −1)."""

    index: jax.Array
    alpha: jax.Array
    sigma: jax.Array
    timestep: jax.Array


def sampler_levels(schedule: Schedule, sampler: str = "ddpm", num_steps: int | None = None) -> Levels:
    """:class:`Levels` of ``sampler`` on ``schedule`` (the respaced one; for ``heun``/``euler`` the
    un-respaced one with ``num_steps`` EDM noise levels, see :func:`jdiff.samplers.edm.edm_grid`)."""
    if sampler in ("heun", "euler"):
        if num_steps is None:
            raise ValueError(f"sampler={sampler!r} needs num_steps, the number of EDM noise levels")
        index = edm.edm_grid(schedule, num_steps)
    else:
        index = jnp.arange(schedule.num_steps - 1, -1, -1, dtype=jnp.int32)
    dtype = schedule.betas.dtype
    return Levels(
        index=index,
        alpha=jnp.concatenate([schedule.sqrt_alphas_cumprod[index], jnp.ones((1,), dtype)]),
        sigma=jnp.concatenate([schedule.sqrt_one_minus_alphas_cumprod[index], jnp.zeros((1,), dtype)]),
        timestep=jnp.concatenate([schedule.timesteps[index], jnp.full((1,), -1, jnp.int32)]))


# --- per-batch moments (on device) -----------------------------------------------------------------

@struct.dataclass
class Moments:
    """Weighted count, mean and sum of squared deviations (M2) over images, per step and pixel, of x₀,
    x̂_t − √ᾱ_t x₀ (``paired``) and x̂_t (``sample``), and the summed ε̂ norms per step: additive over
    batches through :func:`merge_moments`."""

    count: Any
    x0_mean: Any
    x0_m2: Any
    paired_mean: Any
    paired_m2: Any
    sample_mean: Any
    sample_m2: Any
    eps_norm_sampling: Any
    eps_norm_training: Any


def _weighted_moments(values: jax.Array, weights: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    w = weights.reshape((1,) * axis + weights.shape + (1,) * (values.ndim - axis - 1))
    total = jnp.sum(weights)
    mean = jnp.sum(w * values, axis=axis) / total
    m2 = jnp.sum(w * (values - jnp.expand_dims(mean, axis)) ** 2, axis=axis)
    return mean, m2


def _norms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(x.reshape(x.shape[:-3] + (-1,)) ** 2, axis=-1))


def trajectory_moments(apply_fn: ApplyFn, variables: Any, schedule: Schedule, x0: jax.Array,
                       labels: Any, keys: jax.Array, weights: jax.Array, *,
                       eps_scaling: samplers.EpsScaling | None, sampler: str = "ddpm", target: str = "eps",
                       variance: str = "fixed_small", clip_denoised: bool = True, eta: float = 0.0,
                       num_steps: int | None = None, order: int | None = None,
                       eps_norms: bool = True) -> Moments:
    """The sampler run from x_T ~ q(x_T | x₀) for a batch of training images x₀ (NHWC, in [−1, 1]), and
    its :class:`Moments`. Pure and jittable.

    ``keys`` (B,): one PRNG key per image, split into the noise of x_T, the sampler's noise and the
    training noise of the ε-norm diagnostic, so an image's numbers do not depend on its batch.
    ``weights`` (B,): 1 for real images, 0 for padding. ``eps_norms=False`` skips the training-side ε̂
    evaluations (half the cost; the search needs only δ_t).
    """
    levels = sampler_levels(schedule, sampler, num_steps)
    steps = levels.index.shape[0]
    dtype = schedule.betas.dtype
    x0 = x0.astype(dtype)
    weights = weights.astype(dtype)
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    start_keys, sampler_keys, training_keys = split[:, 0], split[:, 1], split[:, 2]
    z = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], dtype))(start_keys)
    x_start = levels.alpha[0] * x0 + levels.sigma[0] * z

    model_fn = samplers.model_fn_with_hoisted_weights(lambda v, x, t: apply_fn(v, x, t, labels), variables,
                                                      x0.shape, dtype)

    _, trajectory = samplers.sample(
        model_fn, schedule, x_start, start_index=steps - 1, keys=sampler_keys, sampler=sampler, target=target,
        variance=variance, clip_denoised=clip_denoised, eta=eta, eps_scaling=eps_scaling, order=order,
        num_steps=num_steps, record=("x", "eps"))
    x = trajectory["x"]                                   # (S, B, H, W, C): x after step k, level k + 1
    lands = levels.alpha[1:].reshape((steps,) + (1,) * x0.ndim)
    x0_mean, x0_m2 = _weighted_moments(x0, weights, axis=0)
    paired_mean, paired_m2 = _weighted_moments(x - lands * x0[None], weights, axis=1)
    sample_mean, sample_m2 = _weighted_moments(x, weights, axis=1)
    eps_sampling = jnp.sum(_norms(trajectory["eps"]) * weights, axis=1)

    if eps_norms:
        def training_eps(k):
            noise = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, k), x0.shape[1:], dtype))(
                training_keys)
            alpha, sigma = levels.alpha[k], levels.sigma[k]
            x_t = alpha * x0 + sigma * noise
            output = model_fn(x_t, jnp.full((x0.shape[0],), levels.timestep[k], jnp.int32))
            mean_output, _ = samplers.split_output(output, x_t, variance)
            return jnp.sum(_norms(targets.to_eps(target, mean_output, x_t, alpha, sigma)) * weights)

        eps_training = jax.lax.map(training_eps, jnp.arange(steps))
    else:
        eps_training = jnp.full((steps,), jnp.nan, dtype)
    return Moments(count=jnp.sum(weights), x0_mean=x0_mean, x0_m2=x0_m2, paired_mean=paired_mean,
                   paired_m2=paired_m2, sample_mean=sample_mean, sample_m2=sample_m2,
                   eps_norm_sampling=eps_sampling, eps_norm_training=eps_training)


def merge_moments(a: Moments | None, b: Moments) -> Moments:
    """Two batches' moments as one, in float64 on the host (Chan et al.'s pairwise update)."""
    b = jax.tree.map(lambda v: np.asarray(v, np.float64), b)
    if a is None:
        return b
    n = a.count + b.count

    def pair(mean_a, m2_a, mean_b, m2_b):
        delta = mean_b - mean_a
        return mean_a + delta * (b.count / n), m2_a + m2_b + delta ** 2 * (a.count * b.count / n)

    x0 = pair(a.x0_mean, a.x0_m2, b.x0_mean, b.x0_m2)
    paired = pair(a.paired_mean, a.paired_m2, b.paired_mean, b.paired_m2)
    sample = pair(a.sample_mean, a.sample_m2, b.sample_mean, b.sample_m2)
    return Moments(count=n, x0_mean=x0[0], x0_m2=x0[1], paired_mean=paired[0], paired_m2=paired[1],
                   sample_mean=sample[0], sample_m2=sample[1],
                   eps_norm_sampling=a.eps_norm_sampling + b.eps_norm_sampling,
                   eps_norm_training=a.eps_norm_training + b.eps_norm_training)


# --- results (host) --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExposureBias:
    """Per sampling step k = 0 … S − 1 (noisiest first), for the level x̂ lands on after the step:
    ``timestep`` (original timestep, −1 for the data), ``sigma`` √(1 − ᾱ_t), the authors'
    ``paired_std`` β̂_t and ``delta_paired``, jdiff's ``sample_std``, ``reference_std`` and ``delta``
    (see the module docstring), the mean ε̂ norms along sampling (``eps_norm_sampling``, and divided by
    ``lambdas``, ``eps_norm_sampling_scaled``) and along training (``eps_norm_training``, at the level
    the step starts from; NaN when not computed), over ``num_images`` images."""

    timestep: np.ndarray
    sigma: np.ndarray
    paired_std: np.ndarray
    delta_paired: np.ndarray
    sample_std: np.ndarray
    reference_std: np.ndarray
    delta: np.ndarray
    lambdas: np.ndarray
    eps_norm_sampling: np.ndarray
    eps_norm_sampling_scaled: np.ndarray
    eps_norm_training: np.ndarray
    num_images: int

    def to_json(self) -> dict[str, Any]:
        """Every field as lists, plus the sums over the steps of both δ."""
        out: dict[str, Any] = {f.name: np.asarray(getattr(self, f.name)).tolist()
                               for f in dataclasses.fields(self)}
        out["delta_sum"] = float(np.sum(self.delta))
        out["delta_paired_sum"] = float(np.sum(self.delta_paired))
        return out


def summarise(moments: Moments, levels: Levels, lambdas: np.ndarray) -> ExposureBias:
    """:class:`ExposureBias` from the merged moments of all images (float64)."""
    m = jax.tree.map(lambda v: np.asarray(v, np.float64), moments)
    alpha, sigma = np.asarray(levels.alpha, np.float64)[1:], np.asarray(levels.sigma, np.float64)[1:]
    pixel_axes = tuple(range(1, m.paired_m2.ndim))
    paired_std = np.sqrt(m.paired_m2 / m.count).mean(axis=pixel_axes)
    sample_std = np.sqrt(m.sample_m2 / m.count).mean(axis=pixel_axes)
    x0_var = m.x0_m2 / m.count
    pixels = (slice(None),) + (None,) * x0_var.ndim
    reference_std = np.sqrt(alpha[pixels] ** 2 * x0_var[None] + sigma[pixels] ** 2).mean(axis=pixel_axes)
    eps_sampling = m.eps_norm_sampling / m.count
    lambdas = np.asarray(lambdas, np.float64)
    return ExposureBias(timestep=np.asarray(levels.timestep)[1:], sigma=sigma, paired_std=paired_std,
                        delta_paired=(paired_std - sigma) ** 2, sample_std=sample_std,
                        reference_std=reference_std, delta=(sample_std - reference_std) ** 2,
                        lambdas=lambdas, eps_norm_sampling=eps_sampling,
                        eps_norm_sampling_scaled=eps_sampling / lambdas,
                        eps_norm_training=m.eps_norm_training / m.count, num_images=int(np.rint(m.count)))


# --- driver ----------------------------------------------------------------------------------------

def step_lambdas(eps_scaling: samplers.EpsScaling | None, steps: int) -> np.ndarray:
    """λ of each sampling step, noisiest first (step k uses λ at index i = S − 1 − k; 1 without ES)."""
    if eps_scaling is None:
        return np.ones(steps)
    return np.asarray(eps_scaling.values(steps, jnp.float32), np.float64)[::-1]


def make_exposure_bias_fn(apply_fn: ApplyFn, schedule: Schedule, *, mesh: jax.sharding.Mesh | None = None,
                          seed: int = 0, batch_size: int = 256, eps_norms: bool = True,
                          **sampler_options: Any) -> Callable[..., ExposureBias]:
    """``fn(variables, images, labels=None, eps_scaling=None) -> ExposureBias`` over all ``images`` (host
    NumPy NHWC in [−1, 1], every process passing the same array), ``batch_size`` at a time sharded over
    ``mesh`` (default: all devices), compiled once: λ is an argument, so a search does not recompile.

    Image n's randomness is ``fold_in(key(seed), n)``, the same for every λ: two λ are compared on the
    same noise (common random numbers), which is what makes a δ-scored search smooth in λ.
    ``sampler_options`` are those of :func:`trajectory_moments` (sampler, target, variance, …). The
    sampler keeps the whole trajectory of x̂ and ε̂: device memory grows as 2·steps·batch_size·H·W·C
    floats (100 steps of 500 CIFAR-10 images: 1.2 GB), so choose the batch size by the step count."""
    mesh = mesh or sharding.make_mesh()
    processes = jax.process_count()
    if batch_size <= 0 or batch_size % mesh.size or batch_size % processes:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the number of devices "
                         f"({mesh.size}) and of processes ({processes})")
    levels = sampler_levels(schedule, sampler_options.get("sampler", "ddpm"),
                            sampler_options.get("num_steps"))
    steps = int(levels.index.shape[0])
    batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    base_key = jax.random.key(seed)

    def moments(variables, x0, labels, indices, weights, eps_scaling):
        keys = jax.vmap(lambda n: jax.random.fold_in(base_key, n))(indices)
        return trajectory_moments(apply_fn, variables, schedule, x0, labels, keys, weights,
                                  eps_scaling=eps_scaling, eps_norms=eps_norms, **sampler_options)

    jitted = jax.jit(moments, in_shardings=(replicated, batch, batch, batch, batch, replicated),
                     out_shardings=replicated)
    local = batch_size // processes
    lo = jax.process_index() * local

    def global_array(values: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(batch, values[lo:lo + local])

    def run(variables: Any, images: np.ndarray, labels: np.ndarray | None = None,
            eps_scaling: samplers.EpsScaling | None = None) -> ExposureBias:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or len(images) < 2:
            raise ValueError(f"expected at least 2 images (N, H, W, C) in [-1, 1], got {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if eps_scaling is not None:
            eps_scaling.check(steps)
        total = None
        for start in range(0, len(images), batch_size):
            positions = np.arange(start, start + batch_size, dtype=np.int32)
            # The last batch is padded with copies of its last image at weight 0: one compiled shape.
            rows = np.minimum(positions, len(images) - 1)
            weights = (positions < len(images)).astype(np.float32)
            batch_labels = None if labels is None else global_array(np.asarray(labels, np.int32)[rows])
            result = jitted(variables, global_array(images[rows]), batch_labels, global_array(rows),
                            global_array(weights), eps_scaling)
            total = merge_moments(total, jax.device_get(result))
        return summarise(total, jax.device_get(levels), step_lambdas(eps_scaling, steps))

    return run


# --- files, plots, a checkpoint --------------------------------------------------------------------

def describe(eps_scaling: samplers.EpsScaling | None) -> str:
    """A short label of a λ schedule for tables and legends."""
    if eps_scaling is None:
        return "no ES"
    k, b = float(eps_scaling.k), float(eps_scaling.b)
    if k == 0.0:
        return f"ES λ={b:g}"
    return f"ES λ_i={k:g}·i+{b:g}" if eps_scaling.anchor == "first" else f"ES λ mean {b:g}, k={k:g}"


def plot_exposure_bias(results: Mapping[str, ExposureBias], path: str) -> None:
    """δ_t (jdiff's and the authors'), and the ε̂ norms along sampling and training, per step, one line
    per result, saved as a PNG (matplotlib is imported here, only when plotting)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting the exposure bias needs matplotlib (pip install matplotlib)") from e
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    training_drawn: list[np.ndarray] = []
    for label, r in results.items():
        steps = np.arange(1, len(r.delta) + 1)
        axes[0].plot(steps, r.delta, marker=".", label=label)
        axes[1].plot(steps, r.delta_paired, marker=".", label=label)
        axes[2].plot(steps, r.eps_norm_sampling_scaled, marker=".", label=f"{label}: sampling")
        # Training's ε̂ does not depend on λ: one line per model, not per λ.
        if np.all(np.isfinite(r.eps_norm_training)) and not any(
                np.allclose(r.eps_norm_training, drawn) for drawn in training_drawn):
            training_drawn.append(r.eps_norm_training)
            axes[2].plot(steps, r.eps_norm_training, linestyle="--", color="black",
                         label="training" if len(training_drawn) == 1 else f"{label}: training")
    titles = ["δ_t = (std x̂_t − std x_t)²  (jdiff)", "δ_t = (std(x̂_t − √ᾱ_t x₀) − √(1−ᾱ_t))²  (authors')",
              "‖ε̂/λ‖₂ per image, along sampling and training"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("sampling step (1 = noisiest)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(results: Mapping[str, ExposureBias], directory: str, name: str,
                  settings: Mapping[str, Any]) -> tuple[str, str]:
    """``<directory>/<name>.json`` (the settings and every result) and ``<name>.png``; returns both paths."""
    os.makedirs(directory, exist_ok=True)
    json_path, png_path = os.path.join(directory, f"{name}.json"), os.path.join(directory, f"{name}.png")
    with open(json_path, "w") as f:
        json.dump(dict(settings=dict(settings), results={k: r.to_json() for k, r in results.items()}), f,
                  indent=2)
    plot_exposure_bias(results, png_path)
    return json_path, png_path


def training_images(config: ml_collections.ConfigDict,
                    num_images: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``num_images`` training images of ``config.data`` in [−1, 1] (a subset drawn without replacement
    with ``config.seed``, no flips) and their labels when the model is class-conditional."""
    from jdiff import data as data_lib

    d = config.data
    dataset = data_lib.load_dataset(d.name, split=d.split, image_size=d.image_size, channels=d.channels,
                                    data_dir=d.data_dir or None)
    if not 2 <= num_images <= len(dataset):
        raise ValueError(f"num_images={num_images} must be between 2 and the data set's size "
                         f"({len(dataset)} images in {d.name!r})")
    chosen = np.sort(np.random.default_rng(config.seed).choice(len(dataset), num_images, replace=False))
    images = dataset.images[chosen].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if d.class_conditional and dataset.labels is None:
        raise ValueError(f"config.data.class_conditional is set but data set {d.name!r} has no labels")
    return images, (dataset.labels[chosen] if d.class_conditional else None)


def exposure_bias_for_checkpoint(config: ml_collections.ConfigDict, workdir: str, num_images: int, *,
                                 eps_scalings: Mapping[str, samplers.EpsScaling | None] | None = None,
                                 batch_size: int | None = None,
                                 output_dir: str | None = None) -> dict[str, ExposureBias]:
    """δ_t and the ε̂ norms of the EMA parameters of the latest (or ``sampling.checkpoint_step``)
    checkpoint in ``workdir``, with the config's sampler, over ``num_images`` training images: without
    Epsilon Scaling and with the config's (unless ``eps_scalings`` names others, {label: λ schedule}).
    Writes ``<output_dir or workdir/exposure_bias>/<run name>.json`` and ``.png`` (process 0)."""
    from jdiff import config as config_lib
    from jdiff import sampling
    from jdiff.train import build_model, restore_ema_params

    config_lib.validate(config)
    # Before the checkpoint: a missing data set fails first.
    images, labels = training_images(config, num_images)
    mesh = sharding.make_mesh()
    model = build_model(config)
    s = config.sampling
    params, step = restore_ema_params(workdir, config, model, mesh,
                                      step=None if s.checkpoint_step < 0 else s.checkpoint_step)
    if eps_scalings is None:
        configured = sampling.eps_scaling_from_config(s)
        # λ = 1 is the unscaled sampler (to rounding: jdiff.samplers.denoise) and shares the compiled program.
        eps_scalings = {describe(None): samplers.EpsScaling.constant(1.0)}
        if s.eps_scaling != "none":
            eps_scalings[describe(configured)] = configured
    schedule, options = sampling.sampler_settings(config)

    def apply_fn(variables, x, t, y):
        return model.apply({"params": variables}, x, t, y, train=False)

    run = make_exposure_bias_fn(apply_fn, schedule, mesh=mesh, seed=config.seed,
                                batch_size=batch_size or s.batch_size, **options)
    results = {}
    for label, eps_scaling in eps_scalings.items():
        results[label] = run(params, images, labels, eps_scaling)
        logging.info("%s: Σδ_t = %.4g (authors' formula %.4g)", label, results[label].delta.sum(),
                     results[label].delta_paired.sum())
    if jax.process_index() == 0:
        settings = dict(checkpoint_step=step, num_images=num_images, data=json.loads(config.data.to_json()),
                        sampling=json.loads(s.to_json()), diffusion=json.loads(config.diffusion.to_json()),
                        seed=config.seed)
        paths = write_results(results, output_dir or os.path.join(workdir, "exposure_bias"),
                              sampling.run_name(config, step), settings)
        logging.info("wrote %s and %s", *paths)
    multihost_utils.sync_global_devices("exposure_bias_written")
    return results


def _cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from jdiff.evaluation.run import start_run

    config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
    flags.DEFINE_string("workdir", None, "The run's directory (checkpoints; results go to exposure_bias/).")
    flags.DEFINE_integer("num_images", 10_000, "Training images to start the chains from (the paper: 50k).")
    flags.DEFINE_integer("batch_size", 0, "Images per compiled call; 0 = config.sampling.batch_size.")
    flags.mark_flags_as_required(["config", "workdir"])
    FLAGS = flags.FLAGS

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        start_run(FLAGS.config, FLAGS.workdir)
        exposure_bias_for_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.num_images,
                                     batch_size=FLAGS.batch_size or None)

    app.run(main)


if __name__ == "__main__":
    _cli()
