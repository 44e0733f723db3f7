"""Epsilon Scaling (Ning et al., ICLR 2024) on a trained digits model: quality against λ, the exposure bias
δ_t with and without ES, and the λ the search tool finds against the grid's best.

    python experiments/eps_scaling_sweep.py --budget small            # CPU smoke run, a few minutes
    python experiments/eps_scaling_sweep.py --budget full [--results DIR] [--only sampler=ddpm]
        [--only steps=20,50] [--lambdas 0.98,0.99,1,1.01] [--weighting debias] [--seed 0] [--workdir DIR]
    python experiments/eps_scaling_sweep.py --budget full --report-only

The model: ``--workdir`` (a run of configs/digits.py, its latest checkpoint), or else the digits run of
``--weighting`` (default Debias) and ``--seed`` that weighting_comparison.py trains with the same budget
(trained here if missing). For each sampler (DDPM, DDIM η = 0, EDM Heun) and step count (network
evaluations; Heun runs on (steps + 1) // 2 EDM noise levels, 2·levels − 1 evaluations), one unit:

- classifier-FID (digits) of ``num_samples`` samples against constant λ on the budget's grid (the same
  noise for every λ, so the curve is smooth in λ);
- the search tool (:func:`jdiff.evaluation.search.grid_search`, coarse-to-fine over the grid's range)
  scored by the same classifier-FID, and by Σ_t δ_t (jdiff's δ, :mod:`jdiff.evaluation.exposure_bias`),
  against the grid's best λ;
- δ_t along the chain from ``delta_images`` training images, without ES and with the grid's best λ
  (the paper's figure, :func:`jdiff.evaluation.exposure_bias.plot_exposure_bias`: both δ formulas and
  the ε̂ norms).

Writes ``<results>/eps_scaling_sweep/``: ``eps_scaling_sweep.{md,json,png}`` (the PNG: quality against
λ), ``delta_t/<sampler>-<steps>.png`` and ``units/<sampler>-<steps>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import common  # noqa: E402
import weighting_comparison  # noqa: E402

from jdiff import samplers  # noqa: E402
from jdiff.evaluation import exposure_bias, search  # noqa: E402

EXPERIMENT = "eps_scaling_sweep"
ONLY_KEYS = ("sampler", "steps")


def lambda_score_fn(programs: common.Programs, config: Any, params: Any, scorer: common.Scorer,
                    indices: np.ndarray, batch: int, cache: dict[str, float],
                    on_new: Callable[[], None]) -> Callable[[float], float]:
    """classifier-FID of the samples with these indices at constant λ, remembered in ``cache``
    (``on_new`` is called after each new evaluation, to save it)."""
    def evaluate(lam: float) -> float:
        start = time.perf_counter()
        images = programs.images(config, params, indices, samplers.EpsScaling.constant(lam), batch)
        score = scorer(images)
        logging.info("%s-%s λ=%.5g: %s %.4g (%.1f s)", config.sampling.sampler, config.sampling.respacing,
                     lam, scorer.name, score, time.perf_counter() - start)
        return score

    remembered = common.memoised(cache, evaluate)

    def score(lam: float) -> float:
        known = f"{lam:.9f}" in cache
        value = remembered(lam)
        if not known:
            on_new()
        return value

    return score


def search_lambda(score: Callable[[float], float], budget: common.Budget) -> dict[str, Any]:
    """The search tool over the grid's λ range: its best λ, its score and every evaluation."""
    bounds = {"b": (min(budget.lambdas), max(budget.lambdas))}
    result = search.grid_search(lambda p: score(p["b"]), bounds, num_points=budget.search_points,
                                rounds=budget.search_rounds)
    return dict(best=result.best.params["b"], score=result.best.score,
                at_edge=result.best.params["b"] in bounds["b"],
                evaluations=[dict(round=e.round, b=e.params["b"], score=e.score) for e in result.evaluations])


def grid_best(cache: Mapping[str, float], lambdas: Sequence[float]) -> float:
    return min(lambdas, key=lambda lam: cache[f"{lam:.9f}"])


