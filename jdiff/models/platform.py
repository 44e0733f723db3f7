"""What the default devices support, for the kernels that only some of them run."""

from __future__ import annotations

import jax


def nvidia_sm80_or_newer() -> bool:
    """Whether the default devices are NVIDIA GPUs of compute capability 8.0 or newer (Ampere on): what
    cuDNN's flash attention and jdiff's Triton GroupNorm kernel need (bf16 arithmetic in both)."""
    if jax.default_backend() != "gpu":
        return False
    capability = getattr(jax.devices()[0], "compute_capability", None)  # '9.0' on CUDA; absent on ROCm
    try:
        return capability is not None and tuple(int(part) for part in capability.split(".")) >= (8, 0)
    except ValueError:
        return False
