"""The Epsilon Scaling λ search: the δ-scored search finds the λ that undoes a known bias of a Gaussian
toy model (closed form: λ = the bias), the FID score's plumbing on a tiny UNet, and the CLI's report."""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers.gaussian_toy import oracle_apply_fn
from jdiff import schedules, sharding, train
from jdiff.evaluation import exposure_bias, fid, lambda_search, search
from test_exposure_bias import ROOT, cli_env, converted_tiny_unet, tiny_unet_config


@pytest.fixture(scope="module")
def toy_run():
    schedule = schedules.make_schedule("cosine", 1000, "20")
    return exposure_bias.make_exposure_bias_fn(oracle_apply_fn(1.0), schedule, batch_size=1024,
                                               eps_norms=False, variance="fixed_large", clip_denoised=False)


@pytest.mark.parametrize("bias", [1.0037, 0.9971])
def test_delta_search_finds_the_compensating_lambda(toy_run, bias):
    """ε̂ = c·ε*: ES with λ = c gives back the exact sampler, whose δ_t is 0 for this data; the search
    finds c (above or below 1) to within its last grid step."""
    images = (np.random.default_rng(0).standard_normal((1024, 4, 4, 1))).astype(np.float32)
    score = lambda_search.delta_score_fn(toy_run, np.float32(bias), images, None, "constant")
    result = search.grid_search(score, {"b": (0.98, 1.02)}, num_points=5, rounds=6)
    last_step = 0.04 / 4 / 2 ** 5
    assert abs(result.best.params["b"] - bias) <= last_step
    assert result.best.score < 1e-3


def test_linear_form_matches_the_bias_where_it_acts(toy_run):
    """(k, b) of λ_i = k·i + b: without clipping this toy's error is made at the noisiest step (1/√ᾱ_T
    amplifies it), so the search pins λ there, λ_19 = 19k + b, to the bias; the rest is a flat valley."""
    images = (np.random.default_rng(1).standard_normal((1024, 4, 4, 1))).astype(np.float32)
    score = lambda_search.delta_score_fn(toy_run, np.float32(1.003), images, None, "linear")
    result = search.grid_search(score, {"k": (-0.0005, 0.0005), "b": (0.99, 1.01)}, num_points=5, rounds=4)
    noisiest = 19 * result.best.params["k"] + result.best.params["b"]
    assert noisiest == pytest.approx(1.003, abs=5e-4)
    assert result.best.score < 1e-3 and len(result.names) == 2


def test_fid_score_samples_with_the_searched_lambda(tmp_path):
    """The FID score of a search point is the Fréchet distance of the features of the config's samples
    made with that λ (here with pixel 'features', which are cheap and keep the plumbing exact)."""
    config = tiny_unet_config()
    params = converted_tiny_unet(str(tmp_path), config)
    model, mesh = train.build_model(config), sharding.make_mesh()
    sample = lambda_search.sample_batches(config, model, params, mesh, num_samples=6)

    def pixels(images):
        flat = images.reshape(len(images), -1).astype(np.float32)
        return flat, flat

    reference = fid.statistics(np.random.default_rng(0).uniform(0, 255, (20, 64)))
    score = lambda_search.fid_score_fn(sample, pixels, reference, "constant")
    images = {}
    for b in (1.0, 1.2):
        images[b] = np.concatenate(list(sample(lambda_search.eps_scaling_for({"b": b}, "constant"))))
        assert images[b].shape == (6, 8, 8, 1) and images[b].dtype == np.uint8
        stats = fid.statistics(pixels(images[b])[0])
        expected = fid.frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
        assert score({"b": b}) == pytest.approx(expected, rel=1e-9)
    assert not np.array_equal(images[1.0], images[1.2])


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="searches \\['b', 'k'\\]"):
        lambda_search.check_bounds({"b": (0.99, 1.01)}, "linear")
    with pytest.raises(ValueError, match="above 0"):
        lambda_search.check_bounds({"b": (0.0, 1.01)}, "constant")
    with pytest.raises(ValueError, match="unknown form"):
        lambda_search.eps_scaling_for({"b": 1.0}, "quadratic")
    config = tiny_unet_config()
    with pytest.raises(ValueError, match="unknown score"):
        lambda_search.search_lambda(config, str(tmp_path), score="is")
    config.eval.inception_weights = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="no Inception weights"):  # before looking for a checkpoint
        lambda_search.search_lambda(config, str(tmp_path), score="fid")


def test_cli_delta_search_writes_table_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    converted_tiny_unet(str(tmp_path), tiny_unet_config())
    config_file = tmp_path / "tiny.py"
    config_file.write_text("from test_exposure_bias import tiny_unet_config\n"
                           "def get_config():\n    return tiny_unet_config()\n")
    subprocess.run([sys.executable, "-m", "jdiff.evaluation.lambda_search", f"--config={config_file}",
                    f"--workdir={tmp_path}", "--score=delta", "--num_images=6", "--num_points=3",
                    "--rounds=2", "--b_range=0.9,1.1"], check=True, env=cli_env(), cwd=ROOT, timeout=300)
    name = "step0_ddpm_r4_es-none_seed0_lambda-delta-constant"
    folder = tmp_path / "lambda_search"
    with open(folder / f"{name}.json") as f:
        report = json.load(f)
    assert report["settings"]["bounds"] == {"b": [0.9, 1.1]} and report["names"] == ["b"]
    assert [e["params"]["b"] for e in report["evaluations"][:3]] == pytest.approx([0.9, 1.0, 1.1])
    values = [e["params"]["b"] for e in report["evaluations"]]
    assert len(values) == len(set(values)) == 4  # the second round's grid reuses two of its three points
    assert report["best"]["score"] == min(e["score"] for e in report["evaluations"])
    table = (folder / f"{name}.md").read_text()
    assert table.count("\n| ") == 1 + len(values) and f"**{report['best']['score']:.6g}**" in table
    assert ("on the edge" in table) == (report["best"]["params"]["b"] in (0.9, 1.1))
    assert (folder / f"{name}.png").stat().st_size > 0