def sweep_unit(config: Any, workdir: str, params: Any, step: int, sampler: str, steps: int,
               budget: common.Budget, scorer: common.Scorer, programs: common.Programs, units: common.Units,
               delta_images: np.ndarray, force: bool = False) -> dict[str, Any]:
    """One (sampler, steps) unit of the sweep (module docstring); returns its record."""
    name = common.setting_name(sampler, steps)
    signature = dict(config=common.config_hash(config), run=os.path.basename(os.path.normpath(workdir)),
                     checkpoint_step=step, num_samples=budget.num_samples,
                     delta_images=budget.delta_images, classifier=scorer.info["classifier_sha256"])
    record = units.open(name, signature, force)
    record.update(sampler=sampler, steps=steps, weighting=config.diffusion.weighting, seed=config.seed,
                  checkpoint_step=step, scorer=scorer.info, budget=budget.describe(),
                  environment=common.environment())
    units.save(name, record)
    setting = common.with_sampler(config, sampler, steps)
    cache = record.setdefault("classifier_fid", {})
    score = lambda_score_fn(programs, setting, params, scorer, np.arange(budget.num_samples),
                            budget.sample_batch, cache, lambda: units.save(name, record))
    for lam in budget.lambdas:
        score(lam)
    best = grid_best(cache, budget.lambdas)
    record["grid"] = {f"{lam:g}": cache[f"{lam:.9f}"] for lam in budget.lambdas}
    record["grid_best"] = best
    record["search_classifier_fid"] = search_lambda(score, budget)
    units.save(name, record)

    run = programs.exposure_bias_fn(setting, min(budget.sample_batch, len(delta_images)))
    delta_cache = record.setdefault("delta_sum", {})
    computed: dict[float, exposure_bias.ExposureBias] = {}

    def exposure(lam: float) -> exposure_bias.ExposureBias:
        if lam not in computed:
            computed[lam] = run(params, delta_images, None, samplers.EpsScaling.constant(lam))
        return computed[lam]

    record["search_delta"] = search_lambda(
        common.memoised(delta_cache, lambda lam: float(np.sum(exposure(lam).delta))), budget)
    if record.get("delta_t", {}).get("lambda") != best:
        record["delta_t"] = {"lambda": best, "no ES": exposure(1.0).to_json(), "ES": exposure(best).to_json()}
    units.save(name, record)
    logging.info("%s: grid best λ=%g, search λ=%.5g (classifier-FID), λ=%.5g (Σδ)", name, best,
                 record["search_classifier_fid"]["best"], record["search_delta"]["best"])
    return record


# --- report --------------------------------------------------------------------------------------

def _exposure(data: Mapping[str, Any]) -> exposure_bias.ExposureBias:
    fields = {f.name for f in dataclasses.fields(exposure_bias.ExposureBias)}
    return exposure_bias.ExposureBias(**{k: (v if k == "num_images" else np.asarray(v))
                                         for k, v in data.items() if k in fields})


def _found(search_result: Mapping[str, Any]) -> str:
    return f"{search_result['best']:.5g}" + (" (edge of the range)" if search_result["at_edge"] else "")


def _sorted(records: Mapping[str, dict]) -> list[dict]:
    order = {"ddpm": 0, "ddim": 1, "heun": 2}
    return sorted(records.values(), key=lambda r: (order.get(r["sampler"], 9), r["sampler"], r["steps"]))


def report(directory: str, command: str) -> None:
    """Rebuilds the report from every unit file in ``directory``."""
    every = _sorted(common.Units(directory).all())
    # A unit that another command is still computing, or that a killed command left, has no δ_t yet.
    records = [r for r in every if "delta_t" in r]
    unfinished = [f"{r['sampler']}-{r['steps']}" for r in every if "delta_t" not in r]
    if not records:
        raise FileNotFoundError(f"no finished unit files in {directory}/units (unfinished: {unfinished}): "
                                "run the experiment first")
    first = records[0]
    metric = first["scorer"]["metric"]
    lines = common.header("Epsilon Scaling on digits: quality against λ, δ_t, and the λ search", records,
                          command)
    lines += [f"Model: the {first['weighting']} run, seed {first['seed']}, checkpoint "
              f"{first['checkpoint_step']}. "
              "Constant λ (ε̂/λ at every step). Steps are network evaluations: Heun-s runs on "
              "(s + 1) // 2 EDM noise levels. Every λ of a setting is scored on the same noise.", "",
              *([f"Unfinished units, left out: {', '.join(unfinished)}.", ""] if unfinished else []),
              f"## The λ found: grid against the search tool ({metric}; Σδ_t = jdiff's δ summed over "
              "the steps)",
              ""]
    rows = []
    for r in records:
        fid_search, delta_search = r["search_classifier_fid"], r["search_delta"]
        rows.append([f"{r['sampler']}-{r['steps']}", common.format_number(r["grid"]["1"]),
                     f"{r['grid_best']:g}", common.format_number(r["grid"][f"{r['grid_best']:g}"]),
                     _found(fid_search), common.format_number(fid_search["score"]),
                     str(len(fid_search["evaluations"])), _found(delta_search),
                     common.format_number(r["delta_t"]["no ES"]["delta_sum"]),
                     common.format_number(r["delta_t"]["ES"]["delta_sum"])])
    lines += common.markdown_table(
        ["setting", "λ = 1", "grid best λ", "its score", "search λ (classifier-FID)", "its score",
         "evaluations", "search λ (Σδ_t)", "Σδ_t at λ = 1", "Σδ_t at grid best"], rows)
    lambdas = sorted({float(lam) for r in records for lam in r["grid"]})
    lines += ["", f"## {metric} against λ (bold: the best of each setting)", ""]
    rows = []
    for lam in lambdas:
        row = [f"{lam:g}"]
        for r in records:
            value = r["grid"].get(f"{lam:g}")
            text = "–" if value is None else common.format_number(value)
            row.append(f"**{text}**" if lam == r["grid_best"] else text)
        rows.append(row)
    lines += common.markdown_table(["λ"] + [f"{r['sampler']}-{r['steps']}" for r in records], rows)
    lines += ["", f"![quality against λ]({EXPERIMENT}.png)", "", "## δ_t with and without ES", ""]
    delta_dir = os.path.join(directory, "delta_t")
    for r in records:
        name = f"{r['sampler']}-{r['steps']}"
        results = {f"no ES ({name})": _exposure(r["delta_t"]["no ES"]),
                   f"ES λ={r['delta_t']['lambda']:g} ({name})": _exposure(r["delta_t"]["ES"])}
        exposure_bias.plot_exposure_bias(results, os.path.join(delta_dir, f"{name}.png"))
        lines.append(f"- {name}: ![δ_t {name}](delta_t/{name}.png)")
    results = dict(experiment=EXPERIMENT, metric=metric, command=command,
                   units={f"{r['sampler']}-{r['steps']}": r for r in records})
    common.write_report(directory, EXPERIMENT, lines, results)
    plot(records, metric, os.path.join(directory, f"{EXPERIMENT}.png"),
         smoke=common.is_smoke_report(records))


