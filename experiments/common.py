"""What the experiment scripts share: budgets, command-line options, the digits runs they train, samples
scored by classifier-FID, per-unit result files, and the report (JSON, markdown, PNG).

Every script splits its work into *units* (a weighting and a seed, a sampler and a step count, ...), each
recorded in ``<results>/<experiment>/units/<unit>.json`` as soon as an evaluation finishes. A run skips
what its unit files already hold, so an interrupted command (a 10-minute limit, a preemption) resumes
where it stopped, and several commands with ``--only`` slices fill one folder; the report is rebuilt from
all unit files at the end of every command. Unit files remember the settings their numbers depend on
(the training config, the number of samples, the classifier): a command with other settings refuses to
mix its numbers into them (``--force`` recomputes the selected units).

The metric is classifier-FID (:mod:`jdiff.evaluation.classifier`), labelled "classifier-FID (digits)":
the Fréchet distance in the features of a small CNN trained on the digits labels, never comparable with
Inception FID.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jdiff import checkpoint as ckpt_lib  # noqa: E402
from jdiff import data as data_lib  # noqa: E402
from jdiff import samplers, sampling, sharding, train  # noqa: E402
from jdiff.evaluation import classifier, fid, inception  # noqa: E402

DIGITS_CONFIG = os.path.join(REPO_ROOT, "configs", "digits.py")
DEFAULT_CLASSIFIER = os.path.join(REPO_ROOT, "experiments", "results", "classifier", "digits_8x8x1.npz")
CLASSIFIER_SEED, CLASSIFIER_STEPS = 0, 500
WEIGHTINGS = ("constant", "p2", "min_snr", "debias")
SAMPLE_SEED = 0


# --- budgets -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Budget:
    """How much of each experiment to run. ``small`` is a CPU smoke run (minutes, untrained models);
    ``full`` the GPU run. Command-line options override single fields."""

    name: str
    train_steps: int            # optimiser steps of each digits run
    checkpoint_every: int       # the classifier-FID-against-iterations curve has one point per checkpoint
    steps_per_call: int         # optimiser steps per compiled call (fewer host round trips on a GPU)
    seeds: tuple[int, ...]      # training (and sampling) seeds; mean ± std over them
    steps: tuple[int, ...]      # sampling step counts (network evaluations; see heun_levels)
    samplers: tuple[str, ...]   # samplers of the weighting comparison and of Debias + ES
    sweep_samplers: tuple[str, ...]   # samplers of the λ sweep
    curve: str                  # 'sampler:steps' of the curve against training iterations
    num_samples: int            # samples per classifier-FID
    sample_batch: int           # images per compiled sampling call
    lambdas: tuple[float, ...]  # the λ grid (constant ES); includes 1
    search_points: int          # grid points per round of the λ search tool
    search_rounds: int
    delta_images: int           # training images per δ_t evaluation

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUDGETS = {
    "small": Budget(name="small", train_steps=80, checkpoint_every=40, steps_per_call=1, seeds=(0,),
                    steps=(10, 20),
                    samplers=("ddpm", "ddim"), sweep_samplers=("ddpm", "ddim", "heun"), curve="ddpm:10",
                    num_samples=200, sample_batch=200, lambdas=(0.98, 1.0, 1.02, 1.04), search_points=3,
                    search_rounds=2, delta_images=48),
    "full": Budget(name="full", train_steps=6000, checkpoint_every=500, steps_per_call=100, seeds=(0, 1, 2),
                   steps=(20, 50, 100),
                   samplers=("ddpm", "ddim"), sweep_samplers=("ddpm", "ddim", "heun"), curve="ddpm:100",
                   num_samples=2000, sample_batch=2000,
                   lambdas=tuple(float(v) for v in np.round(np.arange(0.97, 1.0501, 0.005), 4)),
                   search_points=5, search_rounds=3, delta_images=1000),
}


def parse_setting(text: str) -> tuple[str, int]:
    """'ddpm:100' → ('ddpm', 100)."""
    try:
        sampler, steps = text.split(":")
        return sampler, int(steps)
    except ValueError:
        raise ValueError(f"a sampling setting is 'sampler:steps' such as 'ddpm:100', got {text!r}") from None


def setting_name(sampler: str, steps: int) -> str:
    return f"{sampler}-{steps}"


# --- command line --------------------------------------------------------------------------------

def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def _words(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def add_common_arguments(parser: argparse.ArgumentParser, only_keys: Sequence[str]) -> None:
    """The options every experiment script takes; ``only_keys`` are what its ``--only`` can slice by."""
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small",
                        help="small: a CPU smoke run of a few minutes; full: the GPU run")
    parser.add_argument("--results", default=None,
                        help="root folder of the results (default experiments/results/<budget>); this script "
                             "writes into <results>/<experiment>/")
    parser.add_argument("--workdir-root", default=None,
                        help="scratch folder for the training runs' checkpoints and the XLA cache "
                             "(default <tmp>/jdiff-experiments); not part of the results")
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                        help="cache of the classifier-FID network (trained there if missing)")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="score with Inception FID instead, with pytorch-fid's weights at PATH "
                             "(.pth or its .npz); its results need their own --results folder")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"run only these units; keys: {', '.join(only_keys)} (repeatable)")
    parser.add_argument("--seeds", type=_ints, default=None, help="override the budget's seeds, e.g. 0,1,2")
    parser.add_argument("--steps", type=_ints, default=None,
                        help="override the budget's sampling step counts, e.g. 20,50,100")
    parser.add_argument("--train-steps", type=int, default=None, help="override the training steps")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="override the checkpoint interval")
    parser.add_argument("--num-samples", type=int, default=None, help="override the samples per score")
    parser.add_argument("--samplers", type=_words, default=None, help="override the samplers, e.g. ddpm,ddim")
    parser.add_argument("--lambdas", type=_floats, default=None, help="override the λ grid, e.g. 0.99,1,1.01")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of configs/digits.py, e.g. training.batch_size=128 "
                             "(repeatable)")
    parser.add_argument("--force", action="store_true", help="recompute the selected units")


def budget_from_args(args: argparse.Namespace) -> Budget:
    budget = BUDGETS[args.budget]
    overrides = dict(seeds=args.seeds, steps=args.steps, train_steps=args.train_steps,
                     checkpoint_every=args.checkpoint_every, num_samples=args.num_samples,
                     samplers=args.samplers, lambdas=args.lambdas)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "samplers" in overrides:
        overrides["sweep_samplers"] = overrides["samplers"]
    budget = dataclasses.replace(budget, **overrides)
    if budget.train_steps % budget.checkpoint_every:
        raise ValueError(f"train steps {budget.train_steps} must be a multiple of the checkpoint interval "
                         f"{budget.checkpoint_every}")
    if 1.0 not in budget.lambdas:
        raise ValueError(f"the λ grid {budget.lambdas} must include 1 (no Epsilon Scaling)")
    return budget


def parse_only(items: Sequence[str], keys: Sequence[str]) -> dict[str, set[str]]:
    """``["weighting=debias,p2", "seed=0"]`` → {"weighting": {"debias", "p2"}, "seed": {"0"}}."""
    only: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values or key not in keys:
            raise ValueError(f"--only {item!r} must be KEY=V1,V2 with KEY one of {list(keys)}")
        only.setdefault(key, set()).update(values.split(","))
    return only


def selected(only: Mapping[str, set[str]], **fields: Any) -> bool:
    return all(str(value) in only[key] for key, value in fields.items() if key in only)


def select_units(only: Mapping[str, set[str]],
                 candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The candidate units (dicts of their keys) that ``--only`` selects; ValueError if it selects none."""
    chosen = [c for c in candidates if selected(only, **c)]
    if not chosen:
        values = {key: sorted({str(c[key]) for c in candidates}) for key in (candidates or [{}])[0]}
        raise ValueError(f"--only {dict(only)} selects none of this budget's units (they have {values})")
    return chosen


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.batch_size=128"]`` → {"training.batch_size": 128} (Python literals, else text)."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} must be KEY=VALUE, e.g. training.batch_size=128")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def results_dir(args: argparse.Namespace, experiment: str) -> str:
    root = args.results or os.path.join(REPO_ROOT, "experiments", "results", args.budget)
    return os.path.join(root, experiment)


