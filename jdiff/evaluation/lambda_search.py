"""The best Epsilon Scaling for a model and a step count: a coarse-to-fine search over λ
(:func:`jdiff.evaluation.search.grid_search`), scored by FID or, much cheaper, by the summed exposure bias.

    python -m jdiff.evaluation.lambda_search --config=configs/<name>.py --workdir=DIR --score=fid|delta \\
        [--form=constant|linear] [--b_range=0.98,1.04] [--k_range=0,0.004] [--num_samples=5000]

Forms (:class:`jdiff.samplers.EpsScaling`): ``constant`` searches λ = b; ``linear`` searches (k, b) of
λ_i = k·i + b (i = 0 the least noisy step). λ below 1 is allowed (EDM-ES uses 0.9983 at 21 NFE).

Scores (lower is better), all with the config's sampler and steps:

- ``fid``: FID of ``num_samples`` samples (made with :func:`jdiff.sampling.make_generate_fn`, λ an argument
  of the compiled sampler, so no recompilation) against the reference of ``--mode=eval``
  (:func:`jdiff.evaluation.run.load_reference`). The paper's criterion; FID on a few thousand samples is
  biased upwards, but the bias is nearly the same for every λ, so the minimiser is what matters.
- ``delta``: Σ_t δ_t over the sampling steps, jdiff's variance error (:mod:`.exposure_bias`), from
  ``num_images`` training images; ``delta_paired`` the authors' formula, which barely depends on λ (see
  there) and is offered only to reproduce their numbers.

Every λ is scored on the same noise (images' keys depend on their index only), so the score is a smooth
function of λ and neighbouring grid points compare like with like.

Outputs in ``<workdir>/lambda_search/``: ``<name>.md`` (the table), ``<name>.json`` (settings, every
evaluation, the best) and ``<name>.png`` (score against λ), with ``<name>`` the sampler's run name
(:func:`jdiff.sampling.run_name` without ES) and ``_lambda-<score>-<form>``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jdiff import samplers, sharding
from jdiff.evaluation import exposure_bias, fid, search

FORMS = ("constant", "linear")
SCORES = ("fid", "delta", "delta_paired")
DEFAULT_BOUNDS = {"constant": {"b": (0.98, 1.04)}, "linear": {"k": (0.0, 0.004), "b": (0.995, 1.01)}}


def eps_scaling_for(params: Mapping[str, float], form: str) -> samplers.EpsScaling:
    """The λ schedule of a search point: ``constant`` {"b"} or ``linear`` {"k", "b"}."""
    if form == "constant":
        return samplers.EpsScaling.constant(params["b"])
    if form == "linear":
        return samplers.EpsScaling.linear(params["k"], params["b"])
    raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")


def check_bounds(bounds: Mapping[str, tuple[float, float]], form: str) -> dict[str, tuple[float, float]]:
    """The bounds a form needs, exactly those names, with b > 0 (λ divides ε̂)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")
    wanted = set(DEFAULT_BOUNDS[form])
    if set(bounds) != wanted:
        raise ValueError(f"form={form!r} searches {sorted(wanted)}, got bounds for {sorted(bounds)}")
    if not bounds["b"][0] > 0:
        raise ValueError(f"the b range {bounds['b']} must stay above 0: λ divides ε̂")
    return {name: (float(low), float(high)) for name, (low, high) in bounds.items()}


def delta_score_fn(run: Callable[..., exposure_bias.ExposureBias], variables: Any, images: np.ndarray,
                   labels: np.ndarray | None, form: str, which: str = "delta") -> search.ScoreFn:
    """Σ_t δ_t (``which``: ``delta`` or ``delta_paired``) of the λ of a search point, with ``run`` from
    :func:`jdiff.evaluation.exposure_bias.make_exposure_bias_fn` (``eps_norms=False`` saves half)."""
    if which not in ("delta", "delta_paired"):
        raise ValueError(f"which={which!r} must be 'delta' or 'delta_paired'")

    def score(params: dict[str, float]) -> float:
        return float(np.sum(getattr(run(variables, images, labels, eps_scaling_for(params, form)), which)))

    return score


def fid_score_fn(sample: Callable[[samplers.EpsScaling], Iterable[np.ndarray]], feature_fn: fid.FeatureFn,
                 reference: fid.Statistics, form: str) -> search.ScoreFn:
    """FID against ``reference`` of the uint8 batches ``sample(λ schedule)`` yields (every process the
    same pictures), features by ``feature_fn`` (see :func:`jdiff.evaluation.run.replicated_input`)."""
    def score(params: dict[str, float]) -> float:
        pool = np.concatenate([feature_fn(batch)[0] for batch in sample(eps_scaling_for(params, form))])
        stats = fid.statistics(pool)
        return fid.frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)

    return score