def plot(records: Sequence[Mapping[str, Any]], metric: str, path: str, smoke: bool) -> None:
    plt = common.pyplot()
    sampler_names = list(dict.fromkeys(r["sampler"] for r in records))
    fig, axes = plt.subplots(1, len(sampler_names), figsize=(5 * len(sampler_names), 4), squeeze=False)
    for ax, sampler in zip(axes[0], sampler_names):
        for i, r in enumerate(x for x in records if x["sampler"] == sampler):
            points = sorted((float(k), v) for k, v in r["grid"].items())
            color = f"C{i}"
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color,
                    label=f"{r['steps']} steps")
            found = r["search_classifier_fid"]
            ax.plot(found["best"], found["score"], marker="*", markersize=14, color=color, linestyle="none")
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set_title(f"{sampler.upper()} (star: the search tool's λ)", fontsize="medium")
        ax.set_xlabel("λ (constant)")
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.legend(fontsize="small")
    common.save_figure(fig, path, smoke)


# --- command line --------------------------------------------------------------------------------

def model_under_test(budget: common.Budget, root: str, overrides: Mapping[str, Any], weighting: str,
                     seed: int, workdir: str | None) -> tuple[Any, str]:
    """(config, workdir) of the model to sweep: ``workdir`` with the digits config, or the trained
    weighting-comparison run of ``weighting`` and ``seed`` (trained if missing)."""
    config, default_workdir = weighting_comparison.trained_run(weighting, seed, budget, root, overrides)
    if workdir:
        return config, workdir
    common.ensure_trained(config, default_workdir)
    return config, default_workdir


def run(budget: common.Budget, directory: str, root: str, classifier_path: str, only: Mapping[str, set[str]],
        overrides: Mapping[str, Any], force: bool, command: str, weighting: str = "debias",
        seed: int | None = None, workdir: str | None = None,
        inception_weights: str | None = None) -> None:
    jobs = common.select_units(only, [dict(sampler=sampler, steps=steps) for sampler in budget.sweep_samplers
                                      for steps in budget.steps])
    config, workdir = model_under_test(budget, root, overrides, weighting,
                                       budget.seeds[0] if seed is None else seed, workdir)
    scorer = common.make_scorer(classifier_path, config, inception_weights)
    programs = common.Programs(config)
    units = common.Units(directory)
    params, step = programs.restore(config, workdir, None)
    # The δ chains start from the same training images for every model (the sampling seed's subset).
    images_config = config.copy_and_resolve_references()
    images_config.seed = common.SAMPLE_SEED
    delta_images, _ = exposure_bias.training_images(images_config, budget.delta_images)
    for job in jobs:
        sweep_unit(config, workdir, params, step, job["sampler"], job["steps"], budget, scorer, programs,
                   units, delta_images, force)
    report(directory, command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weighting", default="debias", choices=common.WEIGHTINGS,
                        help="which weighting-comparison run to sweep (default debias)")
    parser.add_argument("--seed", type=int, default=None, help="its seed (default: the budget's first)")
    parser.add_argument("--workdir", default=None, help="sweep this run of configs/digits.py instead")


def main(argv: Sequence[str] | None = None) -> None:
    common.main(argv, doc=__doc__, experiment=EXPERIMENT, only_keys=ONLY_KEYS, run=run, report=report,
                add_arguments=add_arguments, run_options=("weighting", "seed", "workdir"))


if __name__ == "__main__":
    main()
