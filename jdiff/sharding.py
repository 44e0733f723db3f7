"""Device mesh, shardings and multi-host start-up.

jdiff is data-parallel over one mesh axis, ``"data"``, that spans every device of every host. Batches
are sharded along it; parameters are replicated, or (``training.shard_params``) split along their
largest divisible axis, which XLA turns into an all-gather per use (ZeRO-3 style). The same jitted
code runs on 1 CPU, 8 GPUs or a TPU pod slice: only the mesh changes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(initialize: str = "auto", coordinator_address: str = "",
                                 num_processes: int = 0, process_id: int = -1) -> None:
    """Calls ``jax.distributed.initialize`` when asked to, or ('auto') when the environment names a
    coordinator (``JAX_COORDINATOR_ADDRESS``, SLURM, a Cloud TPU pod), so that one code path serves one
    host and many. Must run before any other JAX call touches the devices."""
    if initialize == "no":
        return
    kwargs: dict[str, Any] = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    environment_says_so = any(k in os.environ for k in (
        "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))
    if initialize == "auto" and not kwargs and not environment_says_so:
        return
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        if initialize == "yes" or kwargs:
            raise RuntimeError(f"jax.distributed.initialize failed: {e}. Check "
                               "config.distributed.coordinator_address / num_processes / process_id, "
                               "or set config.distributed.initialize='no' for a single-host run.") from e
        logging.warning("not starting jax.distributed (%s); running as a single process", e)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D ``("data",)`` mesh over the given devices (all devices by default)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def param_sharding(shape: tuple[int, ...], mesh: Mesh, shard: bool) -> NamedSharding:
    """Replicated, or split along the largest axis that the mesh size divides (replicated if none does)."""
    size = mesh.shape[DATA_AXIS]
    if not shard or size == 1:
        return replicated(mesh)
    candidates = [a for a in np.argsort(shape)[::-1] if shape[a] % size == 0 and shape[a] >= size]
    if not candidates:
        return replicated(mesh)
    spec = [None] * len(shape)
    spec[int(candidates[0])] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


def tree_shardings(tree: Any, mesh: Mesh, shard: bool) -> Any:
    """Shardings for every array leaf of ``tree`` (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: param_sharding(tuple(x.shape), mesh, shard), tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, stacked: bool = False) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into one global array sharded over ``"data"``
    (along axis 1 when ``stacked``: a (K, batch, ...) stack of K steps' batches)."""
    sharding = NamedSharding(mesh, P(None, DATA_AXIS)) if stacked else batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def check_batch_divides(global_batch_size: int, mesh: Mesh) -> None:
    devices = mesh.shape[DATA_AXIS]
    if global_batch_size % devices or global_batch_size % jax.process_count():
        raise ValueError(f"the global batch size {global_batch_size} must be a multiple of the number of "
                         f"devices ({devices}) and of processes ({jax.process_count()})")


def computed_on_host(fn: Callable[..., Any], *args: Any, out_shardings: Any) -> Any:
    """``fn(*args)`` compiled for and run on the host's CPU, its outputs placed in ``out_shardings`` (a
    tree of shardings, or a prefix of the outputs' tree as for ``jax.jit``). For initialisations: every
    process computes the same values and supplies its own shards.

    Why on the host: XLA compiles each of the few hundred parameter initialisers of a UNet as its own
    kernel, which took 74 s for the CIFAR-10 UNet on an H200 against 11 s for its host CPU
    (docs/benchmarks.md); the values agree to float32 rounding. Where JAX runs without a CPU backend
    (``JAX_PLATFORMS`` not naming it) ``fn`` is compiled for the devices instead.
    """
    try:
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        logging.info("no CPU backend (JAX_PLATFORMS=%s): computing %s on the devices, which compiles slower",
                     os.environ.get("JAX_PLATFORMS", ""), getattr(fn, "__name__", "the initialisation"))
        return jax.jit(fn, out_shardings=out_shardings)(*args)
    with jax.default_device(cpu):
        host = jax.device_get(jax.jit(fn)(*jax.device_put(args, cpu)))

    def place(value, where):
        return jax.make_array_from_callback(np.shape(value), where, lambda index: np.asarray(value)[index])

    # out_shardings may be a prefix of the outputs' tree (one sharding for a whole subtree), as for jax.jit
    return jax.tree.map(lambda where, subtree: jax.tree.map(lambda value: place(value, where), subtree),
                        out_shardings, host)
