"""The sharded train step gives the single-device result on 4 CPU devices (with the parameters sharded
too) and across 2 processes (replicated).

The runs are subprocesses, because the device count is fixed when JAX starts; they run at the same time
(each compiles on one core for most of its life)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import POOL_THREADS_PER_DEVICE, env_with_compilation_cache, env_with_devices

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "train_steps.py")


def run(out, *args, devices, compilation_cache=False):
    env = env_with_devices(devices, env_with_compilation_cache() if compilation_cache else None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HELPER) + "/..", env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, HELPER, str(out), *args], env=env,
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
    # The single-device reference compiles the programs of tiny_config()'s runs in test_train.py, which
    # find them in the suite's compilation cache.
    workers.append(run(one, devices=1, compilation_cache=True))
    # Parameters and optimiser state split over 4 devices.
    workers.append(run(four, "--shard-params", devices=4))
    for w in workers:
        finish(w)
    # Only the order of the gradient all-reduce differs: float32 rounding after two Adam steps.
    assert_same_params(one, four, rtol=2e-4)
    assert_same_params(four, two, rtol=2e-4)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in Linux's /proc")
def test_subprocesses_get_the_larger_xla_thread_pool():
    """env_with_devices' PJRT_NPROC reaches XLA: a process with 4 CPU devices starts 16 pool threads (the
    default, max(cores, devices), is 4 on the 2-core CI machine, which test_sharded's collectives could
    exhaust). A jaxlib that stopped reading PJRT_NPROC fails here rather than by deadlocking now and then."""
    script = ("import os, jax; jax.numpy.ones(4).block_until_ready(); "
              "print(sum(open(f'/proc/self/task/{t}/comm').read().strip() == 'tf_XLAEigen' "
              "for t in os.listdir('/proc/self/task')))")
    done = subprocess.run([sys.executable, "-c", script], env=dict(env_with_devices(4), JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) == 4 * POOL_THREADS_PER_DEVICE
