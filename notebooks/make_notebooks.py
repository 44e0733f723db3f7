"""Writes the notebooks of this folder (``quickstart.ipynb``, ``library.ipynb``) from the cell texts below.

Edit the cells here and run ``python notebooks/make_notebooks.py``; the notebooks are committed without
outputs, and ``tests/test_notebooks.py`` checks that they are what this script writes and runs them with
``BUDGET = "small"``. Each notebook has one code cell tagged ``parameters`` (papermill's convention); a
cell placed after it can override its values, which is how the test makes the runs small.
"""

from __future__ import annotations

import os
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

# The address a notebook clones when it does not run inside a checkout (Colab). A placeholder: replace
# OWNER here, or set REPO_URL in the notebook's parameters cell, to the repository that holds this file.
REPO_URL = "https://github.com/OWNER/jdiff"

PARAMETERS_MD = """
## Parameters

`BUDGET = "full"` is the run this notebook is about; `"small"` makes every step tiny (a smoke run of
well under a minute, for CI): its results say nothing about the methods. `CHECKOUT` and `REPO_URL` say
where jdiff comes from (next section).
"""

PARAMETERS_CHECKOUT = f'''\
CHECKOUT = None   # a jdiff checkout to use; None: the nearest one at or above the working directory
REPO_URL = "{REPO_URL}"  # cloned when there is no checkout (Colab); a placeholder, see below
'''

INSTALL_MD = """
## Install

Inside a checkout of jdiff (the notebook opened from `notebooks/`, after `pip install -e ".[test]"`, or
`".[offline]"` plus `matplotlib`), the next cell uses that checkout and installs nothing: it takes
`CHECKOUT`, or looks for the checkout from the working directory upwards.

Anywhere else (Colab), it clones the repository at `REPO_URL` and runs
`pip install "<clone>[offline]" matplotlib`; the clone also provides the `configs/` folder, which is
not part of the installed package. **`REPO_URL` is a placeholder**: set it to the address of the jdiff
repository this notebook came from (the `https://…` you would pass to `git clone`). On Colab, if
something had imported JAX before this cell, restart the session after it (Runtime → Restart session)
so that the JAX that jdiff needs is the one imported.
"""

INSTALL_CODE = '''
import pathlib
import subprocess
import sys


def is_checkout(folder: pathlib.Path) -> bool:
    return (folder / "jdiff" / "__init__.py").is_file() and (folder / "pyproject.toml").is_file()


def find_checkout(start: pathlib.Path) -> pathlib.Path | None:
    """The nearest folder at or above ``start`` that holds a jdiff checkout."""
    return next((folder for folder in (start, *start.parents) if is_checkout(folder)), None)


ROOT = pathlib.Path(CHECKOUT).resolve() if CHECKOUT else find_checkout(pathlib.Path.cwd().resolve())
if ROOT is not None and not is_checkout(ROOT):
    raise ValueError(f"CHECKOUT = {CHECKOUT!r} is not a jdiff checkout")
if ROOT is None:
    if "OWNER" in REPO_URL:
        raise ValueError("this notebook is not inside a jdiff checkout: set REPO_URL to the address of "
                         "the jdiff repository so that it can be cloned and installed")
    ROOT = pathlib.Path("jdiff-repo").resolve()
    if not ROOT.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(ROOT)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{ROOT}[offline]", "matplotlib"],
                   check=True)
else:
    sys.path.insert(0, str(ROOT))  # this checkout's jdiff, even where another version is installed
print(f"jdiff from {ROOT}")
'''

