"""Debias against constant, P2 and Min-SNR loss weighting on the digits config (Yu et al., arXiv 2310.08442).

    python experiments/weighting_comparison.py --budget small          # CPU smoke run, a few minutes
    python experiments/weighting_comparison.py --budget full [--results DIR] [--only weighting=debias]
        [--only seed=0,1] [--seeds 0,1,2] [--steps 20,50,100] [--train-steps N] [--num-samples N]
    python experiments/weighting_comparison.py --budget full --report-only   # rebuild the report

Each weighting is trained with the same model, data, seed, optimiser and number of steps
(configs/digits.py; only ``diffusion.weighting`` differs), one run per (weighting, seed). Scored by
classifier-FID (digits) on ``num_samples`` samples (the same noise for every weighting):

- against training iterations: the EMA parameters of every checkpoint, with the budget's ``curve``
  sampler (DDPM, 100 steps in the full budget);
- against the number of sampling steps: the last checkpoint, DDPM and DDIM (η = 0) on each step count.

Headline numbers are the mean ± sample std over the seeds. Writes ``<results>/weighting_comparison/``:
``weighting_comparison.{md,json,png}`` and ``units/<weighting>_seed<seed>.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import common  # noqa: E402

EXPERIMENT = "weighting_comparison"
ONLY_KEYS = ("weighting", "seed")
LABELS = {"constant": "constant", "p2": "P2", "min_snr": "Min-SNR", "debias": "Debias (1/√SNR)"}


def unit_name(weighting: str, seed: int) -> str:
    return f"{weighting}_seed{seed}"


def score_key(step: int, sampler: str, steps: int) -> str:
    return f"{step}/{common.setting_name(sampler, steps)}"


def trained_run(weighting: str, seed: int, budget: common.Budget, root: str,
                overrides: Mapping[str, Any]) -> tuple[Any, str]:
    """The config and workdir of the digits run of ``weighting`` and ``seed``; the other experiments use
    the same runs (same settings, same folder)."""
    config = common.digits_config(weighting, seed, budget, overrides)
    return config, common.run_workdir(root, config)


def evaluate_run(weighting: str, seed: int, budget: common.Budget, scorer: common.Scorer,
                 programs: common.Programs, units: common.Units, root: str, overrides: Mapping[str, Any],
                 force: bool = False) -> dict[str, Any]:
    """Trains the run if needed and scores what its unit file lacks; returns the unit record."""
    config, workdir = trained_run(weighting, seed, budget, root, overrides)
    name = unit_name(weighting, seed)
    signature = dict(config=common.config_hash(config), num_samples=budget.num_samples,
                     classifier=scorer.info["classifier_sha256"])
    record = units.open(name, signature, force)
    d = config.diffusion
    record.update(weighting=weighting, seed=seed, train_steps=budget.train_steps, curve_setting=budget.curve,
                  weighting_params=dict(p2_k=d.p2_k, p2_gamma=d.p2_gamma, min_snr_gamma=d.min_snr_gamma),
                  scorer=scorer.info, budget=budget.describe(),
                  environment=common.environment())
    units.save(name, record)
    scores = record.setdefault("scores", {})     # "<checkpoint step>/<sampler>-<steps>" → score
    curve_sampler, curve_steps = common.parse_setting(budget.curve)
    wanted = {(step, curve_sampler, curve_steps)
              for step in range(budget.checkpoint_every, budget.train_steps + 1, budget.checkpoint_every)}
    wanted |= {(budget.train_steps, sampler, steps) for sampler in budget.samplers for steps in budget.steps}
    wanted = sorted(job for job in wanted if score_key(*job) not in scores)
    if not wanted:
        return record
    available = common.ensure_trained(config, workdir)
    indices = np.arange(budget.num_samples)
    for step in sorted({job[0] for job in wanted}):
        if step not in available:
            raise RuntimeError(f"{workdir} has no checkpoint of step {step} (it has {available})")
        params, _ = programs.restore(config, workdir, step)
        for _, sampler, steps in (job for job in wanted if job[0] == step):
            start = time.perf_counter()
            images = programs.images(common.with_sampler(config, sampler, steps), params, indices, None,
                                     budget.sample_batch)
            scores[score_key(step, sampler, steps)] = scorer(images)
            logging.info("%s step %d %s: %s %.4g (%.1f s)", name, step, common.setting_name(sampler, steps),
                         scorer.name, scores[score_key(step, sampler, steps)], time.perf_counter() - start)
            units.save(name, record)
    return record


# --- report --------------------------------------------------------------------------------------

def _order(records: Mapping[str, dict]) -> list[str]:
    present = {r["weighting"] for r in records.values()}
    return [w for w in common.WEIGHTINGS if w in present]


def _views(record: Mapping[str, Any]) -> tuple[dict[int, float], dict[str, float]]:
    """A unit's scores as (curve: {checkpoint step: score}, final: {setting: score at the last step})."""
    curve, final = {}, {}
    curve_name = common.setting_name(*common.parse_setting(record["curve_setting"]))
    for key, score in record.get("scores", {}).items():
        step, setting = key.split("/")
        if setting == curve_name:
            curve[int(step)] = score
        if int(step) == record["train_steps"]:
            final[setting] = score
    return curve, final


