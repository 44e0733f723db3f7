"""Shared test set-up: a persistent XLA compilation cache, so the many small jitted programs that the
end-to-end tests build again (a new jit object per run) compile once per machine."""

import os
import tempfile

import jax

# The suite is compile-bound (tiny models, a few steps each): LLVM's lightest optimisation of the CPU code
# compiles the tiny train step ~20% faster (44 → 36 s for its first run) and runs it about as fast. It
# must be in XLA_FLAGS before JAX starts its backend, which no import here does.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

CACHE_DIR = os.environ.get("JDIFF_TEST_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "jdiff-test-xla-cache"))
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
