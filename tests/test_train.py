"""End-to-end training on the offline digits: resume exactness, preemption, NaN, bad input, the CLI."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import env_with_compilation_cache
from jdiff import checkpoint as ckpt_lib
from jdiff import config as config_lib
from jdiff import sharding, train
from jdiff.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**training):
    """digits at 8×8, a two-level UNet with attention and dropout, learned variance, the Debias weight
    and the importance sampler: every stateful part of the train step in a model that compiles fast."""
    c = config_lib.default_config()
    c.data.name = "digits"
    c.data.image_size = 8
    c.data.channels = 1
    c.data.random_flip = True
    c.model.model_channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = (4,)
    c.model.num_head_channels = 32
    c.model.dropout = 0.1
    c.diffusion.schedule = "linear"
    c.diffusion.num_timesteps = 100
    c.diffusion.variance = "learned_range"
    c.diffusion.weighting = "debias"
    c.diffusion.timestep_sampler = "loss_second_moment"
    c.training.batch_size = 8
    c.training.num_steps = 6
    c.training.learning_rate = 1e-3
    c.training.warmup_steps = 2
    c.training.ema_rate = 0.9
    c.training.log_every = 1
    c.training.checkpoint_every = 3
    c.training.sample_every = 0
    c.sampling.respacing = "4"
    c.sampling.num_samples = 6
    c.sampling.batch_size = 4
    for key, value in training.items():
        c.training[key] = value
    return c


def restore_all(workdir, config):
    model = train.build_model(config)
    mesh = train.sharding.make_mesh()
    abstract, _ = train.abstract_train_state(config, model, train.make_optimizer(config.training), mesh)
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as c:
        return c.restore(targets=train.checkpoint_targets(abstract, mesh, shard=False))


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """The workdir of an uninterrupted 6-step run of ``tiny_config()`` (checkpoints of steps 3 and 6): the
    resume test's reference, and the checkpoint that the other resume tests start from, each from its own
    copy (:func:`copy_run`), so that the module trains it once."""
    workdir = str(tmp_path_factory.mktemp("six_steps"))
    assert train.train_and_evaluate(tiny_config(), workdir) == "finished"
    return workdir


def copy_run(workdir, tmp_path):
    return shutil.copytree(workdir, str(tmp_path / "run"))


def test_initial_state_of_a_network_set_up_for_gpu_kernels():
    """The host initialises a network configured for the GPU-only kernels (refused here, on the CPU) with
    XLA's, to the same parameters: the kernels change how the network is computed, not its parameters."""
    config = tiny_config()
    model, tx = train.build_model(config), train.make_optimizer(config.training)
    _, shardings = train.abstract_train_state(config, model, tx, sharding.make_mesh())
    gpu_model = model.clone(attention_implementation="cudnn", norm_implementation="pallas")
    with pytest.raises(ValueError, match="NVIDIA GPUs"):
        jax.eval_shape(lambda k: gpu_model.init(k, *train.dummy_inputs(config), train=False),
                       jax.random.key(0))
    state = train.initial_train_state(config, gpu_model, tx, shardings)
    np.testing.assert_array_equal(np.asarray(state.params),
                                  np.asarray(train.initial_train_state(config, model, tx, shardings).params))


def test_conv_kernels_stored_output_first_train_identically():
    """The flat state's storage order of the conv kernels (OHWI on GPUs, for cuDNN) changes where numbers
    live in the vectors, not the training: two steps from the same initialisation give the same trees."""
    config = tiny_config()
    model, tx, mesh = train.build_model(config), train.make_optimizer(config.training), sharding.make_mesh()
    step_data = {"images": jax.random.uniform(jax.random.key(3), (config.training.batch_size, 8, 8, 1),
                                              minval=-1.0, maxval=1.0)}
    results, vectors = {}, {}
    for order in ("HWIO", "OHWI"):
        _, shardings = train.abstract_train_state(config, model, tx, mesh, order)
        state = train.initial_train_state(config, model, tx, shardings, order)
        assert state.layout.conv_order == order
        step_fn = train.make_train_step(config, model, tx, train.build_schedule(config), mesh, shardings)
        for _ in range(2):
            state, metrics = step_fn(state, step_data)
        vectors[order] = np.asarray(state.params)
        results[order] = jax.device_get((state.checkpoint_items(), metrics["loss"]))
    assert not np.array_equal(vectors["HWIO"], vectors["OHWI"])  # the same numbers, stored differently
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), results["HWIO"],
                 results["OHWI"])