def aggregate(records: Mapping[str, dict]) -> dict[str, Any]:
    """{"final": {setting: {weighting: scores over seeds}}, "curve": {weighting: {step: scores}},
    "seeds": {weighting: seeds}}."""
    out: dict[str, Any] = {"final": {}, "curve": {}, "seeds": {}}
    for record in records.values():
        w = record["weighting"]
        out["seeds"].setdefault(w, []).append(record["seed"])
        curve, final = _views(record)
        for setting, score in final.items():
            out["final"].setdefault(setting, {}).setdefault(w, []).append(score)
        for step, score in curve.items():
            out["curve"].setdefault(w, {}).setdefault(step, []).append(score)
    return out


def report(directory: str, command: str) -> None:
    """Rebuilds ``weighting_comparison.{md,json,png}`` from every unit file in ``directory``."""
    records = common.Units(directory).all()
    if not records:
        raise FileNotFoundError(f"no unit files in {directory}/units: run the experiment first")
    first = next(iter(records.values()))
    summary = aggregate(records)
    weightings = _order(records)
    settings = sorted(summary["final"], key=lambda n: (n.split("-")[0], int(n.split("-")[1])))
    metric = first["scorer"]["metric"]
    lines = common.header("Loss weighting on digits: Debias vs constant, P2 and Min-SNR",
                          list(records.values()), command)
    p = first["weighting_params"]
    lines += ["Weights on the ε-MSE: constant 1; "
              f"P2 1/(k + SNR)^γ with k = {p['p2_k']:g}, γ = {p['p2_gamma']:g}; "
              f"Min-SNR min(SNR, γ)/SNR with γ = {p['min_snr_gamma']:g}; Debias 1/√SNR. Same model, data, "
              "optimiser, steps and seed for each; every model sampled from the same noise.", "",
              "Seeds per weighting: "
              + ", ".join(f"{LABELS[w]} {sorted(summary['seeds'][w])}" for w in weightings), "",
              f"## {metric} at the last checkpoint, by sampler and steps (lower is better; mean ± std "
              "over seeds)", ""]
    rows = []
    best = {s: min((np.mean(v), w) for w, v in summary["final"][s].items())[1] for s in settings}
    for w in weightings:
        rows.append([LABELS[w]] + [common.format_mean_std(summary["final"][s].get(w, []), bold=best[s] == w)
                                   for s in settings])
    lines += common.markdown_table(["weighting"] + settings, rows)
    curve = first["curve_setting"]
    steps = sorted({step for w in summary["curve"] for step in summary["curve"][w]})
    lines += ["", f"## {metric} against training iterations ({curve.replace(':', ', ')} steps)", ""]
    rows = [[str(step)] + [common.format_mean_std(summary["curve"].get(w, {}).get(step, []))
                           for w in weightings] for step in steps]
    lines += common.markdown_table(["iteration"] + [LABELS[w] for w in weightings], rows)
    lines += ["", f"![plot]({EXPERIMENT}.png)"]
    results = dict(experiment=EXPERIMENT, metric=metric, command=command,
                   summary={"final": summary["final"],
                            "curve": {w: {str(k): v for k, v in c.items()}
                                      for w, c in summary["curve"].items()},
                            "seeds": summary["seeds"]},
                   units=records)
    common.write_report(directory, EXPERIMENT, lines, results)
    plot(summary, weightings, settings, metric, curve, os.path.join(directory, f"{EXPERIMENT}.png"),
         smoke=common.is_smoke_report(list(records.values())))


