"""The XLA options that jdiff's train step and sampler are compiled with.

XLA's GPU runtime launches a program's kernels either one by one from the host or, for runs of operations
it can capture, as CUDA graphs ("command buffers", the option ``xla_gpu_enable_command_buffer``). Its
default set of capturable operations has no cuDNN convolutions, so a UNet step is cut into many short
graphs between host-launched convolutions, and each launch leaves the GPU a few microseconds idle. With
convolutions captured as well, a bf16 train step ran 1.9–4.0% faster (two H200 machines) and 100-step sampling
0.4% faster; capturing the sampler's loop as a whole too (``WHILE``, ``CONDITIONAL``) made sampling 0.8%
faster (docs/benchmarks.md, "Convolutions and loops in CUDA graphs").
"""

from __future__ import annotations

import os

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
