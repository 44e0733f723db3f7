"""Exposure bias δ_t and the ε-norm diagnostic against the Gaussian-data closed form
(tests/helpers/gaussian_toy.py), on an exact ε oracle and on one that over-predicts the noise, with and
without Epsilon Scaling; and the checkpoint CLI on a tiny UNet."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers.gaussian_toy import closed_form, oracle_apply_fn
from jdiff import checkpoint as ckpt_lib
from jdiff import schedules
from jdiff.evaluation import exposure_bias as eb
from jdiff.samplers import EpsScaling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def gaussian_images(s, n=2048, seed=0):
    return (s * np.random.default_rng(seed).standard_normal((n, 4, 4, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def schedule():
    return schedules.make_schedule("cosine", 1000, str(STEPS))


@pytest.fixture(scope="module")
def unit_run(schedule):
    """N(0, 1) data with DDPM's β_t variances (fixed_large): the exact ε gives x̂_t ~ q(x_t) exactly."""
    return eb.make_exposure_bias_fn(oracle_apply_fn(1.0), schedule, batch_size=1024, variance="fixed_large",
                                    clip_denoised=False)


@pytest.fixture(scope="module")
def half_run(schedule):
    """N(0, 0.25) data, DDPM's β̃ variances, no clipping: the closed form applies."""
    return eb.make_exposure_bias_fn(oracle_apply_fn(0.5), schedule, batch_size=1024, clip_denoised=False)


def test_both_variance_errors_match_the_closed_form(schedule, half_run):
    """Monte Carlo β̂_t, std(x̂_t) and std(x_t) per step equal the Gaussian recursion: the x recorded
    after each step is paired with ᾱ of the level it lands on."""
    s, c = 0.5, 1.002
    result = half_run(np.float32(c), gaussian_images(s, 4096), eps_scaling=EpsScaling.constant(1.0))
    expected = closed_form(STEPS, s, c, 1.0)
    np.testing.assert_allclose(result.sigma, expected["sigma"], rtol=1e-5, atol=1e-6)
    for name in ("paired_std", "sample_std", "reference_std"):
        np.testing.assert_allclose(getattr(result, name), expected[name], rtol=0.015, err_msg=name)
    assert result.delta_paired == pytest.approx((result.paired_std - result.sigma) ** 2)
    assert result.delta == pytest.approx((result.sample_std - result.reference_std) ** 2)
    assert result.num_images == 4096 and result.timestep[-1] == -1 and result.sigma[-1] == 0
    assert list(result.timestep[:-1]) == list(np.asarray(schedule.timesteps)[::-1][1:])


def test_exact_oracle_has_no_exposure_bias_and_epsilon_scaling_undoes_a_bias(unit_run):
    images = gaussian_images(1.0)
    exact = unit_run(np.float32(1.0), images, eps_scaling=EpsScaling.constant(1.0))
    biased = unit_run(np.float32(1.002), images, eps_scaling=EpsScaling.constant(1.0))
    corrected = unit_run(np.float32(1.002), images, eps_scaling=EpsScaling.constant(1.002))
    assert exact.delta.sum() < 1e-3                        # Monte Carlo noise only; the closed form is 0
    assert biased.delta.sum() > 1.0                        # the closed form: 7.6
    expected = closed_form(STEPS, 1.0, 1.002, 1.0, "fixed_large")["delta"].sum()
    assert biased.delta.sum() == pytest.approx(expected, rel=0.05)
    np.testing.assert_allclose(corrected.delta, exact.delta, atol=1e-6)
    # The authors' formula is far from 0 even for the exact model: the chain does not return to its x₀.
    floor = closed_form(STEPS, 1.0, 1.0, 1.0, "fixed_large")
    assert floor["delta_paired"].sum() > 10
    assert exact.delta_paired.sum() == pytest.approx(floor["delta_paired"].sum(), rel=0.02)
    np.testing.assert_allclose(exact.paired_std, floor["paired_std"], rtol=0.015)


