"""The experiment scripts (experiments/): their option parsing and unit files, and one end-to-end pass of
all three on a tiny model with a trivially small budget, so that they do not rot."""

import dataclasses
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import common  # noqa: E402


def test_only_and_overrides():
    only = common.parse_only(["weighting=debias,p2", "seed=0", "seed=2"], ("weighting", "seed"))
    assert only == {"weighting": {"debias", "p2"}, "seed": {"0", "2"}}
    assert common.selected(only, weighting="p2", seed=2)
    assert not common.selected(only, weighting="constant", seed=0)
    assert common.selected({}, weighting="constant")
    with pytest.raises(ValueError, match="KEY one of"):
        common.parse_only(["sampler=ddpm"], ("weighting", "seed"))
    overrides = common.parse_overrides(["training.batch_size=128", "model.attention_resolutions=()",
                                        "data.name=digits"])
    assert overrides == {"training.batch_size": 128, "model.attention_resolutions": (), "data.name": "digits"}
    config = common.digits_config("p2", 3, common.BUDGETS["small"], overrides)
    assert (config.seed, config.diffusion.weighting, config.training.batch_size) == (3, "p2", 128)
    assert config.training.keep_every == config.training.checkpoint_every == 40     # every curve point kept
    with pytest.raises(ValueError, match="has no key"):
        common.digits_config("p2", 0, common.BUDGETS["small"], {"training.batchsize": 1})


def test_budget_overrides_are_checked():
    import argparse

    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser, ("seed",))
    budget = common.budget_from_args(parser.parse_args(["--budget", "full", "--steps", "20",
                                                        "--seeds", "4,5"]))
    assert (budget.steps, budget.seeds, budget.name) == ((20,), (4, 5), "full")
    with pytest.raises(ValueError, match="multiple"):
        common.budget_from_args(parser.parse_args(["--train-steps", "90"]))
    with pytest.raises(ValueError, match="must include 1"):
        common.budget_from_args(parser.parse_args(["--lambdas", "1.01,1.02"]))


def test_units_refuse_other_settings(tmp_path):
    units = common.Units(str(tmp_path))
    record = units.open("a", {"num_samples": 10}, force=False)
    record["scores"] = {"1": 2.0}
    units.save("a", record)
    assert units.open("a", {"num_samples": 10}, force=False)["scores"] == {"1": 2.0}
    with pytest.raises(ValueError, match="num_samples"):
        units.open("a", {"num_samples": 20}, force=False)
    assert "scores" not in units.open("a", {"num_samples": 20}, force=True)
    assert list(units.all()) == ["a"]


@pytest.mark.slow
def test_experiments_end_to_end(tmp_path):
    """The scripts' core functions on a tiny UNet trained for 2 steps, one sampler and step count; they
    share the trained runs and write their reports."""
    import debias_plus_es
    import eps_scaling_sweep
    import precision_check
    import weighting_comparison

    if not os.path.exists(common.DEFAULT_CLASSIFIER):
        pytest.skip(f"the committed classifier {common.DEFAULT_CLASSIFIER} is missing")
    budget = dataclasses.replace(
        common.BUDGETS["small"], train_steps=2, checkpoint_every=1, steps=(3,), samplers=("ddim",),
        sweep_samplers=("ddim",), curve="ddim:3", num_samples=16, sample_batch=16, lambdas=(1.0, 1.05),
        search_points=3, search_rounds=1, delta_images=8)
    overrides = {"model.channel_mult": (1,), "model.attention_resolutions": (),
                 "diffusion.num_timesteps": 50, "training.batch_size": 8, "training.warmup_steps": 0}
    results, root, clf = str(tmp_path / "results"), str(tmp_path / "scratch"), common.DEFAULT_CLASSIFIER

    weighting_comparison.run(budget, os.path.join(results, "wc"), root, clf,
                             {"weighting": {"debias", "constant"}}, overrides, False, "test")
    eps_scaling_sweep.run(budget, os.path.join(results, "es"), root, clf, {}, overrides, False, "test")
    debias_plus_es.run(budget, os.path.join(results, "dpe"), root, clf, {}, overrides, False, "test")
    precision_check.run(budget, os.path.join(results, "precision"), root, clf, {}, overrides, False, "test")

    with open(os.path.join(results, "wc", "weighting_comparison.json")) as f:
        wc = json.load(f)
    assert set(wc["summary"]["final"]["ddim-3"]) == {"constant", "debias"}
    assert sorted(wc["summary"]["curve"]["debias"]) == ["1", "2"]
    with open(os.path.join(results, "es", "eps_scaling_sweep.json")) as f:
        unit = json.load(f)["units"]["ddim-3"]
    assert set(unit["grid"]) == {"1", "1.05"} and unit["grid_best"] in (1.0, 1.05)
    assert len(unit["delta_t"]["no ES"]["delta"]) == 3
    with open(os.path.join(results, "dpe", "debias_plus_es.json")) as f:
        cells = json.load(f)["summary"]["ddim-3"]
    assert {"neither", "Debias", "ES", "Debias + ES"} <= set(cells)
    with open(os.path.join(results, "precision", "precision.json")) as f:
        differences = json.load(f)["sampling_differences"]["ddim-3"]
    # The same noise and parameters in bfloat16 and float32: close, not equal.
    assert len(differences) == 3 and 0 < max(abs(d) for d in differences) < 50
    for name in ("wc/weighting_comparison", "es/eps_scaling_sweep", "dpe/debias_plus_es",
                 "precision/precision"):
        with open(os.path.join(results, f"{name}.md")) as f:
            text = f.read()
        assert "Smoke run" in text and "classifier-FID (digits)" in text
        assert os.path.exists(os.path.join(results, f"{name}.png"))
    # Both weightings were trained once, in the folders the other experiments reuse.
    assert len(os.listdir(os.path.join(root, "runs"))) == 2
    with pytest.raises(ValueError, match="selects none"):
        eps_scaling_sweep.run(budget, os.path.join(results, "es"), root, clf, {"sampler": {"heun"}},
                              overrides, False, "test")


@pytest.mark.slow
def test_inception_scorer_on_a_small_digit_set(tmp_path, monkeypatch):
    """--inception-weights scores with Inception FID: reference and yardstick in pool3 features, its own
    signature (never mixed with classifier-FID units) and its own description in the report header."""
    import numpy as np

    from jdiff import data as data_lib
    from jdiff.evaluation import inception

    weights = str(tmp_path / "random_inception.npz")
    np.savez(weights, **inception.random_inception_state_dict(0))
    full = data_lib.load_dataset("digits", image_size=8)
    # 8 pictures: the fewest of which 20 % (2) held out still have a covariance.
    small = data_lib.ArrayDataset(full.images[:8], full.labels[:8], "digits")
    monkeypatch.setattr(common.data_lib, "load_dataset", lambda *args, **kwargs: small)
    config = common.digits_config("debias", 0, common.BUDGETS["small"])
    scorer = common.make_scorer(common.DEFAULT_CLASSIFIER, config, inception_weights=weights)
    assert (scorer.name == "Inception FID (digits)"
            and scorer.info["classifier_sha256"].startswith("inception-"))
    assert 2 <= scorer.info["real_heldout_images"] < 8 and scorer.info["real_heldout_score"] > 0
    assert abs(scorer(small.images)) < 1e-3          # the reference set against itself
    record = dict(scorer=scorer.info, budget=common.BUDGETS["small"].describe(), seconds=1.0,
                  environment=dict(device="cpu", device_count=1, backend="cpu", jax="x", command="c"))
    assert "pool3" in "\n".join(common.header("t", [record], "r"))
