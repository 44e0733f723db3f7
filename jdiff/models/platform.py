"""What the default devices support, for the kernels that only some of them run."""

from __future__ import annotations

import jax


def compute_capability() -> tuple[int, ...] | None:
    """The default devices' CUDA compute capability, e.g. (9, 0) on Hopper; None when they are not NVIDIA
    GPUs (ROCm devices have no such attribute) or it cannot be read."""
    if jax.default_backend() != "gpu":
        return None
    capability = getattr(jax.devices()[0], "compute_capability", None)  # '9.0' on CUDA
    try:
        return None if capability is None else tuple(int(part) for part in capability.split("."))
    except ValueError:
        return None


def nvidia_sm80_or_newer() -> bool:
    """Whether the default devices are NVIDIA GPUs of compute capability 8.0 or newer (Ampere on): what
    cuDNN's flash attention and jdiff's Triton GroupNorm kernel need (bf16 arithmetic in both)."""
    capability = compute_capability()
    return capability is not None and capability >= (8, 0)
