"""Debias and Epsilon Scaling together, against each alone and against neither, on digits.

    python experiments/debias_plus_es.py --budget small               # CPU smoke run, a few minutes
    python experiments/debias_plus_es.py --budget full [--results DIR] [--only weighting=debias]
        [--only seed=0] [--seeds 0,1,2] [--steps 20,50,100] [--samplers ddpm,ddim]
    python experiments/debias_plus_es.py --budget full --report-only

The four cells: constant weighting without ES ("neither"), Debias without ES, constant with ES, Debias with
ES. The models are weighting_comparison.py's constant and Debias runs of the same budget (the same folders:
trained once, here if missing). Each model gets its own λ for each sampler and step count: the search tool
(:func:`jdiff.evaluation.search.grid_search` over the budget's λ range, as in eps_scaling_sweep.py)
minimises classifier-FID (digits) on the samples with indices [0, N); every cell is then scored on the
samples with indices [N, 2N), fresh noise, so a tuned λ is not rewarded for fitting the noise it was tuned
on. Mean ± sample std over the seeds.

Writes ``<results>/debias_plus_es/``: ``debias_plus_es.{md,json,png}`` and
``units/<weighting>_seed<seed>.json``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import common  # noqa: E402
import eps_scaling_sweep  # noqa: E402
import weighting_comparison  # noqa: E402

EXPERIMENT = "debias_plus_es"
ONLY_KEYS = ("weighting", "seed")
WEIGHTINGS = ("constant", "debias")
CELLS = (("neither", "constant", "no_es"), ("Debias", "debias", "no_es"), ("ES", "constant", "es"),
         ("Debias + ES", "debias", "es"))


def evaluate_model(weighting: str, seed: int, budget: common.Budget, scorer: common.Scorer,
                   programs: common.Programs, units: common.Units, root: str, overrides: Mapping[str, Any],
                   force: bool = False) -> dict[str, Any]:
    """λ tuned and the model scored with and without it, for every sampler and step count; the record."""
    config, workdir = weighting_comparison.trained_run(weighting, seed, budget, root, overrides)
    name = f"{weighting}_seed{seed}"
    signature = dict(config=common.config_hash(config), num_samples=budget.num_samples,
                     classifier=scorer.info["classifier_sha256"],
                     search=dict(bounds=[min(budget.lambdas), max(budget.lambdas)],
                                 points=budget.search_points, rounds=budget.search_rounds))
    record = units.open(name, signature, force)
    record.update(weighting=weighting, seed=seed, checkpoint_step=budget.train_steps, scorer=scorer.info,
                  budget=budget.describe(), environment=common.environment())
    units.save(name, record)
    settings = record.setdefault("settings", {})
    jobs = [(sampler, steps) for sampler in budget.samplers for steps in budget.steps
            if "es" not in settings.get(common.setting_name(sampler, steps), {})]
    if not jobs:
        return record
    common.ensure_trained(config, workdir)
    params, _ = programs.restore(config, workdir, budget.train_steps)
    n = budget.num_samples

    def save() -> None:
        units.save(name, record)

    for sampler, steps in jobs:
        setting = common.setting_name(sampler, steps)
        entry = settings.setdefault(setting, {})
        sampled = common.with_sampler(config, sampler, steps)
        tune = eps_scaling_sweep.lambda_score_fn(programs, sampled, params, scorer, np.arange(n),
                                                 budget.sample_batch, entry.setdefault("tuning", {}), save)
        entry["search"] = eps_scaling_sweep.search_lambda(tune, budget)
        entry["lambda"] = entry["search"]["best"]
        score = eps_scaling_sweep.lambda_score_fn(programs, sampled, params, scorer, np.arange(n, 2 * n),
                                                  budget.sample_batch, entry.setdefault("held_out", {}), save)
        entry["no_es"] = score(1.0)
        entry["es"] = score(entry["lambda"])
        save()
        logging.info("%s %s: λ=%.5g, %s %.4g without ES, %.4g with", name, setting, entry["lambda"],
                     scorer.name, entry["no_es"], entry["es"])
    return record


# --- report --------------------------------------------------------------------------------------

def aggregate(records: Mapping[str, dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{setting: {cell: scores over seeds, "λ <weighting>": tuned λ over seeds}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for record in records.values():
        for setting, entry in record.get("settings", {}).items():
            if "es" not in entry:
                continue
            cells = out.setdefault(setting, {})
            for cell, weighting, key in CELLS:
                if record["weighting"] == weighting:
                    cells.setdefault(cell, []).append(entry[key])
            cells.setdefault(f"λ {record['weighting']}", []).append(entry["lambda"])
    return out


def _setting_order(name: str) -> tuple[str, int]:
    sampler, steps = name.split("-")
    return sampler, int(steps)


def report(directory: str, command: str) -> None:
    records = common.Units(directory).all()
    if not records:
        raise FileNotFoundError(f"no unit files in {directory}/units: run the experiment first")
    first = next(iter(records.values()))
    metric = first["scorer"]["metric"]
    summary = aggregate(records)
    settings = sorted(summary, key=_setting_order)
    seeds = {w: sorted(r["seed"] for r in records.values() if r["weighting"] == w) for w in WEIGHTINGS}
    lines = common.header("Debias + Epsilon Scaling on digits: together, alone, neither",
                          list(records.values()), command)
    lines += [f"Models: the constant-weight and Debias runs of weighting_comparison.py (checkpoint "
              f"{first['checkpoint_step']}; seeds: constant {seeds['constant']}, Debias {seeds['debias']}). "
              "λ (constant over the steps) tuned per model and setting by the search tool on samples "
              "0 … N−1; "
              f"every cell scored on samples N … 2N−1 (N = {first['budget']['num_samples']}).", "",
              f"## {metric} (lower is better; mean ± std over seeds; bold: the best of the row)", ""]
    rows = []
    for setting in settings:
        cells = summary[setting]
        means = {cell: np.mean(cells[cell]) for cell, _, _ in CELLS if cells.get(cell)}
        best = min(means, key=means.get) if means else None
        rows.append([setting]
                    + [common.format_mean_std(cells.get(cell, []), bold=cell == best) for cell, _, _ in CELLS]
                    + [common.format_mean_std(cells.get(f"λ {w}", [])) for w in WEIGHTINGS])
    lines += common.markdown_table(
        ["setting"] + [cell for cell, _, _ in CELLS] + ["λ (constant)", "λ (Debias)"], rows)
    lines += ["", f"![plot]({EXPERIMENT}.png)"]
    results = dict(experiment=EXPERIMENT, metric=metric, command=command,
                   summary=summary, units=records)
    common.write_report(directory, EXPERIMENT, lines, results)
    plot(summary, settings, metric, os.path.join(directory, f"{EXPERIMENT}.png"),
         smoke=common.is_smoke_report(list(records.values())))


def plot(summary: Mapping[str, Any], settings: Sequence[str], metric: str, path: str, smoke: bool) -> None:
    plt = common.pyplot()
    sampler_names = list(dict.fromkeys(s.split("-")[0] for s in settings))
    fig, axes = plt.subplots(1, len(sampler_names), figsize=(5.5 * len(sampler_names), 4), squeeze=False)
    for ax, sampler in zip(axes[0], sampler_names):
        chosen = [s for s in settings if s.split("-")[0] == sampler]
        x = np.array([int(s.split("-")[1]) for s in chosen])
        for i, (cell, _, _) in enumerate(CELLS):
            values = [summary[s].get(cell, []) for s in chosen]
            keep = [j for j, v in enumerate(values) if v]
            ax.errorbar(x[keep], [np.mean(values[j]) for j in keep],
                        yerr=[np.std(values[j], ddof=1) if len(values[j]) > 1 else 0.0 for j in keep],
                        marker="o", capsize=3, label=cell, linestyle="-" if "ES" in cell else "--")
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.set_title(sampler.upper(), fontsize="medium")
        ax.legend(fontsize="small")
    common.save_figure(fig, path, smoke)


# --- command line --------------------------------------------------------------------------------

def run(budget: common.Budget, directory: str, root: str, classifier_path: str, only: Mapping[str, set[str]],
        overrides: Mapping[str, Any], force: bool, command: str,
        inception_weights: str | None = None) -> None:
    candidates = [dict(weighting=w, seed=s) for s in budget.seeds for w in WEIGHTINGS]
    chosen = common.select_units(only, candidates)
    base_config, _ = weighting_comparison.trained_run("debias", budget.seeds[0], budget, root, overrides)
    scorer = common.make_scorer(classifier_path, base_config, inception_weights)
    programs = common.Programs(base_config)
    units = common.Units(directory)
    for unit in chosen:
        evaluate_model(unit["weighting"], unit["seed"], budget, scorer, programs, units, root, overrides,
                       force)
    report(directory, command)


def main(argv: Sequence[str] | None = None) -> None:
    common.main(argv, doc=__doc__, experiment=EXPERIMENT, only_keys=ONLY_KEYS, run=run, report=report)


if __name__ == "__main__":
    main()