def workdir_root(args: argparse.Namespace) -> str:
    return args.workdir_root or os.path.join(tempfile.gettempdir(), "jdiff-experiments")


def set_up(args: argparse.Namespace) -> None:
    """INFO logging to stdout (orbax's chatter filtered) and a persistent XLA compilation cache in the
    scratch folder, so a second command on the same machine does not compile the same programs again."""
    from jdiff.metrics import configure_logging

    root = workdir_root(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    configure_logging(root)
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


# --- digits runs ---------------------------------------------------------------------------------

def load_config_file(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def digits_config(weighting: str, seed: int, budget: Budget,
                  overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """configs/digits.py with ``weighting``, ``seed``, the budget's steps, steps per call and checkpoints
    (all kept), no sample grids, then ``overrides`` ({"section.key": value})."""
    config = load_config_file(DIGITS_CONFIG)
    config.seed = seed
    config.diffusion.weighting = weighting
    config.training.num_steps = budget.train_steps
    config.training.checkpoint_every = budget.checkpoint_every
    config.training.steps_per_call = budget.steps_per_call
    # every point of the curve, whatever else is saved
    config.training.keep_every = budget.checkpoint_every
    config.training.sample_every = 0
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ValueError(f"--set {key}: config.{'.'.join(parents)} has no key {leaf!r}; its keys: "
                             f"{sorted(node.keys())}")
        node[leaf] = value
    return config


# Training keys that change how a run is logged, saved or dispatched, not the parameters it reaches.
BOOKKEEPING = ("log_every", "checkpoint_every", "keep_checkpoints", "keep_every", "sample_every",
               "num_grid_samples", "steps_per_call")


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A short digest of everything that shapes a trained run (data, model, diffusion, training without
    its bookkeeping keys, seed)."""
    relevant = {k: json.loads(config[k].to_json()) for k in ("data", "model", "diffusion", "training")}
    relevant["training"] = {k: v for k, v in relevant["training"].items() if k not in BOOKKEEPING}
    relevant["seed"] = config.seed
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


def run_workdir(root: str, config: ml_collections.ConfigDict) -> str:
    return os.path.join(root, "runs", f"{config.diffusion.weighting}_seed{config.seed}_{config_hash(config)}")


def checkpoint_steps(workdir: str) -> list[int]:
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return []
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return checkpointer.all_steps()
    finally:
        checkpointer.close()


def ensure_trained(config: ml_collections.ConfigDict, workdir: str) -> list[int]:
    """Trains (or finishes) the run in ``workdir``; returns its checkpoint steps."""
    if config.training.num_steps not in checkpoint_steps(workdir):
        start = time.perf_counter()
        status = train.train_and_evaluate(config, workdir)
        if status != "finished":
            raise RuntimeError(f"training in {workdir} stopped ({status}); run the command again to resume")
        logging.info("trained %s in %.0f s", workdir, time.perf_counter() - start)
    return checkpoint_steps(workdir)


# --- sampling and scoring ------------------------------------------------------------------------

def heun_levels(steps: int) -> int:
    """The EDM noise levels of a Heun chain with at most ``steps`` network evaluations (2·levels − 1)."""
    return (steps + 1) // 2


def with_sampler(config: ml_collections.ConfigDict, sampler: str, steps: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` sampling with ``sampler`` on ``steps`` network evaluations, DDIM with
    η = 0, x̂₀ clipped as ADM samples, and the seed :data:`SAMPLE_SEED`: every model is scored on the same
    noise (the training seed varies the model only), and runs that differ in their seed share the
    compiled sampler (the seed's key is a constant of the program)."""
    config = config.copy_and_resolve_references()
    config.seed = SAMPLE_SEED
    config.sampling.sampler = sampler
    # Heun's network evaluations per noise level are two (one on the last), so it runs on (steps + 1) // 2
    # EDM levels: 2·levels − 1 <= steps evaluations, the same cost as the other samplers' `steps`.
    config.sampling.respacing = str(heun_levels(steps) if sampler == "heun" else steps)
    config.sampling.eta = 0.0
    config.sampling.eps_scaling = "none"
    return config


def _program_key(config: ml_collections.ConfigDict) -> str:
    """What a compiled sampler depends on: not the loss weighting (runs that differ only in it share it)."""
    d, s = config.diffusion, config.sampling
    return json.dumps(dict(seed=config.seed, schedule=d.schedule, T=d.num_timesteps, target=d.target,
                           variance=d.variance, sampler=s.sampler, respacing=s.respacing,
                           clip=s.clip_denoised, eta=s.eta, data=json.loads(config.data.to_json())),
                      sort_keys=True)


class Programs:
    """Compiled samplers and exposure-bias functions of one model, built once per sampling setting and
    reused for every checkpoint, weighting and λ (λ is an argument of the compiled functions)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.model = train.build_model(config)
        self.mesh = sharding.make_mesh()
        self._generate: dict[str, Any] = {}
        self._delta: dict[str, Any] = {}

    def restore(self, config: ml_collections.ConfigDict, workdir: str, step: int | None) -> tuple[Any, int]:
        """The EMA parameters of checkpoint ``step`` (None: the latest) of ``workdir``, and its step."""
        params, restored = train.restore_ema_params(workdir, config, self.model, self.mesh, step=step)
        if step is not None and restored != step:
            raise RuntimeError(f"asked for checkpoint {step} of {workdir}, got {restored}")
        return params, restored

    def images(self, config: ml_collections.ConfigDict, params: Any, indices: np.ndarray,
               eps_scaling: samplers.EpsScaling | None, batch: int) -> np.ndarray:
        """uint8 samples with these global indices (image n's noise depends on n and the seed only),
        ``batch`` per call, the last call padded so that every call has the same shape."""
        key = _program_key(config)
        if key not in self._generate:
            self._generate[key] = sampling.make_generate_fn(config, self.model, self.mesh)
        generate_fn = self._generate[key]
        batch = -(-min(batch, len(indices)) // self.mesh.size) * self.mesh.size
        parts = []
        for start in range(0, len(indices), batch):
            chunk = np.asarray(indices[start:start + batch], np.int32)
            padded = np.concatenate([chunk, np.full(batch - len(chunk), chunk[-1], np.int32)])
            parts.append(sampling.generate(config, self.model, params, padded, self.mesh, generate_fn,
                                           eps_scaling=eps_scaling)[:len(chunk)])
        return np.concatenate(parts)

    def exposure_bias_fn(self, config: ml_collections.ConfigDict, batch: int) -> Callable[..., Any]:
        """:func:`jdiff.evaluation.exposure_bias.make_exposure_bias_fn` for the config's sampler."""
        from jdiff.evaluation import exposure_bias

        key = _program_key(config) + f"/{batch}"
        if key not in self._delta:
            schedule, options = sampling.sampler_settings(config)

            def apply_fn(variables, x, t, y):
                return self.model.apply({"params": variables}, x, t, y, train=False)

            self._delta[key] = exposure_bias.make_exposure_bias_fn(
                apply_fn, schedule, mesh=self.mesh, seed=config.seed, batch_size=batch, **options)
        return self._delta[key]


@dataclasses.dataclass(frozen=True)
class Scorer:
    """classifier-FID of uint8 images against the whole digits set, and what it is."""

    name: str
    feature_fn: fid.FeatureFn
    reference: fid.Statistics
    info: dict[str, Any]

    def __call__(self, images: np.ndarray) -> float:
        return classifier.classifier_fid(images, self.reference, self.feature_fn)


def make_scorer(path: str, config: ml_collections.ConfigDict,
                inception_weights: str | None = None) -> Scorer:
    """classifier-FID (digits): the classifier cached at ``path`` (trained there on the first call), the
    reference statistics of all digits at the config's resolution, and, as a yardstick, the score of the
    classifier's held-out real digits against that reference. With ``inception_weights`` (pytorch-fid's
    ``.pth`` or its ``.npz``), Inception FID instead: the same reference and yardstick in the pool3
    features of the FID Inception (digits upsampled to 299×299, grey repeated to RGB)."""
    d = config.data
    dataset = data_lib.load_dataset(d.name, split=d.split, image_size=d.image_size, channels=d.channels)
    if inception_weights:
        return _inception_scorer(inception_weights, dataset, d.image_size)
    trained = classifier.load_or_train_classifier(path, dataset, seed=CLASSIFIER_SEED, steps=CLASSIFIER_STEPS)
    feature_fn = classifier.make_classifier_feature_fn(trained)
    reference = classifier.reference_statistics(dataset.images, feature_fn)
    _, held = classifier.holdout_split(len(dataset), trained.settings["holdout_fraction"], CLASSIFIER_SEED)
    real = classifier.classifier_fid(dataset.images[held], reference, feature_fn)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    info = dict(metric=classifier.metric_name(dataset.name), classifier=os.path.relpath(path, REPO_ROOT),
                classifier_sha256=digest, classifier_heldout_accuracy=trained.settings["heldout_accuracy"],
                reference=f"all {len(dataset)} {dataset.name} images at {d.image_size}x{d.image_size}",
                real_heldout_score=real, real_heldout_images=len(held))
    return Scorer(classifier.metric_name(dataset.name), feature_fn, reference, info)


def _inception_scorer(weights: str, dataset: data_lib.ArrayDataset, image_size: int) -> Scorer:
    # Each call pads to the batch: no larger than the data set, so small sets stay cheap.
    batch = sharding_batch(min(200, len(dataset)))
    feature_fn = fid.make_feature_fn(inception.load_inception_params(weights), batch_size=batch)
    reference = fid.statistics(feature_fn(dataset.images)[0])
    _, held = classifier.holdout_split(len(dataset), 0.2, CLASSIFIER_SEED)
    real = classifier.classifier_fid(dataset.images[held], reference, feature_fn)
    with open(weights, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    metric = f"Inception FID ({dataset.name})"
    info = dict(metric=metric, classifier=os.path.abspath(weights), classifier_sha256=f"inception-{digest}",
                reference=f"all {len(dataset)} {dataset.name} images at {image_size}x{image_size}",
                real_heldout_score=real, real_heldout_images=len(held),
                description="the Fréchet distance in the 2048-d pool3 features of pytorch-fid's InceptionV3 "
                            f"(weights sha256 {digest}…; images upsampled to 299×299, grey repeated to RGB)")
    return Scorer(metric, feature_fn, reference, info)


def sharding_batch(batch: int) -> int:
    """``batch`` rounded up to a multiple of the device count (a feature batch is split over devices)."""
    return -(-batch // jax.device_count()) * jax.device_count()


def memoised(cache: dict[str, float], fn: Callable[[float], float]) -> Callable[[float], float]:
    """``fn(λ)`` remembered in ``cache`` (keys: λ to 9 decimals), so the grid and the search tool share
    evaluations, and a resumed run repeats none."""
    def call(value: float) -> float:
        key = f"{value:.9f}"
        if key not in cache:
            cache[key] = float(fn(value))
        return cache[key]

    return call


# --- unit files ----------------------------------------------------------------------------------

class Units:
    """``<directory>/units/<name>.json``: one dict per unit, written atomically after each change. A
    record's ``seconds`` adds up the wall time from :meth:`open` to each :meth:`save` (training included)
    over every command that worked on it: what a unit costs, to plan slices of the GPU runs."""

    def __init__(self, directory: str):
        self.directory = os.path.join(directory, "units")
        self._clock: dict[str, float] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.json")

    def open(self, name: str, signature: Mapping[str, Any], force: bool) -> dict[str, Any]:
        """The record of unit ``name``: the stored one when its ``signature`` (the settings its numbers
        depend on) matches, a fresh one with ``force`` or when none is stored; otherwise ValueError."""
        signature = json.loads(json.dumps(signature))
        if os.path.exists(self.path(name)) and not force:
            with open(self.path(name)) as f:
                record = json.load(f)
            if record.get("signature") != signature:
                changed = sorted(k for k in set(signature) | set(record.get("signature", {}))
                                 if signature.get(k) != record.get("signature", {}).get(k))
                raise ValueError(f"{self.path(name)} holds results made with other settings ({changed}); "
                                 "use another --results folder, or --force to recompute this unit")
        else:
            record = dict(signature=signature)
        self._clock[name] = time.perf_counter()
        return record

    def save(self, name: str, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        record["seconds"] = record.get("seconds", 0.0) + now - self._clock.get(name, now)
        self._clock[name] = now
        os.makedirs(self.directory, exist_ok=True)
        temporary = self.path(name) + ".tmp"
        with open(temporary, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(temporary, self.path(name))

    def all(self) -> dict[str, dict[str, Any]]:
        if not os.path.isdir(self.directory):
            return {}
        records = {}
        for file in sorted(os.listdir(self.directory)):
            if file.endswith(".json"):
                with open(os.path.join(self.directory, file)) as f:
                    records[file[:-5]] = json.load(f)
        return records


# --- reports -------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    """Where and how a unit was computed: device, versions, time and the command line."""
    import flax

    device = jax.devices()[0]
    return dict(backend=jax.default_backend(), device=getattr(device, "device_kind", str(device)),
                device_count=jax.device_count(), cpu_count=os.cpu_count(), jax=jax.__version__,
                flax=flax.__version__, python=platform.python_version(),
                time=datetime.datetime.now().isoformat(timespec="seconds"), command=command_line())


def header(title: str, records: Sequence[Mapping[str, Any]], report_command: str) -> list[str]:
    """The top of a report from its unit records: what ran, where, with which budget and metric, and
    whether the numbers mean anything."""
    budgets = list({json.dumps(r["budget"], sort_keys=True): r["budget"] for r in records}.values())
    devices = sorted({f"{e['device']} × {e['device_count']} ({e['backend']}), jax {e['jax']}"
                      for e in (r["environment"] for r in records)})
    commands = sorted({r["environment"]["command"] for r in records})
    scorer_info = records[0]["scorer"]
    seconds = [r.get("seconds", 0.0) for r in records]
    lines = [f"# {title}", ""]
    if any(b["name"] == "small" for b in budgets):
        lines += ["**Smoke run (budget `small`): it checks that the script runs end to end. The models are "
                  "trained for a few dozen steps and scored on a few hundred samples: these numbers are not "
                  "findings.**", ""]
    for b in budgets:
        lines.append(f"- budget `{b['name']}`: {b['train_steps']} training steps, checkpoints every "
                     f"{b['checkpoint_every']}, {b['num_samples']} samples per score, sampling steps "
                     f"{list(b['steps'])}")
    lines += [f"- computed on: {'; '.join(devices)}",
              f"- metric: **{scorer_info['metric']}**, {_scorer_description(scorer_info)}, against "
              f"{scorer_info['reference']}; it compares only with itself at the same sample count. "
              f"Yardstick: {scorer_info['real_heldout_images']} held-out real digits score "
              f"{scorer_info['real_heldout_score']:.3g}.",
              "- computed by: " + "; ".join(f"`{c}`" for c in commands),
              f"- wall time of the units (training included): {sum(seconds):.0f} s in all, "
              f"{max(seconds):.0f} s the longest",
              f"- report built by: `{report_command}`", ""]
    return lines


def _scorer_description(info: Mapping[str, Any]) -> str:
    if "description" in info:       # Inception FID
        return info["description"]
    return ("the Fréchet distance in the 64-d features of a small CNN trained on the digits labels (held-out "
            f"accuracy {info['classifier_heldout_accuracy']:.3f}; `{info['classifier']}`), not Inception FID")


def is_smoke_report(records: Sequence[Mapping[str, Any]]) -> bool:
    return any(r["budget"]["name"] == "small" for r in records)


def main(argv: Sequence[str] | None, *, doc: str, experiment: str, only_keys: Sequence[str],
         run: Callable[..., None], report: Callable[[str, str], None],
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         run_options: Sequence[str] = ()) -> None:
    """The command line every experiment script shares: the common options (plus ``add_arguments``'s),
    ``--report-only`` (rebuild the report from the unit files), else ``run(budget, directory, root,
    classifier, only, overrides, force, command, inception_weights=…, **{option: value for option in
    run_options})``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, only_keys)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the unit files")
    args = parser.parse_args(argv)
    budget = budget_from_args(args)
    directory = results_dir(args, experiment)
    if args.report_only:
        report(directory, command_line())
        return
    set_up(args)
    run(budget, directory, workdir_root(args), args.classifier, parse_only(args.only, only_keys),
        parse_overrides(args.set), args.force, command_line(), inception_weights=args.inception_weights,
        **{name: getattr(args, name) for name in run_options})


def command_line() -> str:
    return " ".join(["python", os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:])


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    values = np.asarray(list(values), np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


def format_number(value: float) -> str:
    """Four significant digits, without exponents below 10⁵."""
    return f"{value:.0f}" if 1e3 <= abs(value) < 1e5 else f"{value:.4g}"


def format_mean_std(values: Sequence[float], bold: bool = False) -> str:
    if not len(values):
        return "–"
    mean, std, n = mean_std(values)
    text = f"{format_number(mean)} ± {format_number(std)} (n={n})" if n > 1 else format_number(mean)
    return f"**{text}**" if bold else text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_report(directory: str, name: str, markdown: Sequence[str], results: Mapping[str, Any]) -> None:
    """``<directory>/<name>.md`` and ``<name>.json``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write("\n".join(markdown) + "\n")
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    logging.info("wrote %s/%s.{md,json}", directory, name)


def save_figure(fig: Any, path: str, smoke: bool) -> None:
    """Writes a report's figure to ``path`` (a smoke run's marked as such in red) and closes it."""
    plt = pyplot()
    if smoke:
        fig.suptitle("SMOKE RUN (budget small): not a finding", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