def sample_batches(config: ml_collections.ConfigDict, model: Any, params: Any, mesh: jax.sharding.Mesh,
                   num_samples: int) -> Callable[[samplers.EpsScaling], Iterable[np.ndarray]]:
    """``λ schedule -> uint8 batches`` of images 0 … num_samples − 1 of the config's sampler (the same
    noise for every λ), ``config.sampling.batch_size`` at a time, compiled once."""
    from jdiff import sampling

    generate_fn = sampling.make_generate_fn(config, model, mesh)
    size = config.sampling.batch_size

    def sample(eps_scaling: samplers.EpsScaling) -> Iterable[np.ndarray]:
        for start in range(0, num_samples, size):
            indices = np.arange(start, min(start + size, num_samples))
            yield sampling.generate(config, model, params, indices, mesh, generate_fn,
                                    eps_scaling=eps_scaling)

    return sample


def at_edge(result: search.SearchResult, bounds: Mapping[str, Any]) -> list[str]:
    """The parameters whose best value is one of its bounds."""
    return [n for n, (low, high) in bounds.items() if result.best.params[n] in (float(low), float(high))]


def write_report(result: search.SearchResult, directory: str, name: str,
                 settings: Mapping[str, Any]) -> tuple[str, str, str]:
    """``<name>.md`` (one row per evaluation, sorted by λ, the best in bold, a note when the best is on
    the edge of ``settings["bounds"]``), ``<name>.json`` and ``<name>.png`` in ``directory``; returns the
    three paths."""
    os.makedirs(directory, exist_ok=True)
    paths = tuple(os.path.join(directory, f"{name}.{ext}") for ext in ("md", "json", "png"))
    best = result.best
    best_text = ", ".join(f"{k} = {v:.6g}" for k, v in best.params.items())
    lines = [f"# Epsilon Scaling search: {name}", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items() if not isinstance(value, dict)]
    lines += [f"- {n} searched in [{low:g}, {high:g}]" for n, (low, high) in settings["bounds"].items()]
    lines += ["", f"**Best: {best_text} (score {best.score:.6g})**", ""]
    edges = at_edge(result, settings["bounds"])
    if edges:
        lines += [f"Note: the best {', '.join(edges)} lies on the edge of the searched range; the minimum "
                  "may be outside it: search again with a wider range.", ""]
    lines += ["| round | " + " | ".join(result.names) + " | score |",
              "|---:|" + "---:|" * (len(result.names) + 1)]
    for e in sorted(result.evaluations, key=lambda e: tuple(e.params[n] for n in result.names)):
        cells = [str(e.round)] + [f"{e.params[n]:.6g}" for n in result.names] + [f"{e.score:.6g}"]
        if e is best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    with open(paths[0], "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(paths[1], "w") as f:
        evaluations = [dict(round=e.round, params=e.params, score=e.score) for e in result.evaluations]
        json.dump(dict(settings=dict(settings), names=list(result.names), evaluations=evaluations,
                       best=dict(params=best.params, score=best.score)), f, indent=2)
    ax = search.plot_search(result)
    ax.set_ylabel(str(settings.get("score", "score")))
    ax.set_title(name, fontsize="small")
    ax.figure.tight_layout()
    ax.figure.savefig(paths[2], dpi=100)
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
    return paths


def search_lambda(config: ml_collections.ConfigDict, workdir: str, *, score: str = "delta",
                  form: str = "constant", bounds: Mapping[str, tuple[float, float]] | None = None,
                  num_samples: int = 5000, num_images: int = 2000, num_points: int = 5, rounds: int = 4,
                  batch_size: int | None = None, inception_params: Mapping[str, Any] | None = None,
                  output_dir: str | None = None) -> search.SearchResult:
    """Searches λ for the EMA parameters of the latest (or ``sampling.checkpoint_step``) checkpoint in
    ``workdir`` with the config's sampler (module docstring), writes the report (process 0) and returns
    the search. ``bounds`` default to :data:`DEFAULT_BOUNDS` of the form; ``num_samples`` is for
    ``fid``, ``num_images`` (and ``batch_size``, default ``config.sampling.batch_size``) for the δ
    scores. Everything that can fail without the model (score, bounds, matplotlib, Inception weights,
    reference, data) fails first."""
    from jdiff import config as config_lib
    from jdiff import sampling
    from jdiff.evaluation import inception
    from jdiff.evaluation import run as evaluation_run
    from jdiff.train import build_model, restore_ema_params

    config_lib.validate(config)
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")
    bounds = check_bounds(DEFAULT_BOUNDS[form] if bounds is None else bounds, form)
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("the λ search plots its scores: pip install matplotlib")
    mesh = sharding.make_mesh()
    if score == "fid":
        if inception_params is None:
            inception_params = inception.load_inception_params(config.eval.inception_weights or None)
        feature_fn = evaluation_run.replicated_input(
            fid.make_feature_fn(inception_params, mesh=mesh, batch_size=config.eval.batch_size))
        reference = evaluation_run.load_reference(config, feature_fn,
                                                  network=inception.fingerprint(inception_params))
    else:
        images, labels = exposure_bias.training_images(config, num_images)
    model = build_model(config)
    s = config.sampling
    params, step = restore_ema_params(workdir, config, model, mesh,
                                      step=None if s.checkpoint_step < 0 else s.checkpoint_step)
    if score == "fid":
        score_fn = fid_score_fn(sample_batches(config, model, params, mesh, num_samples), feature_fn,
                                reference.stats, form)
        measure = f"FID of {num_samples} samples against {reference.description}"
    else:
        schedule, options = sampling.sampler_settings(config)

        def apply_fn(variables, x, t, y):
            return model.apply({"params": variables}, x, t, y, train=False)

        run = exposure_bias.make_exposure_bias_fn(apply_fn, schedule, mesh=mesh, seed=config.seed,
                                                  batch_size=batch_size or s.batch_size, eps_norms=False,
                                                  **options)
        score_fn = delta_score_fn(run, params, images, labels, form, which=score)
        measure = f"Σ_t {score} over {num_images} training images"

    def logged(point: dict[str, float]) -> float:
        value = score_fn(point)
        logging.info("λ search: %s → %s %.6g", point, score, value)
        return value

    result = search.grid_search(logged, bounds, num_points=num_points, rounds=rounds)
    if jax.process_index() == 0:
        base = config.copy_and_resolve_references()
        base.sampling.eps_scaling = "none"
        name = f"{sampling.run_name(base, step)}_lambda-{score}-{form}"
        settings = dict(score=score, measure=measure, form=form, checkpoint_step=step,
                        bounds={k: list(v) for k, v in bounds.items()}, num_points=num_points, rounds=rounds,
                        sampler=s.sampler, respacing=s.respacing, seed=config.seed,
                        sampling=json.loads(s.to_json()), diffusion=json.loads(config.diffusion.to_json()))
        paths = write_report(result, output_dir or os.path.join(workdir, "lambda_search"), name, settings)
        logging.info("best %s (score %.6g); wrote %s", result.best.params, result.best.score,
                     ", ".join(paths))
        for edge in at_edge(result, bounds):
            logging.warning("the best %s is on the edge of its range %s: widen it", edge, bounds[edge])
    multihost_utils.sync_global_devices("lambda_search_written")
    return result


def _parse_range(text: str, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name}={text!r} must be two numbers 'low,high'") from None
    return low, high


def _cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from jdiff.evaluation.run import start_run

    config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
    flags.DEFINE_string("workdir", None, "The run's directory (checkpoints; results go to lambda_search/).")
    flags.DEFINE_enum("score", "delta", list(SCORES), "fid: FID of --num_samples samples; delta: summed δ_t.")
    flags.DEFINE_enum("form", "constant", list(FORMS), "constant λ = b, or linear λ_i = k·i + b.")
    flags.DEFINE_string("b_range", "", "low,high of b (default: 0.98,1.04 constant; 0.995,1.01 linear).")
    flags.DEFINE_string("k_range", "", "low,high of k for --form=linear (default: 0,0.004).")
    flags.DEFINE_integer("num_samples", 5000, "Samples per FID evaluation (--score=fid).")
    flags.DEFINE_integer("num_images", 2000, "Training images per δ evaluation (--score=delta).")
    flags.DEFINE_integer("num_points", 5, "Grid points per parameter and round.")
    flags.DEFINE_integer("rounds", 4, "Rounds of grid refinement.")
    flags.DEFINE_integer("batch_size", 0, "Images per compiled δ call; 0 = config.sampling.batch_size.")
    flags.mark_flags_as_required(["config", "workdir"])
    FLAGS = flags.FLAGS

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        bounds = dict(DEFAULT_BOUNDS[FLAGS.form])
        if FLAGS.b_range:
            bounds["b"] = _parse_range(FLAGS.b_range, "b_range")
        if FLAGS.k_range:
            if FLAGS.form != "linear":
                raise app.UsageError("--k_range applies to --form=linear")
            bounds["k"] = _parse_range(FLAGS.k_range, "k_range")
        start_run(FLAGS.config, FLAGS.workdir)
        search_lambda(FLAGS.config, FLAGS.workdir, score=FLAGS.score, form=FLAGS.form, bounds=bounds,
                      num_samples=FLAGS.num_samples, num_images=FLAGS.num_images, num_points=FLAGS.num_points,
                      rounds=FLAGS.rounds, batch_size=FLAGS.batch_size or None)

    app.run(main)


if __name__ == "__main__":
    _cli()
