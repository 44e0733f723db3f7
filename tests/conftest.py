"""Shared test set-up: a persistent XLA compilation cache, so the many small jitted programs that the
end-to-end tests build again (a new jit object per run) compile once per machine."""

import os
import tempfile

import jax

CACHE_DIR = os.environ.get("JDIFF_TEST_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "jdiff-test-xla-cache"))
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
