"""bfloat16 against float32 on the digits runs: does the fast path change the results? (issue 6)

    python experiments/precision_check.py --budget full [--results DIR] [--workdir-root DIR]
        [--f32-workdir-root DIR]
    python experiments/precision_check.py --budget full --report-only

On a GPU or TPU jdiff computes the network in bfloat16 (``model.compute_dtype='auto'``) with float32
parameters, optimiser state, loss, schedule and sampler arithmetic. Two checks, both scored by
classifier-FID (digits):

- training: the Debias runs of ``weighting_comparison.py`` trained in bfloat16 (``<results>/weighting_comparison``)
  against the same runs trained with ``--set model.compute_dtype=float32`` (``<results>/../f32/weighting_comparison``,
  as ``weighting_comparison.py --results <root>/f32 --only weighting=debias --set model.compute_dtype=float32``
  writes them): classifier-FID against iterations and at the end, and the logged training loss, per seed;
- sampling: each bfloat16-trained Debias run sampled with the network in bfloat16 and in float32 from the
  same noise, for three sampling seeds; the paired difference against the spread over sampling seeds.

Writes ``<results>/precision/precision.{md,json,png}`` and ``units/seed<seed>.json``.
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import common  # noqa: E402
import weighting_comparison  # noqa: E402
from jdiff import metrics as metrics_lib  # noqa: E402
from jdiff import train  # noqa: E402

EXPERIMENT = "precision"
ONLY_KEYS = ("seed",)
SAMPLING_SEEDS = (0, 1, 2)
DTYPES = ("bfloat16", "float32")


def settings(budget: common.Budget) -> list[tuple[str, int]]:
    """The budget's curve setting (DDPM, 100 steps in the full budget) and DDIM on its middle step count."""
    chosen = [common.parse_setting(budget.curve), ("ddim", budget.steps[len(budget.steps) // 2])]
    return list(dict.fromkeys(chosen))


def loss_curve(workdir: str, metrics_dir: str | None) -> dict[str, float] | None:
    """{step: training loss} as the run logged it (the mean over each logging interval), from the run's
    ``metrics.jsonl`` or else ``<metrics_dir>/<run folder name>.jsonl`` (a copy kept from an earlier
    machine); None if neither exists."""
    copy = os.path.join(metrics_dir or "", os.path.basename(workdir) + ".jsonl")
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        logged = metrics_lib.read_metrics(workdir)
    elif metrics_dir and os.path.exists(copy):
        with open(copy) as f:
            logged = [json.loads(line) for line in f if line.strip()]
    else:
        return None
    return {str(int(m["step"])): float(m["loss"]) for m in logged if "loss" in m}


def evaluate_seed(seed: int, budget: common.Budget, scorer: common.Scorer,
                  programs: Mapping[str, common.Programs],
                  units: common.Units, root: str, f32_root: str | None, overrides: Mapping[str, Any],
                  force: bool, metrics_dir: str | None = None) -> dict[str, Any]:
    """Scores of the Debias run of ``seed`` (bfloat16-trained on a GPU) sampled in each dtype, and the
    training losses of it and of its float32 twin."""
    config, workdir = weighting_comparison.trained_run("debias", seed, budget, root, overrides)
    name = f"seed{seed}"
    signature = dict(config=common.config_hash(config), num_samples=budget.num_samples,
                     classifier=scorer.info["classifier_sha256"])
    record = units.open(name, signature, force)
    record.update(seed=seed, checkpoint_step=budget.train_steps, scorer=scorer.info, budget=budget.describe(),
                  environment=common.environment())
    losses = record.setdefault("loss", {})     # {the dtype the run computed in: {step: loss}}
    trained_in = np.dtype(train.compute_dtype(config.model.compute_dtype)).name   # 'auto' resolved here
    runs = {trained_in: workdir}
    if f32_root:
        runs.setdefault("float32", weighting_comparison.trained_run(
            "debias", seed, budget, f32_root, {**overrides, "model.compute_dtype": "float32"})[1])
    units.save(name, record)
    scores = record.setdefault("scores", {})     # "<sampler>-<steps>/<dtype>/<sampling seed>" → score
    jobs = [(sampler, steps, dtype, s) for sampler, steps in settings(budget) for dtype in DTYPES
            for s in SAMPLING_SEEDS
            if f"{common.setting_name(sampler, steps)}/{dtype}/{s}" not in scores]
    if jobs:
        common.ensure_trained(config, workdir)
    for dtype, run_dir in runs.items():
        if dtype not in losses and (curve := loss_curve(run_dir, metrics_dir)) is not None:
            losses[dtype] = curve
    units.save(name, record)
    if not jobs:
        return record
    params, _ = programs["bfloat16"].restore(config, workdir, budget.train_steps)
    for sampler, steps, dtype, s in jobs:
        setting = common.with_sampler(config, sampler, steps)
        setting.model.compute_dtype = dtype
        setting.seed = s
        images = programs[dtype].images(setting, params, np.arange(budget.num_samples), None,
                                        budget.sample_batch)
        key = f"{common.setting_name(sampler, steps)}/{dtype}/{s}"
        scores[key] = scorer(images)
        logging.info("seed %d %s: %s %.4g", seed, key, scorer.name, scores[key])
        units.save(name, record)
    return record


# --- report --------------------------------------------------------------------------------------

def _training_units(directory: str) -> dict[str, list[dict[str, Any]]]:
    """The Debias units of weighting_comparison.py per training dtype (bfloat16 here, float32 in ../f32)."""
    results_root = os.path.dirname(directory)
    folders = {"bfloat16": os.path.join(results_root, "weighting_comparison"),
               "float32": os.path.join(os.path.dirname(results_root), "f32", "weighting_comparison")}
    found = {}
    for dtype, folder in folders.items():
        records = common.Units(folder).all() if os.path.isdir(os.path.join(folder, "units")) else {}
        found[dtype] = sorted((r for r in records.values() if r["weighting"] == "debias" and r.get("scores")),
                              key=lambda r: r["seed"])
    return found


def report(directory: str, command: str) -> None:
    records = sorted(common.Units(directory).all().values(), key=lambda r: r["seed"])
    records = [r for r in records if r.get("scores")]
    if not records:
        raise FileNotFoundError(f"no finished unit files in {directory}/units: run the experiment first")
    metric = records[0]["scorer"]["metric"]
    lines = common.header("bfloat16 against float32 on digits (Debias runs)", records, command)
    training = _training_units(directory)
    lines += ["The network computes in bfloat16 on the GPU (`model.compute_dtype='auto'`); parameters, "
              "optimiser, loss and sampler arithmetic stay float32. Seed-to-seed spread is the noise "
              "floor against which a difference means something.", "",
              f"## Training in bfloat16 against float32 ({metric}, mean ± std over training seeds)", ""]
    rows = []
    final_settings = sorted({k.split("/")[1] for r in training["bfloat16"] for k in r["scores"]
                             if int(k.split("/")[0]) == r["train_steps"]},
                            key=lambda n: (n.split("-")[0], int(n.split("-")[1])))
    for setting in final_settings:
        row = [setting]
        for dtype in DTYPES:
            values = [r["scores"][key] for r in training[dtype]
                      for key in [f"{r['train_steps']}/{setting}"] if key in r["scores"]]
            row.append(common.format_mean_std(values))
        rows.append(row)
    final_loss = {dtype: [np.mean([v for k, v in r["loss"][dtype].items()
                                   if int(k) > r["checkpoint_step"] // 2])
                          for r in records if dtype in r.get("loss", {})] for dtype in DTYPES}
    rows.append(["training loss, mean over the second half"]
                + [common.format_mean_std(final_loss[d]) for d in DTYPES])
    lines += common.markdown_table(["last checkpoint", "bfloat16 training", "float32 training"], rows)
    lines += ["", f"Seeds: bfloat16 {[r['seed'] for r in training['bfloat16']]}, float32 "
              f"{[r['seed'] for r in training['float32']]}.", "",
              f"## Sampling in bfloat16 against float32 (the bfloat16-trained runs; {metric})", ""]
    rows = []
    summary: dict[str, Any] = {}
    for sampler, steps in sorted({common.parse_setting(k.split("/")[0].replace("-", ":"))
                                  for r in records for k in r["scores"]}):
        setting = common.setting_name(sampler, steps)
        for r in records:
            per = {dtype: [r["scores"].get(f"{setting}/{dtype}/{s}") for s in SAMPLING_SEEDS]
                   for dtype in DTYPES}
            if any(v is None for values in per.values() for v in values):
                continue
            diff = np.subtract(per["bfloat16"], per["float32"])
            summary.setdefault(setting, []).extend(diff.tolist())
            rows.append([setting, str(r["seed"]), common.format_mean_std(per["bfloat16"]),
                         common.format_mean_std(per["float32"]), common.format_mean_std(diff.tolist())])
    lines += common.markdown_table(["setting", "training seed", "bfloat16 sampling (over sampling seeds)",
                                    "float32 sampling", "paired difference bf16 − f32"], rows)
    lines += ["", f"![bfloat16 against float32]({EXPERIMENT}.png)"]
    results = dict(experiment=EXPERIMENT, metric=metric, command=command, sampling_differences=summary,
                   training={d: [dict(seed=r["seed"], scores=r["scores"]) for r in training[d]]
                             for d in DTYPES},
                   units={f"seed{r['seed']}": r for r in records})
    common.write_report(directory, EXPERIMENT, lines, results)
    plot(records, training, metric, os.path.join(directory, f"{EXPERIMENT}.png"),
         smoke=common.is_smoke_report(records))


def plot(records: Sequence[Mapping[str, Any]], training: Mapping[str, Sequence[Mapping[str, Any]]],
         metric: str, path: str, smoke: bool) -> None:
    plt = common.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"bfloat16": "tab:blue", "float32": "tab:orange"}
    for r in records:
        for dtype, curve in r.get("loss", {}).items():
            steps = np.array(sorted(int(k) for k in curve))
            values = np.array([curve[str(k)] for k in steps])
            window = min(10, len(values))      # logged every 100 steps: a 1,000-step running mean
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            left.plot(steps[window - 1:], smooth, color=colors[dtype], alpha=0.8,
                      label=f"{dtype}" if r is records[0] else None)
    left.set_xlabel("training step")
    left.set_ylabel("training loss (running mean of 1,000 steps)")
    left.set_title("loss, one line per seed", fontsize="medium")
    for dtype, units in training.items():
        for r in units:
            curve_name = common.setting_name(*common.parse_setting(r["curve_setting"]))
            points = sorted((int(k.split("/")[0]), v) for k, v in r["scores"].items()
                            if k.endswith("/" + curve_name))
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colors[dtype],
                       alpha=0.8, label=f"{dtype} training" if r is units[0] else None)
    right.set_xlabel("training step")
    right.set_ylabel(f"{metric} (lower is better)")
    right.set_yscale("log")
    right.set_title("quality against iterations, one line per seed", fontsize="medium")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    common.save_figure(fig, path, smoke)


def run(budget: common.Budget, directory: str, root: str, classifier_path: str, only: Mapping[str, set[str]],
        overrides: Mapping[str, Any], force: bool, command: str, f32_workdir_root: str | None = None,
        metrics_dir: str | None = None,
        inception_weights: str | None = None) -> None:
    """Every selected training seed, then the report of every unit in ``directory``."""
    chosen = common.select_units(only, [dict(seed=s) for s in budget.seeds])
    base_config, _ = weighting_comparison.trained_run("debias", budget.seeds[0], budget, root, overrides)
    scorer = common.make_scorer(classifier_path, base_config, inception_weights)
    programs = {}
    for dtype in DTYPES:
        config = base_config.copy_and_resolve_references()
        config.model.compute_dtype = dtype
        programs[dtype] = common.Programs(config)
    units = common.Units(directory)
    for unit in chosen:
        evaluate_seed(unit["seed"], budget, scorer, programs, units, root, f32_workdir_root, overrides, force,
                      metrics_dir)
    report(directory, command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--f32-workdir-root", default=None,
                        help="the scratch folder of the float32 runs (for their loss curves)")
    parser.add_argument("--metrics-dir", default=None,
                        help="copies <run folder name>.jsonl of runs' metrics.jsonl, "
                             "for runs no longer on disk")


def main(argv: Sequence[str] | None = None) -> None:
    common.main(argv, doc=__doc__, experiment=EXPERIMENT, only_keys=ONLY_KEYS, run=run, report=report,
                add_arguments=add_arguments, run_options=("f32_workdir_root", "metrics_dir"))


if __name__ == "__main__":
    main()