def plot(summary: Mapping[str, Any], weightings: Sequence[str], settings: Sequence[str], metric: str,
         curve: str, path: str, smoke: bool) -> None:
    plt = common.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for w in weightings:
        points = sorted(summary["curve"].get(w, {}).items())
        if points:
            x = np.array([p[0] for p in points])
            mean = np.array([np.mean(p[1]) for p in points])
            std = np.array([np.std(p[1], ddof=1) if len(p[1]) > 1 else 0.0 for p in points])
            (line,) = left.plot(x, mean, marker="o", label=LABELS[w])
            left.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    left.set_xlabel("training iteration")
    left.set_title(f"against training iterations ({curve.replace(':', ', ')} steps)", fontsize="medium")
    styles = {"ddpm": "-", "ddim": "--"}
    colors = {w: f"C{i}" for i, w in enumerate(weightings)}
    for sampler in sorted({s.split("-")[0] for s in settings}):
        for w in weightings:
            points = [(int(s.split("-")[1]), summary["final"][s][w]) for s in settings
                      if s.startswith(sampler + "-") and w in summary["final"][s]]
            if points:
                x = [p[0] for p in points]
                right.errorbar(x, [np.mean(p[1]) for p in points],
                               yerr=[np.std(p[1], ddof=1) if len(p[1]) > 1 else 0.0 for p in points],
                               linestyle=styles.get(sampler, ":"), marker="o", color=colors[w], capsize=3,
                               label=f"{LABELS[w]}, {sampler.upper()}")
    right.set_xscale("log")
    right.set_xticks(sorted({int(s.split("-")[1]) for s in settings}))
    right.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    right.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    right.set_xlabel("sampling steps")
    right.set_title("against sampling steps (last checkpoint)", fontsize="medium")
    for ax in (left, right):
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.legend(fontsize="small")
    common.save_figure(fig, path, smoke)


# --- command line --------------------------------------------------------------------------------

def run(budget: common.Budget, directory: str, root: str, classifier_path: str,
        only: Mapping[str, set[str]], overrides: Mapping[str, Any], force: bool, command: str,
        inception_weights: str | None = None) -> None:
    """Every selected (weighting, seed) unit, then the report of every unit in ``directory``."""
    candidates = [dict(weighting=w, seed=s) for s in budget.seeds for w in common.WEIGHTINGS]
    chosen = common.select_units(only, candidates)
    base_config, _ = trained_run("debias", budget.seeds[0], budget, root, overrides)
    scorer = common.make_scorer(classifier_path, base_config, inception_weights)
    programs = common.Programs(base_config)
    units = common.Units(directory)
    for unit in chosen:
        evaluate_run(unit["weighting"], unit["seed"], budget, scorer, programs, units, root, overrides, force)
    report(directory, command)


def main(argv: Sequence[str] | None = None) -> None:
    common.main(argv, doc=__doc__, experiment=EXPERIMENT, only_keys=ONLY_KEYS, run=run, report=report)


if __name__ == "__main__":
    main()
