"""Config files load, validate, and refuse unknown keys and bad values with the valid choices."""

import glob
import importlib.util
import os

import pytest

from jdiff import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_there_are_configs():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"cifar10_debias.py", "cifar10_baseline.py", "cifar10_p2.py", "cifar10_minsnr.py",
            "digits.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_validates(path):
    config_lib.validate(load(path))


def test_unknown_key_lists_valid_keys():
    config = config_lib.default_config()
    config.lock()
    with pytest.raises(AttributeError, match="batch_size"):
        config.training.batch_sise = 3


@pytest.mark.parametrize("key, value, message", [
    ("weighting", "debaised", "debias"),
    ("schedule", "quadratic", "cosine"),
    ("target", "score", "eps"),
])
def test_bad_choice_names_the_choices(key, value, message):
    config = config_lib.default_config()
    config.diffusion[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_bad_numbers_are_refused():
    config = config_lib.default_config()
    config.training.batch_size = 0
    config.training.ema_rate = 1.5
    config.data.image_size = 24
    config.training.keep_every = -5
    config.diffusion.weighting = "min_snr"
    config.diffusion.min_snr_gamma = 0.0
    with pytest.raises(ValueError) as info:
        config_lib.validate(config)
    text = str(info.value)
    assert "batch_size" in text and "ema_rate" in text and "power of two" in text and "keep_every" in text
    assert "min_snr_gamma must be > 0" in text
