"""The sharded train step gives the single-device result on 4 CPU devices (with the parameters sharded
too) and across 2 processes (replicated).

Each run is a subprocess, because the device count is fixed when JAX starts."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "train_steps.py")


def env_with_devices(count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HELPER) + "/..", env.get("PYTHONPATH", "")])
    return env


def run(out, *args, devices):
    return subprocess.Popen([sys.executable, HELPER, str(out), *args], env=env_with_devices(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def assert_same_params(a_path, b_path, rtol):
    a, b = np.load(a_path), np.load(b_path)
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    for name in a.files:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=rtol * 1e-2, err_msg=name)


@pytest.mark.slow
def test_four_devices_and_two_processes_match_one_device(tmp_path):
    one, four = tmp_path / "one.npz", tmp_path / "four.npz"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two.npz"
    # The two distributed processes have 2 CPU devices each: a global mesh of 4 over 2 hosts.
    workers = [run(two, "--process-id", str(i), "--num-processes", "2", "--port", str(port), devices=2)
               for i in range(2)]
    for w in workers:
        finish(w)
    finish(run(one, "--devices", "1", devices=4))
    finish(run(four, "--shard-params", devices=4))   # parameters and optimiser state split over 4 devices
    # Only the order of the gradient all-reduce differs: float32 rounding after two Adam steps.
    assert_same_params(one, four, rtol=2e-4)
    assert_same_params(four, two, rtol=2e-4)