def test_resume_is_exact(tmp_path, six_steps):
    straight, resumed = six_steps, str(tmp_path / "resumed")
    assert train.train_and_evaluate(tiny_config(num_steps=3), resumed) == "finished"
    assert train.train_and_evaluate(tiny_config(), resumed) == "finished"
    (a, meta_a), (b, meta_b) = restore_all(straight, tiny_config()), restore_all(resumed, tiny_config())
    assert meta_a["step"] == meta_b["step"] == 6
    for name in ("params", "ema_params", "opt_state", "sampler_state"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    # The run logged every step, the resumed one too, and the EMA moved away from the parameters.
    steps = [m["step"] for m in read_metrics(resumed)]
    assert steps == [1, 2, 3, 4, 5, 6]
    p, e = jax.tree.leaves(a["params"])[0], jax.tree.leaves(a["ema_params"])[0]
    assert not np.array_equal(np.asarray(p), np.asarray(e))


def test_loss_falls_on_digits(tmp_path):
    config = tiny_config(num_steps=120, checkpoint_every=1000, learning_rate=2e-3)
    config.diffusion.weighting = "constant"
    config.diffusion.variance = "fixed_large"
    config.diffusion.timestep_sampler = "uniform"
    config.model.dropout = 0.0
    train.train_and_evaluate(config, str(tmp_path))
    losses = [m["loss"] for m in read_metrics(str(tmp_path))]
    assert len(losses) == 120
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.5 * first, (first, last)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, six_steps):
    workdir = copy_run(six_steps, tmp_path)
    # Resumed with an absurd learning rate, the parameters overflow at the next step.
    config = tiny_config(num_steps=40, checkpoint_every=2, learning_rate=1e30)
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss") as info:
        train.train_and_evaluate(config, workdir)
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as c:
        steps = c.all_steps()
    assert steps and max(steps) >= 6, steps
    items, meta = restore_all(workdir, config)
    assert f"({meta['step']})" in str(info.value)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(items["params"]))


def test_missing_dataset_fails_before_writing(tmp_path):
    config = tiny_config()
    config.data.name = "cifar10"
    config.data.data_dir = str(tmp_path / "no_data")
    workdir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="tfds build"):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_changed_model_config_is_refused_on_resume(tmp_path, six_steps):
    workdir = copy_run(six_steps, tmp_path)
    config = tiny_config(num_steps=7)
    config.diffusion.weighting = "constant"
    with pytest.raises(ValueError, match="weighting"):
        train.train_and_evaluate(config, workdir)
    config = tiny_config(num_steps=7)
    config.training.grad_clip = 0.0
    with pytest.raises(ValueError, match="grad_clip=1.0 .* keep it on"):
        train.train_and_evaluate(config, workdir)
    config.training.grad_clip = 0.5              # another value of the clip resumes
    assert train.train_and_evaluate(config, workdir) == "finished"


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "jdiff.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env_with_compilation_cache(), **kwargs)


# configs/digits.py with the network, diffusion and optimiser of tiny_config(): the command line trains and
# samples with the programs that the tests above (and test_sampling.py) compiled, from the compilation cache.
TINY_FLAGS = ["--config=configs/digits.py", "--config.data.image_size=8", "--config.model.model_channels=32",
              "--config.model.channel_mult=(1,2)", "--config.model.attention_resolutions=(4,)",
              "--config.model.num_head_channels=32", "--config.model.dropout=0.1",
              "--config.diffusion.num_timesteps=100", "--config.diffusion.variance=learned_range",
              "--config.diffusion.timestep_sampler=loss_second_moment", "--config.training.batch_size=8",
              "--config.training.warmup_steps=2", "--config.training.ema_rate=0.9",
              "--config.training.ema_warmup=False", "--config.training.log_every=1",
              "--config.sampling.respacing=4"]


@pytest.mark.slow
def test_cli_train_then_sample(tmp_path):
    workdir = str(tmp_path)
    result = run_cli(*TINY_FLAGS, f"--workdir={workdir}", "--config.training.num_steps=4",
                     "--config.training.checkpoint_every=2", "--config.training.sample_every=4",
                     "--config.training.num_grid_samples=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "samples", "grid_00000004.png"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert json.load(open(os.path.join(workdir, "config.json")))["data"]["name"] == "digits"

    result = run_cli(*TINY_FLAGS, f"--workdir={workdir}", "--mode=sample", "--config.sampling.num_samples=6",
                     "--config.sampling.batch_size=4", "--config.sampling.eps_scaling=constant",
                     "--config.sampling.eps_scale_b=1.01")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [d for d in os.listdir(os.path.join(workdir, "samples")) if d.startswith("step4_")]
    from jdiff.sampling import load_samples

    images = load_samples(os.path.join(workdir, "samples", folder))
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    assert 0 < images.mean() < 255


@pytest.mark.slow
def test_cli_refuses_a_compilation_cache_folder_it_cannot_create(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    workdir = tmp_path / "run"
    result = run_cli("--config=configs/digits.py", f"--workdir={workdir}",
                     f"--config.compilation.cache_dir={blocker}/xla")
    assert result.returncode != 0
    assert "compilation cache folder" in result.stderr and "--config.compilation.cache_dir=" in result.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_cli_refuses_unknown_key_and_bad_value(tmp_path):
    result = run_cli("--config=configs/digits.py", f"--workdir={tmp_path}", "--config.training.batch_sise=3")
    assert result.returncode != 0
    assert "batch_size" in result.stderr  # the keys that exist are listed
    result = run_cli("--config=configs/digits.py", f"--workdir={tmp_path}",
                     "--config.diffusion.weighting=debaised")
    assert result.returncode != 0
    assert "debias" in result.stderr and "min_snr" in result.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
    workdir = str(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "jdiff.main", *TINY_FLAGS, f"--workdir={workdir}",
                                "--config.training.num_steps=100000",
                                "--config.training.checkpoint_every=100000",
                                "--config.training.sample_every=0"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env_with_compilation_cache())
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as c:
        steps = c.all_steps()
        _, meta = c.restore(meta_only=True)
    assert len(steps) == 1 and meta["step"] == steps[0] >= 1