QUICKSTART = [
    ("markdown", """
# jdiff quickstart: train, sample, Epsilon Scaling, exposure bias

This notebook trains the small offline model of `configs/digits.py` (scikit-learn's 1,797 handwritten
digits at their native 8×8, shipped with the package: no download), with the **Debias** loss weight
1/√SNR (Yu et al., arXiv 2310.08442), then

1. picks an **Epsilon Scaling** λ (Ning et al., ICLR 2024) by the smallest summed exposure bias Σ_t δ_t,
2. samples the same noise without and with Epsilon Scaling and shows both grids (a search by Σδ_t is cheap
   but is not the paper's criterion, FID, and need not find the λ that gives the best samples: in
   `docs/experiments.md` the two disagree on these digits),
3. plots the exposure bias δ_t along the sampling chain, without and with Epsilon Scaling.

With `BUDGET = "full"` the whole notebook took 14 minutes on a 2-core CPU shared with other jobs: 9 to
train (1,500 steps), 3 for the λ search, 2 for the grids and δ_t. Everything is written to `WORKDIR`
(checkpoints, TensorBoard logs, `metrics.jsonl`, sample grids, the λ search report, δ_t results); running
the notebook again resumes from the checkpoints there.
"""),
    ("markdown", PARAMETERS_MD),
    ("parameters", '''
BUDGET = "full"   # "full" or "small"
WORKDIR = None    # None: <temporary folder>/jdiff-quickstart-<BUDGET>
''' + PARAMETERS_CHECKOUT),
    ("markdown", INSTALL_MD),
    ("code", INSTALL_CODE),
    ("markdown", """
## The config

`configs/digits.py` is an ordinary jdiff config (ml-collections): the same file that
`python -m jdiff.main --config=configs/digits.py --workdir=DIR` trains from the command line. Any value
can be changed before training, as `--config.training.num_steps=…` does on the command line.
"""),
    ("code", '''
import importlib.util
import logging
import os
import sys
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from jdiff import sampling, samplers, sharding, train
from jdiff.evaluation import exposure_bias, lambda_search
from jdiff.images import make_grid
from jdiff.metrics import configure_logging, read_metrics


def load_config(path):
    """``get_config()`` of a config file, as ``--config=path`` loads it."""
    spec = importlib.util.spec_from_file_location("jdiff_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def show(fig):
    """Displays a figure explicitly: jdiff's report functions switch matplotlib to its file backend,
    after which ``plt.show()`` would show nothing."""
    display(fig)
    plt.close(fig)


if BUDGET not in ("full", "small"):
    raise ValueError(f"BUDGET must be 'full' or 'small', got {BUDGET!r}")
config = load_config(ROOT / "configs" / "digits.py")
if BUDGET == "small":
    # A smoke run: a one-level UNet without attention, 20 steps, 10 sampling steps.
    config.model.channel_mult = (1,)
    config.model.attention_resolutions = ()
    config.training.update(dict(num_steps=20, batch_size=16, warmup_steps=5, log_every=10,
                                checkpoint_every=20, sample_every=0))
    config.sampling.respacing = "10"
NUM_SAMPLES = 64 if BUDGET == "full" else 16   # images per grid
NUM_IMAGES = 256 if BUDGET == "full" else 16   # training images that start the δ_t chains
WORKDIR = WORKDIR or os.path.join(tempfile.gettempdir(), f"jdiff-quickstart-{BUDGET}")
print(f"WORKDIR = {WORKDIR}")
print(f"weighting {config.diffusion.weighting}, {config.diffusion.schedule} schedule, "
      f"{config.training.num_steps} steps of batch {config.training.batch_size}, "
      f"sampler {config.sampling.sampler} on {config.sampling.respacing} steps")
'''),
    ("markdown", """
## Train

`train.train_and_evaluate(config, workdir)` is what `--mode=train` runs: the jitted train step sharded
over every device, EMA, checkpoints every `training.checkpoint_every` steps (and a grid of EMA samples
every `training.sample_every`), resuming from the latest checkpoint in `WORKDIR`. It returns
`"finished"` (or `"preempted"` after SIGTERM). The loss is logged every `training.log_every` steps, also per
quarter of t: the Debias weight spans 0.01 (t = 0) to 157 (t = 999) on this linear schedule, but the
ε-MSE it multiplies shrinks as the noise grows, and the four weighted quarters end up of the same order.
"""),
    ("code", '''
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True)
configure_logging(WORKDIR)  # quiets orbax's INFO lines and copies the log to WORKDIR/log.txt
status = train.train_and_evaluate(config, WORKDIR)
print(status)

metrics = read_metrics(WORKDIR)
steps = [m["step"] for m in metrics]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(steps, [m["loss"] for m in metrics], color="black", label="batch mean")
for q in range(4):
    ax.plot(steps, [m.get(f"loss_q{q}", np.nan) for m in metrics], marker=".",
            label=f"t in quarter {q} (0 = least noisy)")
ax.set(xlabel="training step", ylabel="weighted loss", yscale="log", title="training loss")
ax.legend(fontsize="small")
show(fig)
'''),
    ("markdown", """
## Which λ? A search by the exposure bias

Epsilon Scaling divides the network's ε̂ by λ (slightly above 1 when the network over-predicts the noise
along sampling) wherever the sampler forms x̂₀. The best λ depends on the model and the number of
sampling steps. `lambda_search.search_lambda` (also `python -m jdiff.evaluation.lambda_search`) searches
it coarse-to-fine; with `score="delta"` each λ is scored by Σ_t δ_t, jdiff's exposure bias (the spread
of the sampled x̂_t against the spread of the training inputs x_t at the same level, see below), from
chains started at training images. It is much cheaper than scoring by FID, which is the paper's
criterion (`score="fid"`, with Inception weights and a reference set). Every λ runs on the same noise,
so the score is smooth in λ. The report (table, JSON, plot) is written to `WORKDIR/lambda_search/`.
"""),
    ("code", '''
search = lambda_search.search_lambda(
    config, WORKDIR, score="delta", bounds={"b": (0.98, 1.04)}, num_images=NUM_IMAGES,
    batch_size=NUM_IMAGES, num_points=5 if BUDGET == "full" else 3, rounds=3 if BUDGET == "full" else 1)
for evaluation in sorted(search.evaluations, key=lambda e: e.params["b"]):
    print(f"λ = {evaluation.params['b']:.4f}: Σδ_t = {evaluation.score:.4g}")
LAMBDA = search.best.params["b"]
print(f"best λ = {LAMBDA:.4f}" + ("  (on the edge of the range: widen it)"
                                   if lambda_search.at_edge(search, {"b": (0.98, 1.04)}) else ""))
'''),
    ("markdown", """
## Samples without and with Epsilon Scaling

`sampling.make_generate_fn` compiles the config's sampler once, with λ as an argument of the compiled
function, so trying another λ does not recompile. Image n's noise depends on its index n only: both
grids start from the same noise and differ by Epsilon Scaling alone.
"""),
    ("code", '''
mesh = sharding.make_mesh()
model = train.build_model(config)
params, step = train.restore_ema_params(WORKDIR, config, model, mesh)
generate_fn = sampling.make_generate_fn(config, model, mesh)
indices = np.arange(NUM_SAMPLES)
grids = {
    "no Epsilon Scaling": sampling.generate(config, model, params, indices, mesh, generate_fn),
    f"Epsilon Scaling, λ = {LAMBDA:.4g}": sampling.generate(
        config, model, params, indices, mesh, generate_fn, eps_scaling=samplers.EpsScaling.constant(LAMBDA)),
}
fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
for ax, (title, images) in zip(axes, grids.items()):
    ax.imshow(make_grid(images)[..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"{title}\\n(EMA, step {step}, {config.sampling.sampler}, {config.sampling.respacing} steps)")
    ax.axis("off")
show(fig)
first, second = grids.values()
print(f"mean |difference| per pixel: {np.abs(first.astype(float) - second.astype(float)).mean():.3f} of 255")
'''),  # noqa: E501
    ("markdown", """
## Exposure bias δ_t, without and with Epsilon Scaling

`exposure_bias.exposure_bias_for_checkpoint` runs the authors' procedure: noise training images to the
first sampling level, run the sampler, and after every step compare the sampled x̂_t with what training
feeds the network at that level. It reports two variance errors per step:

- **jdiff's δ_t** = (std x̂_t − std x_t)², the spread of the sampled inputs against the spread of the
  training inputs at the same level: what Epsilon Scaling acts on, and what the λ search above minimised;
- **the authors' δ_t** = (std(x̂_t − √ᾱ_t x₀) − √(1 − ᾱ_t))², paired with the image each chain started
  from. Most of it is a floor that every sampler has, even with a perfect network (a chain started at
  the noisiest level cannot come back to its own x₀), so it barely moves with λ: see the docstring of
  `jdiff/evaluation/exposure_bias.py`.

The third panel is the authors' other diagnostic: the norm of ε̂/λ along sampling against the norm of ε̂
at training inputs of the same level. The plot and a JSON of every number are written to
`WORKDIR/exposure_bias/`.
"""),
    ("code", '''
eps_scalings = {"no ES": samplers.EpsScaling.constant(1.0),  # λ = 1: the unscaled sampler, bit for bit
                f"ES λ={LAMBDA:.4g}": samplers.EpsScaling.constant(LAMBDA)}
results = exposure_bias.exposure_bias_for_checkpoint(config, WORKDIR, NUM_IMAGES, eps_scalings=eps_scalings,
                                                     batch_size=NUM_IMAGES)
for label, result in results.items():
    print(f"{label:>12}: Σδ_t = {result.delta.sum():.4g} (jdiff's), {result.delta_paired.sum():.4g} (authors')")
display(Image(filename=os.path.join(WORKDIR, "exposure_bias", sampling.run_name(config, step) + ".png")))
'''),  # noqa: E501
    ("markdown", """
## Next

- The same steps from the command line: `python -m jdiff.main --config=configs/digits.py --workdir=DIR`
  (train), `--mode=sample` (`sampling.num_samples` images to `.npz` shards), `--mode=eval` (FID),
  `python -m jdiff.evaluation.lambda_search` and `python -m jdiff.evaluation.exposure_bias`.
- `notebooks/library.ipynb`: jdiff's schedules, loss weights and samplers with a network of your own.
- `docs/experiments.md`: what Debias and Epsilon Scaling do on these digits (classifier-FID, 3 training
  seeds for the headline rows), each experiment one command.
"""),
]

