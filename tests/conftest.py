"""Shared test set-up: a persistent XLA compilation cache, so the many small jitted programs that the
end-to-end tests build again (a new jit object per run) compile once per machine."""

import json
import os
import subprocess
import sys
import tempfile

import jax
import jaxlib

# The suite is compile-bound (tiny models, a few steps each), so its XLA_FLAGS trade the CPU code's speed
# for compile time. LLVM's lightest optimisation compiles the tiny train step ~20% faster (44 → 36 s for its
# first run) and runs it about as fast. On jaxlib 0.10, XLA's older elemental emitters instead of its MLIR
# fusion emitters halve the first step of tests/test_train.py's tiny_config() (9.4–11.2 → 5.6–6.0 s, its 20
# next steps 3.0–3.2 s either way; the suite 944 → 693 s); jaxlib 0.11 has only the fusion emitters, and XLA
# aborts on a flag it does not know. The flags must be in XLA_FLAGS before JAX starts its backend, which no
# import here does; flags the caller set are kept.
ELEMENTAL_EMITTERS = tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) < (0, 11)
SUITE_XLA_FLAGS = ("--xla_backend_optimization_level=0",) + (
    ("--xla_cpu_use_fusion_emitters=false",) if ELEMENTAL_EMITTERS else ())
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [f for f in SUITE_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]).strip()


# XLA's CPU devices of one process meet at every collective, each device's side of it blocking a thread of
# the process's one pool (the tf_XLAEigen threads, max(PJRT_NPROC or the core count, device count) of
# them: 4 for 4 devices on the 2-core CI machine). A device whose thunk executor has more work ready hands
# a collective to that pool, so one device can hold two threads in two collectives at once; with 4
# threads for 4 devices the last device then finds no thread, the others never leave their rendezvous,
# and XLA aborts the process ("Termination timeout for `all gather RendezvousKey ...`"): test_sharded's
# 4-device run did so twice in CI. Three 4-device runs of tests/helpers/train_steps.py --shard-params
# --steps 400 at once all deadlocked with the default pool and all passed with PJRT_NPROC=16, so the
# subprocesses get a pool of POOL_THREADS_PER_DEVICE threads per device. The longer COLLECTIVE_TIMEOUTS
# keep a device that is merely slow on the loaded machine from being aborted; they stay below the tests'
# own 600 s per subprocess, so a real hang still ends with XLA's message.
POOL_THREADS_PER_DEVICE = 4
COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=60",
                       "--xla_cpu_collective_call_terminate_timeout_seconds=300")


def env_with_devices(count: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (the suite's environment by default) for a subprocess that needs ``count`` forced CPU
    devices: the suite's XLA_FLAGS (the optimisation level above included) with the device count and the
    longer COLLECTIVE_TIMEOUTS, so its programs compile as fast as the in-process ones, and a thread pool
    with threads to spare for the devices' collectives (PJRT_NPROC, see above)."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_force_host_platform_device_count", "--xla_cpu_collective_call_"))]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}",
                                         *COLLECTIVE_TIMEOUTS])
    env["PJRT_NPROC"] = str(POOL_THREADS_PER_DEVICE * count)
    return env


def run_helper_on_devices(name: str, count: int) -> dict:
    """Runs tests/helpers/``name`` in a subprocess with ``count`` forced CPU devices and returns the JSON
    object its last output line holds (the test fails with the helper's error output if it fails)."""
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = env_with_devices(count)
    env["PYTHONPATH"] = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, helper], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CACHE_DIR = os.environ.get("JDIFF_TEST_COMPILATION_CACHE",
                           os.path.join(tempfile.gettempdir(), "jdiff-test-xla-cache"))
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def env_with_compilation_cache() -> dict[str, str]:
    """The environment for a subprocess of the suite (a command line under test), with the suite's
    persistent compilation cache: it reuses what the tests before it compiled, and the tests after it
    reuse its programs."""
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
