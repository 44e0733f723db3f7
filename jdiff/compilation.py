"""The XLA options that jdiff's train step and sampler are compiled with.

XLA's GPU runtime launches a program's kernels either one by one from the host or, for runs of operations
it can capture, as CUDA graphs ("command buffers", the option ``xla_gpu_enable_command_buffer``). Its
default set of capturable operations has no cuDNN convolutions, so a UNet step is cut into many short
graphs between host-launched convolutions, and each launch leaves the GPU a few microseconds idle. With
convolutions captured as well, a bf16 train step ran 1.9–4.0% faster (two H200 machines) and 100-step sampling
0.4% faster; capturing the sampler's loop as a whole too (``WHILE``, ``CONDITIONAL``) made sampling 0.8%
faster (docs/benchmarks.md, "Convolutions and loops in CUDA graphs").

Compiling is slow too (the CIFAR-10 train step and sampler take about a minute each on a GPU), so
``jdiff.main`` keeps compiled programs between runs in JAX's persistent compilation cache
(:func:`enable_persistent_cache`, the config's ``compilation.cache_dir``): a resumed run, or sampling from
a checkpoint again, loads them instead of compiling them again.
"""

from __future__ import annotations

import os

import jax

from jdiff.config import default_cache_dir
from jdiff.models.platform import nvidia_sm80_or_newer

COMMAND_BUFFER_FLAG = "xla_gpu_enable_command_buffer"
COMMAND_BUFFER_TYPES = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "CONVOLUTION", "WHILE",
                        "CONDITIONAL")


def compiler_options() -> dict[str, str] | None:
    """``compiler_options`` for ``jax.jit`` of the train step and the sampler: on NVIDIA GPUs of compute
    capability 8.0 or newer (where it was measured), command buffers of :data:`COMMAND_BUFFER_TYPES`;
    None (XLA's defaults) elsewhere, and when ``XLA_FLAGS`` sets ``--xla_gpu_enable_command_buffer``
    itself: the user's choice wins (e.g. ``=`` with nothing, to profile every kernel by its operation).

    A function jitted with options can only be called at the top level: JAX refuses it inside another
    ``jax.jit`` (call the inner function, or jit again without options)."""
    if COMMAND_BUFFER_FLAG in os.environ.get("XLA_FLAGS", "") or not nvidia_sm80_or_newer():
        return None
    return {COMMAND_BUFFER_FLAG: ",".join(COMMAND_BUFFER_TYPES)}


def cache_directory(setting: str) -> str | None:
    """The folder of the persistent compilation cache for the config value ``compilation.cache_dir``: 'auto'
    is JAX's own setting where the user made one (``JAX_COMPILATION_CACHE_DIR``), else ``xla`` in jdiff's
    cache folder (:func:`jdiff.config.default_cache_dir`); '' is no cache; any other value the folder it
    names."""
    if setting == "auto":
        return jax.config.jax_compilation_cache_dir or os.path.join(default_cache_dir(), "xla")
    return setting or None


def enable_persistent_cache(directory: str) -> None:
    """Keeps compiled programs in ``directory`` (JAX's persistent compilation cache: those that took at least
    ``jax_persistent_cache_min_compile_time_secs``, 1 s by default, to compile), and loads a program from
    there instead of compiling it when a process compiles the same one again (the same HLO, compile
    options, devices, jax and jaxlib versions and XLA flags). Call it before the process compiles anything:
    JAX sets the cache up at its first compilation. Raises ValueError when the folder cannot be created."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise ValueError(f"the compilation cache folder {directory!r} cannot be created ({error}); give "
                         f"another with --config.compilation.cache_dir=DIR, or none with "
                         f"--config.compilation.cache_dir=") from None
    jax.config.update("jax_compilation_cache_dir", directory)