LIBRARY = [
    ("markdown", """
# jdiff as a library: your network, jdiff's schedule, loss weight and samplers

jdiff's numerical pieces are pure functions of arrays: they need no config, no UNet and no training loop.
This notebook writes a small ε-prediction network in Flax for 2-D data (a mixture of eight Gaussians on
a circle) and uses

- `schedules.make_schedule` for the training and the respaced sampling schedules,
- `weighting.loss_weight` and `losses.diffusion_loss` for the Debias-weighted loss,
- `samplers.sample(..., eps_scaling=samplers.EpsScaling.constant(λ))` for DDPM and DPM-Solver++ with and
  without Epsilon Scaling.

The network is called as `model_fn(x, t)` with `t` the **original** integer timestep (0 … T − 1) of each
example, also when the sampler runs a respaced chain, so a network trained on T = 1000 steps is sampled on
any number of steps without change. Arrays are batch-first; images would be NHWC, here x is (B, 2).
"""),
    ("markdown", PARAMETERS_MD),
    ("parameters", '''
BUDGET = "full"   # "full" or "small"
''' + PARAMETERS_CHECKOUT),
    ("markdown", INSTALL_MD),
    ("code", INSTALL_CODE),
    ("markdown", """
## Schedules

`make_schedule(name, T)` is the training schedule (every table in float64, then cast once);
`make_schedule(name, T, respacing)` the sampling chain of guided-diffusion's respacing, indexed by the
respaced step i = 0 … N − 1 (i = 0 the least noisy), with `schedule.timesteps[i]` the original timestep
the network sees.
"""),
    ("code", '''
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import display

from jdiff import losses, samplers, schedules, weighting


def show(fig):
    display(fig)
    plt.close(fig)


if BUDGET not in ("full", "small"):
    raise ValueError(f"BUDGET must be 'full' or 'small', got {BUDGET!r}")
T = 1000
train_schedule = schedules.make_schedule("linear", T)
sample_schedule = schedules.make_schedule("linear", T, "20")
print("respaced chain: original timesteps", np.asarray(sample_schedule.timesteps))

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(T), np.asarray(train_schedule.snr), label="training schedule (T = 1000)")
ax.plot(np.asarray(sample_schedule.timesteps), np.asarray(sample_schedule.snr), "o",
        label="respaced to 20 steps")
ax.set(yscale="log", xlabel="original timestep t", ylabel="SNR = ᾱ / (1 − ᾱ)", title="linear schedule")
ax.legend()
show(fig)
'''),
    ("markdown", """
## Loss weights

`weighting.loss_weight(name, snr, target)` is the weight on the per-example MSE of the network's target
(`eps`, `x0` or `v`). Every weighting but `constant` is defined on the ε-MSE and converted for the other
targets so that the objective is the same function of the ε error (see the docstring of
`jdiff/weighting.py`). Debias is 1/√SNR on the ε-MSE: large where the input is mostly noise (157 at
t = T − 1 on this schedule), small near the data (0.01 at t = 0).
"""),
    ("code", '''
snr = train_schedule.snr
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in weighting.WEIGHTINGS:
    ax.plot(np.arange(T), np.asarray(weighting.loss_weight(name, snr, "eps")), label=name)
ax.set(yscale="log", xlabel="timestep t", ylabel="weight on the ε-MSE", title="loss weights, linear schedule")
ax.legend()
show(fig)
'''),
    ("markdown", """
## Data and a network of your own

Eight Gaussians (std 0.05) on a circle of radius 0.6: inside [−1, 1], where the samplers clip x̂₀ by
default. The network is a plain MLP on (x, a sinusoidal embedding of t).
"""),
    ("code", '''
CENTRES = 0.6 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1)


def draw_data(key, n):
    which = jax.random.randint(key, (n,), 0, len(CENTRES))
    return jnp.asarray(CENTRES)[which] + 0.05 * jax.random.normal(jax.random.fold_in(key, 1), (n, 2))


class EpsMLP(nn.Module):
    """ε̂(x, t) for 2-D x and integer timesteps t."""

    width: int = 128

    @nn.compact
    def __call__(self, x, t):
        frequencies = jnp.exp(-jnp.log(1000.0) * jnp.arange(16) / 16)
        angles = t[:, None].astype(jnp.float32) * frequencies
        h = jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=-1)
        for _ in range(3):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(h)


model = EpsMLP()
params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))
print(sum(p.size for p in jax.tree.leaves(params)), "parameters")
'''),
    ("markdown", """
## Training with the Debias weight

`losses.diffusion_loss(model_fn, schedule, x0, t, noise, ...)` takes explicit steps t and noise, so the
training step is a pure function of the parameters, the batch and a key, and jits as it is. It returns
the per-example loss and its terms; the mean is the objective.
"""),
    ("code", '''
STEPS = 3000 if BUDGET == "full" else 50
BATCH = 512 if BUDGET == "full" else 64
optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, STEPS))


@jax.jit
def train_step(params, opt_state, key):
    key_data, key_t, key_noise = jax.random.split(key, 3)
    x0 = draw_data(key_data, BATCH)
    t = jax.random.randint(key_t, (BATCH,), 0, T)      # indices of the un-respaced training schedule
    noise = jax.random.normal(key_noise, x0.shape)

    def objective(params):
        model_fn = functools.partial(model.apply, params)
        per_example, _ = losses.diffusion_loss(model_fn, train_schedule, x0, t, noise, target="eps",
                                               variance="fixed_large", weighting="debias")
        return per_example.mean()

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


opt_state = optimizer.init(params)
history = []
for step in range(STEPS):
    params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(jax.random.key(1), step))
    history.append(float(loss))
window = max(1, STEPS // 10)
print(f"loss, mean of the first and last {window} steps: {np.mean(history[:window]):.4f} -> "
      f"{np.mean(history[-window:]):.4f}")
'''),
    ("markdown", """
## Sampling without and with Epsilon Scaling

`samplers.sample` runs any sampler as one `lax.scan`. Randomness is one key per example, so sample b
depends only on `keys[b]`; the runs below share their keys and differ by the sampler and λ alone.
`EpsScaling` is a pytree whose λ is an ordinary array leaf: passed as an argument of a jitted function it
does not recompile for a new λ. Besides `constant(b)` there are `linear(k, b)`, λ_i = k·i + b with b the λ
of the least noisy step i = 0, and `linear_mean(k, mean)`, the official code's form around a mean λ.

As a score: the mean distance of a sample to the nearest mixture centre (0.05·√(π/2) ≈ 0.063 for the
data itself). This notebook shows the API, not a good model: with `BUDGET = "full"` the small MLP above,
trained for 3,000 steps, does not reach the data (its samples are a blur around the circle, their
distance far above 0.063, even with 1,000 sampling steps); a larger network and longer training would be
needed before comparing λ here means anything.
"""),
    ("code", '''
NUM = 2000 if BUDGET == "full" else 200
keys = jax.random.split(jax.random.key(2), NUM)


@functools.partial(jax.jit, static_argnames="sampler")
def draw_samples(params, eps_scaling, sampler):
    model_fn = functools.partial(model.apply, params)
    return samplers.sample(model_fn, sample_schedule, (NUM, 2), keys=keys, sampler=sampler,
                           variance="fixed_large", eps_scaling=eps_scaling)


def centre_distance(x):
    return float(np.linalg.norm(np.asarray(x)[:, None] - CENTRES[None], axis=-1).min(axis=1).mean())


LAMBDAS = (1.0, 1.01, 1.03)
fig, axes = plt.subplots(2, len(LAMBDAS), figsize=(4 * len(LAMBDAS), 8), sharex=True, sharey=True)
for row, sampler in zip(axes, ("ddpm", "dpm_solver_pp")):
    for ax, lam in zip(row, LAMBDAS):
        x = draw_samples(params, samplers.EpsScaling.constant(lam), sampler)
        distance = centre_distance(x)
        print(f"{sampler:>13}, λ = {lam:<4g}: mean distance to the nearest centre {distance:.4f}")
        ax.scatter(*np.asarray(x).T, s=2, alpha=0.5)
        ax.scatter(*CENTRES.T, marker="x", color="red")
        ax.set_title(f"{sampler}, 20 steps, λ = {lam:g}\\ndistance to centres {distance:.3f}")
        ax.set_aspect("equal")
show(fig)
print("λ_i of linear(k=0.002, b=1.0) on 20 steps, i = 0 (least noisy) first:",
      np.round(np.asarray(samplers.EpsScaling.linear(0.002, 1.0).values(20)), 4))
'''),
    ("markdown", """
## Next

- The single-step functions (`samplers.ddpm_step`, `ddim_step`, `dpm_solver_pp_step`, `unipc_step`,
  `edm_step`) take the network output and the noise as arguments, for loops of your own.
- `targets` converts between ε, x₀ and v predictions; `weighting.loss_weight(..., target="v")` gives the
  same objective for a v-network.
- The docstrings of `jdiff/weighting.py`, `jdiff/samplers/` and `jdiff/schedules.py` state every
  formula and the paper it comes from.
"""),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "library.ipynb": LIBRARY}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of the given (kind, text) cells, kind ``markdown``, ``code`` or ``parameters`` (a code
    cell tagged ``parameters``), without outputs, with stable cell ids."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}}
    for index, (kind, text) in enumerate(cells):
        source = textwrap.dedent(text).strip("\n")
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        elif kind in ("code", "parameters"):
            cell = nbformat.v4.new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
        cell.id = f"cell-{index:02d}"
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = os.path.join(HERE, name)
        nbformat.write(build(cells), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
