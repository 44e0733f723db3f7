"""A converted guided-diffusion checkpoint sampled through the command lines, as docs/pretrained.md does it:
``python -m jdiff.convert`` on the official-format fixture (tests/data/unet_fixture.npz, configuration
``a``: learned sigma, 1000 classes, new attention order), its ``--print-config`` overrides on top of
``configs/adm_es_cifar10.py``, then ``python -m jdiff.main --mode=sample`` with and without Epsilon
Scaling."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CACHE_DIR
from jdiff import config as config_lib
from jdiff import convert, sampling
from test_convert import load_fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(ROOT, "configs", "adm_es_cifar10.py")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(workdir, flags, --config overrides) of fixture ``a`` converted by the CLI."""
    tmp = tmp_path_factory.mktemp("converted")
    state, flags, _, _ = load_fixture("a")
    np.savez(tmp / "state.npz", **state)
    line = " ".join(f"--{k} {v}" for k, v in flags.items())
    line += " --noise_schedule cosine --diffusion_steps 1000"
    convert.main(["--checkpoint", str(tmp / "state.npz"), "--flags", line, "--output", str(tmp / "work")])
    return str(tmp / "work"), line


def sample_cli(workdir, overrides, output_dir, *extra):
    # The suite's compilation cache, so the second run reuses the first one's sampler (λ is an argument).
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    result = subprocess.run(
        [sys.executable, "-m", "jdiff.main", f"--config={BASE_CONFIG}", *overrides, f"--workdir={workdir}",
         "--mode=sample", "--config.sampling.respacing=5", "--config.sampling.num_samples=4",
         "--config.sampling.batch_size=4", f"--config.sampling.output_dir={output_dir}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return sampling.load_samples(output_dir)


@pytest.mark.slow
def test_converted_checkpoint_samples_with_epsilon_scaling(converted, tmp_path, capsys):
    workdir, line = converted
    convert.main(["--print-config", "--flags", line])
    printed = capsys.readouterr()
    overrides = printed.out.split()
    assert "--config.model.channel_mult=(1,2)" in overrides and "--config.data.num_classes=1000" in overrides
    assert "use_checkpoint use_fp16" in printed.err  # listed as having no config key

    scaled = sample_cli(workdir, overrides, str(tmp_path / "es"))  # the config's λ = 1.017
    plain = sample_cli(workdir, overrides, str(tmp_path / "none"), "--config.sampling.eps_scaling=none")
    with open(tmp_path / "es" / "sampling_config.json") as f:
        record = json.load(f)["sampling"]
    assert (record["eps_scaling"], record["eps_scale_b"], record["respacing"]) == ("constant", 1.017, "5")
    for images in (scaled, plain):
        assert images.dtype == np.uint8 and images.shape == (4, 16, 16, 3)
        # A non-finite sample would come out as a constant (all-zero) picture.
        assert all(len(np.unique(image)) > 50 for image in images)
    difference = np.abs(scaled.astype(int) - plain.astype(int))
    # λ = 1.017 moves the samples a little: same noise, ε̂ 1.7% smaller at every step.
    assert difference.max() > 0 and 0 < difference.mean() < 10


@pytest.mark.slow
def test_sampling_refuses_a_config_of_another_network(converted):
    workdir, line = converted
    config = convert.config_from_flags(line)
    config.sampling.respacing = "5"
    config.model.use_new_attention_order = False  # same shapes, another network
    config.model.num_heads = 8  # unused beside num_head_channels: not an error
    config_lib.validate(config)
    with pytest.raises(ValueError, match=r"config\.model\.use_new_attention_order=False, the converted "
                                         r"network needs True\n\(python -m jdiff\.convert --print-config"):
        sampling.sample_to_directory(config, workdir)