def test_epsilon_norms_along_sampling_and_training(unit_run):
    """Exact model: the sampled inputs have the training distribution, so the ε̂ norms agree; a biased one
    drifts, and λ = c brings the trajectory (and its raw ε̂ norms) back onto training's."""
    images = gaussian_images(1.0)
    exact = unit_run(np.float32(1.0), images, eps_scaling=EpsScaling.constant(1.0))
    biased = unit_run(np.float32(1.002), images, eps_scaling=EpsScaling.constant(1.0))
    corrected = unit_run(np.float32(1.002), images, eps_scaling=EpsScaling.constant(1.002))
    np.testing.assert_allclose(exact.eps_norm_sampling, exact.eps_norm_training, rtol=0.02)
    gap = np.abs(biased.eps_norm_sampling / biased.eps_norm_training - 1)
    assert gap.max() > 0.5
    np.testing.assert_allclose(corrected.eps_norm_sampling, corrected.eps_norm_training, rtol=0.02)
    np.testing.assert_allclose(corrected.eps_norm_sampling_scaled, corrected.eps_norm_sampling / 1.002)
    assert np.all(corrected.lambdas == pytest.approx(1.002))


def test_authors_formula_can_move_the_wrong_way_with_clipping(schedule):
    """As ADM samples (x̂₀ clipped to [−1, 1]), data of std 0.5, a network over-predicting ε by 3 %: jdiff's
    δ_t doubles and λ = 1.03 restores it; the authors' δ_t is 5 % *lower* for the biased model, because it
    shrinks the samples and the paired std includes their spread (see the module docstring)."""
    run = eb.make_exposure_bias_fn(oracle_apply_fn(0.5), schedule, batch_size=2048)
    images = gaussian_images(0.5)
    exact = run(np.float32(1.0), images, eps_scaling=EpsScaling.constant(1.0))
    biased = run(np.float32(1.03), images, eps_scaling=EpsScaling.constant(1.0))
    corrected = run(np.float32(1.03), images, eps_scaling=EpsScaling.constant(1.03))
    assert biased.delta.sum() > 1.5 * exact.delta.sum()
    assert corrected.delta.sum() == pytest.approx(exact.delta.sum(), rel=1e-3)
    assert biased.delta_paired.sum() < 0.97 * corrected.delta_paired.sum()


def test_batches_and_padding_do_not_change_the_result(schedule, half_run):
    """Per-image keys: 300 images in one padded batch of 1024 or in batches of 128 give the same numbers."""
    images = gaussian_images(0.5, n=300)
    small = eb.make_exposure_bias_fn(oracle_apply_fn(0.5), schedule, batch_size=128, clip_denoised=False)
    results = [run(np.float32(1.0), images, eps_scaling=EpsScaling.constant(1.0))
               for run in (small, half_run)]
    for name in ("paired_std", "sample_std", "reference_std", "eps_norm_sampling", "eps_norm_training"):
        np.testing.assert_allclose(getattr(results[0], name), getattr(results[1], name), rtol=2e-5,
                                   err_msg=name)
    assert results[0].num_images == results[1].num_images == 300


def test_edm_sampler_levels_and_run():
    full = schedules.make_schedule("cosine", 1000)
    levels = eb.sampler_levels(full, "heun", 6)
    assert levels.index.shape == (6,) and levels.alpha.shape == (7,)
    assert float(levels.alpha[-1]) == 1.0 and float(levels.sigma[-1]) == 0.0
    assert np.all(np.diff(np.asarray(levels.sigma)) < 0)
    run = eb.make_exposure_bias_fn(oracle_apply_fn(0.5), full, batch_size=256, sampler="heun", num_steps=6,
                                   clip_denoised=False)
    result = run(np.float32(1.0), gaussian_images(0.5, 256), eps_scaling=EpsScaling.constant(1.0))
    assert result.delta.shape == (6,) and np.all(np.isfinite(result.delta))
    np.testing.assert_allclose(result.sigma, np.asarray(levels.sigma)[1:], rtol=1e-6)


