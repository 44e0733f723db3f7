"""What jdiff's Pallas Mosaic GPU kernels (:mod:`jdiff.models.mosaic_group_norm`,
:mod:`jdiff.models.mosaic_attention`) share: where they run, and how they run in Mosaic GPU's interpreter
(register arrays without layouts there)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

from jdiff.models.platform import compute_capability


_TILE = plgpu.Layout.WGMMA


class Registers:
    """Arrays in registers, in Mosaic GPU's register layouts when compiled (``layouts``). The interpreter
    computes the same values without them (jax 0.10's cannot interpret layouts at all), so it checks a
    kernel's arithmetic, indexing and synchronisation, and the lowering tests and the GPU check the
    layouts."""

    def __init__(self, layouts: bool):
        self.layouts = layouts

    def load(self, ref, layout):
        return plgpu.load(ref, layout=layout, optimized=False) if self.layouts else ref[...]

    def iota(self, shape, dimension):
        if self.layouts:
            return plgpu.broadcasted_iota(jnp.int32, shape, dimension, layout=_TILE)
        return lax.broadcasted_iota(jnp.int32, shape, dimension)

    def zeros(self, shape):
        zeros = jnp.zeros(shape, jnp.float32)
        return plgpu.layout_cast(zeros, _TILE) if self.layouts else zeros


def jax_supports_it() -> bool:
    """Whether this jax has the Mosaic GPU API the kernels are written against (0.11 on)."""
    return tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 11)


def runs_here() -> bool:
    """Whether the default devices run the kernels: NVIDIA GPUs of compute capability 9.x (TMA, wgmma, sm_90a
    code), with jax ≥ 0.11."""
    capability = compute_capability()
    return capability is not None and capability[0] == 9 and jax_supports_it()


def interpret_params(**options: Any) -> Any:
    """Mosaic GPU's interpreter parameters (``InterpretGPUParams(**options)``, e.g. ``detect_races=True``),
    for a kernel's ``interpret=``: jax 0.10 has the interpreter but does not export them yet."""
    try:
        params = plgpu.InterpretGPUParams
    except AttributeError:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as params
    return params(**options)


def interpreter(interpret: Any) -> Any:
    """None (compile for the GPU), or the interpreter's parameters: the ones given, or its defaults."""
    return interpret_params() if interpret is True else interpret or None


def unpartitioned_if_interpreted(partitioned: Callable[..., Any], unpartitioned: Callable[..., Any],
                                 interpret: Any) -> Callable[..., Any]:
    """The call that runs a kernel: ``partitioned`` (each device on its own images, through
    :func:`jdiff.models.per_image.partitioned_per_image`), or ``unpartitioned`` where the kernel runs in
    Mosaic GPU's interpreter (``interpret``): the interpreter runs on ordered host callbacks, which a
    custom-partitioned call cannot lower under ``jax.jit``."""
    return unpartitioned if interpret else partitioned


def sm_count(interpret: Any) -> int:
    """The GPU's SMs, which the persistent kernels cover with their CTAs; 2 in the interpreter, so that small
    test inputs give each CTA several items."""
    return 2 if interpret else jax.devices()[0].core_count


def check_runs(kernel: str, interpret: Any, *, interpreted_on_jax_010: bool, instead: str) -> None:
    """Raises ValueError, naming ``kernel`` and what to use ``instead``, where that Mosaic GPU kernel cannot
    run: compiled it needs jax ≥ 0.11 and GPUs of compute capability 9.x; in the interpreter (``interpret``)
    jax ≥ 0.11 too, unless ``interpreted_on_jax_010``."""
    if not jax_supports_it() and not (interpret and interpreted_on_jax_010):
        needs = "its Mosaic GPU API" + ("" if interpreted_on_jax_010 else " and interpreter")
        raise ValueError(f"the Mosaic GPU {kernel} kernel needs jax >= 0.11 ({needs}), found "
                         f"{jax.__version__}: use {instead}")
    if not interpret and not runs_here():
        raise ValueError(f"the Mosaic GPU {kernel} kernel runs on NVIDIA GPUs of compute capability 9.x "
                         f"(found {jax.device_count()} {jax.default_backend()} device(s)); use {instead} "
                         f"or interpret=True")
