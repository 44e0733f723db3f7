"""Shared test set-up: a persistent XLA compilation cache, so the many small jitted programs that the
end-to-end tests build again (a new jit object per run) compile once per machine."""

import json
import os
import subprocess
import sys
import tempfile

import jax

# The suite is compile-bound (tiny models, a few steps each): LLVM's lightest optimisation of the CPU code
# compiles the tiny train step ~20% faster (44 → 36 s for its first run) and runs it about as fast. It
# must be in XLA_FLAGS before JAX starts its backend, which no import here does.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()


# XLA's CPU devices of one process meet at every collective, and XLA aborts the process when one of them
# waits there a minute (by default 20 s until its warning, then 40 s). On the 2-core CI machine, where
# several multi-device subprocesses run at once, a device thread can be kept from its work that long:
# test_sharded's 4-device run was aborted so once ("Termination timeout for `all gather RendezvousKey ...`
# of 40 seconds"). With these flags a device held back 75 s (a callback sleeping on one of 4 devices before
# a psum) is waited for, where the defaults abort; the limit stays below the tests' own 600 s per
# subprocess, so a real hang still ends with XLA's message.
COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=60",
                       "--xla_cpu_collective_call_terminate_timeout_seconds=300")


def xla_flags_with_devices(count: int) -> str:
    """The suite's XLA_FLAGS (the optimisation level above included) with ``count`` forced CPU devices and
    the longer COLLECTIVE_TIMEOUTS, for a subprocess that needs several devices: its programs then compile
    as fast as the in-process ones."""
    flags = [f for f in os.environ["XLA_FLAGS"].split()
             if not f.startswith(("--xla_force_host_platform_device_count", "--xla_cpu_collective_call_"))]
    return " ".join(flags + [f"--xla_force_host_platform_device_count={count}", *COLLECTIVE_TIMEOUTS])


def run_helper_on_devices(name: str, count: int) -> dict:
    """Runs tests/helpers/``name`` in a subprocess with ``count`` forced CPU devices and returns the JSON
    object its last output line holds (the test fails with the helper's error output if it fails)."""
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS=xla_flags_with_devices(count),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
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