def test_bad_input_is_refused(schedule):
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        eb.make_exposure_bias_fn(oracle_apply_fn(1.0), schedule, batch_size=0)
    with pytest.raises(ValueError, match="sampler='heun' needs num_steps"):
        eb.sampler_levels(schedule, "heun")
    run = eb.make_exposure_bias_fn(oracle_apply_fn(1.0), schedule, batch_size=8)
    with pytest.raises(ValueError, match="at least 2 images"):
        run(np.float32(1.0), gaussian_images(1.0, 1))
    with pytest.raises(ValueError, match="labels for"):
        run(np.float32(1.0), gaussian_images(1.0, 4), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="λ_i > 0"):
        run(np.float32(1.0), gaussian_images(1.0, 4), eps_scaling=EpsScaling.linear(-0.2, 1.0))


def tiny_unet_config():
    from jdiff import config as config_lib

    c = config_lib.default_config()
    c.data.name, c.data.image_size, c.data.channels = "digits", 8, 1
    c.model.model_channels, c.model.channel_mult, c.model.num_res_blocks = 32, (1,), 1
    c.model.attention_resolutions, c.model.num_head_channels, c.model.dropout = (), 32, 0.0
    c.diffusion.schedule, c.diffusion.num_timesteps, c.diffusion.variance = "linear", 100, "fixed_small"
    c.sampling.respacing, c.sampling.batch_size = "4", 4
    c.sampling.eps_scaling, c.sampling.eps_scale_b = "constant", 1.05
    return c


def converted_tiny_unet(workdir, config):
    """Random parameters of the tiny UNet (He-scaled kernels, also the output layer that ADM initialises
    to zero, so that ε̂ ≠ 0; drawn in NumPy, as initialising on the CPU compiles for seconds), saved as the
    workdir's checkpoint (step 0)."""
    from jdiff import train

    model = train.build_model(config)

    def init(key):
        return model.init({"params": key}, *train.dummy_inputs(config), train=False)["params"]

    shapes = jax.eval_shape(init, jax.random.key(0))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    ckpt_lib.save_converted(os.path.join(workdir, "checkpoints"), params, json.loads(config.model.to_json()))
    return params


def cli_env():
    """The tests' import path and their persistent compilation cache (tests/conftest.py) for a subprocess."""
    from conftest import CACHE_DIR

    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
                JAX_COMPILATION_CACHE_DIR=CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def test_checkpoint_cli_writes_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    config = tiny_unet_config()
    converted_tiny_unet(str(tmp_path), config)
    config_file = tmp_path / "tiny.py"
    config_file.write_text("from test_exposure_bias import tiny_unet_config\n"
                           "def get_config():\n    return tiny_unet_config()\n")
    subprocess.run([sys.executable, "-m", "jdiff.evaluation.exposure_bias", f"--config={config_file}",
                    f"--workdir={tmp_path}", "--num_images=6"],
                   check=True, env=cli_env(), cwd=ROOT, timeout=300)
    name = "step0_ddpm_r4_es-1.05_seed0"
    with open(tmp_path / "exposure_bias" / f"{name}.json") as f:
        written = json.load(f)
    assert (tmp_path / "exposure_bias" / f"{name}.png").stat().st_size > 0
    assert written["settings"]["num_images"] == 6 and written["settings"]["checkpoint_step"] == 0
    plain, scaled = written["results"]["no ES"], written["results"]["ES λ=1.05"]
    for result in (plain, scaled):
        assert len(result["delta"]) == len(result["eps_norm_training"]) == 4 and result["num_images"] == 6
        assert np.all(np.isfinite(result["delta"])) and np.all(np.isfinite(result["eps_norm_training"]))
    assert plain["lambdas"] == [1.0] * 4 and scaled["lambdas"] == pytest.approx([1.05] * 4)
    assert plain["eps_norm_training"] == pytest.approx(scaled["eps_norm_training"])
    assert plain["delta"] != pytest.approx(scaled["delta"])
