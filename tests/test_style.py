"""The code follows the project's flake8 settings (setup.cfg: lines of at most 110 characters, the archived
probes of experiments/results excluded)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flake8_is_clean():
    paths = ["jdiff", "tests", "experiments", "configs", "notebooks"]
    done = subprocess.run([sys.executable, "-m", "flake8", *paths], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
