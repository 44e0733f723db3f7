"""Checkpoints: orbax-checkpoint's ``CheckpointManager`` behind one small class, plus preemption.

A checkpoint of step ``s`` is the folder ``<directory>/<s>`` holding named pytrees (``params``,
``ema_params``, ``opt_state``, ...), each restorable on its own, and a JSON ``meta`` item (the
step, the config, the jdiff version). Sampling restores ``ema_params`` alone, without the
optimizer state. Restoring takes *abstract* targets (``jax.ShapeDtypeStruct`` leaves with a
``.sharding``) and places every array directly in that sharding, so a checkpoint written on 4
devices restores on 1 and the other way round.

Safety, from orbax and checked here:

* A save is written to ``<s>.orbax-checkpoint-tmp-*`` and renamed to ``<s>`` only once complete,
  with a ``commit_success.txt`` marker; a run killed mid-save leaves the older checkpoints intact.
* Old checkpoints beyond the newest ``keep`` are deleted only after the newer save has been
  committed (``CheckpointManager._finalize``).
* A checkpoint that is committed but unreadable (a truncated or missing array file, broken JSON,
  a missing marker after a bad copy) is skipped by :meth:`Checkpointer.restore` with a warning
  naming the step and the reason, and the previous one is used. Before the next save such
  checkpoints are renamed ``<s>.invalid`` (kept for inspection, invisible to orbax), so that they
  neither block saving the same step again nor count among the ``keep`` newest.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

COMMIT_MARKER = "commit_success.txt"
META_ITEM = "meta"
# The first release whose rename-based commit also writes COMMIT_MARKER, which restore checks.
MIN_ORBAX = (0, 12, 3)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected, or a save that would corrupt the directory."""


def _jdiff_version() -> str:
    from jdiff import __version__

    return __version__


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_processes_agree(ok: bool) -> bool:
    """True only if ``ok`` on every process, so that all of them fall back to the same step."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _check_item_names(names: Any, what: str) -> None:
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or name == META_ITEM:
            raise ValueError(f"{what} names must be Python identifiers other than {META_ITEM!r}, "
                             f"got {name!r}")


def _check_targets(targets: Mapping[str, Any]) -> None:
    """Every leaf must say where its array goes: restoring by the saved device layout fails on
    another device count (orbax 'topology mismatch')."""
    _check_item_names(targets, "target")
    for name, tree in targets.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            placed = isinstance(leaf, (jax.ShapeDtypeStruct, jax.Array))
            if not placed or getattr(leaf, "sharding", None) is None:
                raise ValueError(f"restore target {name}{jax.tree_util.keystr(path)} must be a "
                                 f"jax.ShapeDtypeStruct (or jax.Array) with a sharding, got {leaf!r}; e.g. "
                                 "jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))")


def _check_orbax_version() -> None:
    version = tuple(int(part) for part in ocp.__version__.split(".")[:3] if part.isdigit())
    if version < MIN_ORBAX:
        raise ImportError(f"jdiff.checkpoint needs orbax-checkpoint >= {'.'.join(map(str, MIN_ORBAX))} (its "
                          f"checkpoints carry {COMMIT_MARKER}), found {ocp.__version__}: "
                          "pip install -U 'orbax-checkpoint>=0.12.3,<0.13'")


_check_orbax_version()


def _preservation_policy(keep: int, keep_every: int | None) -> Any:
    policies = ocp.checkpoint_managers
    if keep_every is None:
        return policies.LatestN(keep)
    return policies.AnyPreservationPolicy([policies.LatestN(keep), policies.EveryNSteps(keep_every)])


class Checkpointer:
    """Saves and restores named pytrees plus JSON metadata in ``directory`` (one folder per step).

    ``keep``: the newest ``keep`` checkpoints are preserved (orbax ``LatestN``); ``keep_every``: also
    every checkpoint whose step is a multiple of it, for good (orbax ``EveryNSteps``), so a curve over
    training survives extra checkpoints such as a preemption's. ``save_every``:
    :meth:`save` without ``force`` writes only steps that are multiples of it; None writes every
    step it is given. (Not orbax's save-decision policy: that also skips every step up to the
    newest folder on disk, unusable ones included.) ``async_save``: arrays are
    copied to host memory in :meth:`save` and written in the background; :meth:`wait` blocks
    until the last save is committed. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, keep_every: int | None = None,
                 save_every: int | None = None, async_save: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1")
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every={keep_every} must be >= 1 or None")
        if save_every is not None and save_every < 1:
            raise ValueError(f"save_every={save_every} must be >= 1 or None")
        self.directory = os.path.abspath(os.fspath(directory))
        self._invalid: dict[int, str] = {}
        self._save_every = save_every
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_preservation_policy(keep, keep_every),
            enable_async_checkpointing=async_save,
            create=False,                    # reading must not create the directory; a save does
            cleanup_tmp_directories=True,    # leftovers of saves killed before their commit
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- listing ---------------------------------------------------------------------------------

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _structural_problem(self, step: int) -> str | None:
        if step in self._invalid:
            return self._invalid[step]
        if not os.path.exists(os.path.join(self._step_dir(step), COMMIT_MARKER)):
            return f"no commit marker ({COMMIT_MARKER}): the save did not complete"
        return None

    def all_steps(self) -> list[int]:
        """Steps of the committed checkpoints not found unusable, ascending (the newest may still
        turn out unreadable on :meth:`restore`, which then falls back)."""
        return [s for s in sorted(self._manager.all_steps()) if self._structural_problem(s) is None]

    def latest_step(self) -> int | None:
        """The newest step of :meth:`all_steps`, or None if there is none (also for a missing directory)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- saving ----------------------------------------------------------------------------------

    def _set_aside_invalid(self) -> None:
        """Renames unusable step folders to ``<step>.invalid`` (process 0), before a save."""
        invalid = {s: self._structural_problem(s) for s in self._manager.all_steps()}
        invalid = {s: reason for s, reason in invalid.items() if reason is not None}
        if not invalid:
            return
        if jax.process_index() == 0:
            for step, reason in sorted(invalid.items()):
                target = self._step_dir(step) + ".invalid"
                suffix = 1
                while os.path.exists(target):
                    target = f"{self._step_dir(step)}.invalid{suffix}"
                    suffix += 1
                os.rename(self._step_dir(step), target)
                logging.warning("checkpoint step %d in %s is unusable (%s): renamed to %s", step,
                                self.directory, reason, os.path.basename(target))
        _sync_processes("jdiff_checkpoint_set_aside")
        self._invalid.clear()
        self._manager.reload()

    def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any], *,
             force: bool = False) -> bool:
        """Starts saving ``items`` (named pytrees of arrays) and ``meta`` as the checkpoint of ``step``.

        ``meta`` must be JSON-serialisable; ``step`` and ``jdiff_version`` are added to it. Returns
        False if the save policy skipped this step (``force=True`` always saves). Raises
        :class:`CheckpointError` if a checkpoint of ``step`` or of a later step exists: a run
        continued from an older step must use a new directory, or orbax's "keep the newest"
        would delete the continuation in favour of the abandoned run.
        """
        if not items:
            raise ValueError("save needs at least one item")
        _check_item_names(items, "item")
        step = int(step)
        if not force and self._save_every and step % self._save_every:
            return False
        try:
            meta = json.loads(json.dumps(dict(meta, step=step, jdiff_version=_jdiff_version())))
        except (TypeError, ValueError) as error:
            raise ValueError(f"checkpoint meta must be JSON-serialisable: {error}") from error
        self.wait()   # the previous save must be committed before the directory is judged
        self._set_aside_invalid()
        later = [s for s in self._manager.all_steps() if s >= step]
        if later:
            raise CheckpointError(f"cannot save step {step} in {self.directory}: it already has checkpoints "
                                  f"of steps {sorted(later)}; continue from the latest, or use a new "
                                  "directory")
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        args[META_ITEM] = ocp.args.JsonSave(meta)
        return bool(self._manager.save(step, args=ocp.args.Composite(**args), force=True))

    def wait(self) -> None:
        """Blocks until the last save is committed (raises if it failed)."""
        self._manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True at the step all processes agreed on after one was told it will be preempted
        (JAX's coordination service, ``jax.distributed``); always False in a single process
        without ``jax.distributed``. Must be called by every process at the same steps."""
        return self._manager.reached_preemption(step)

    # -- restoring -------------------------------------------------------------------------------

    def _restore_step(self, step: int, targets: Mapping[str, Any], meta_only: bool) -> tuple[dict, dict]:
        problem = self._structural_problem(step)
        if problem:
            raise CheckpointError(problem)
        folder = self._step_dir(step)
        present = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
        missing = [n for n in [META_ITEM, *([] if meta_only else targets)] if n not in present]
        if missing:
            raise CheckpointError(f"has no item(s) {missing} (it has {present})")
        args = {} if meta_only else {n: ocp.args.StandardRestore(t) for n, t in targets.items()}
        args[META_ITEM] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        meta = restored[META_ITEM]
        if not isinstance(meta, dict):
            raise CheckpointError(f"its meta is not a JSON object: {meta!r}")
        return ({} if meta_only else {n: restored[n] for n in targets}), meta

    def restore(self, step: int | None = None, *, targets: Mapping[str, Any] | None = None,
                meta_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the checkpoint of ``step`` (None: the newest usable one) → ``(items, meta)``.

        ``targets`` maps item names to abstract pytrees whose leaves carry the sharding to restore
        into; only those items are read. ``meta_only`` reads just the metadata (``items`` is then
        ``{}``). With ``step=None``, an unusable newest checkpoint is reported with
        ``logging.warning`` and the previous one is tried. Raises :class:`CheckpointError` when
        there is no checkpoint, the named step does not exist, or none is usable.
        """
        if meta_only:
            targets = {}
        elif not targets:
            raise ValueError("restore needs targets={item name: abstract pytree}, or meta_only=True")
        _check_targets(targets)
        self.wait()   # a save of this process still in flight is not yet a checkpoint
        on_disk = sorted(self._manager.all_steps())
        if not on_disk:
            exists = "" if os.path.isdir(self.directory) else " (the directory does not exist)"
            raise CheckpointError(f"no checkpoint in {self.directory}{exists}")
        if step is not None and step not in on_disk:
            raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; available steps: "
                                  f"{self.all_steps()}")
        reasons = {}
        for candidate in [step] if step is not None else on_disk[::-1]:
            try:
                result, error = self._restore_step(candidate, targets, meta_only), None
            except Exception as exc:  # any unreadable part makes the checkpoint unusable
                result, error = None, exc
            if _all_processes_agree(error is None):
                return result
            reason = f"{type(error).__name__}: {error}" if error else "unreadable on another process"
            reasons[candidate] = self._invalid[candidate] = reason.splitlines()[0][:500]
            logging.warning("checkpoint step %d in %s is unusable (%s)%s", candidate, self.directory,
                            reasons[candidate], "" if step is not None else "; trying the previous one")
        raise CheckpointError(f"no usable checkpoint in {self.directory}: " +
                              "; ".join(f"step {s}: {r}" for s, r in reasons.items()))

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for the last save and releases orbax's threads."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def save_converted(directory: str | os.PathLike, params: Any, model_config: Mapping[str, Any], *,
                   meta: Mapping[str, Any] | None = None) -> None:
    """Writes imported weights (e.g. a guided-diffusion checkpoint) as the checkpoint of step 0:
    ``params`` and ``ema_params`` both ``params``, no optimizer state, and meta
    ``{"config": {"model": model_config}, "converted": True, **meta}``. Sampling and evaluation
    restore it like a trained one; resuming training from it is refused (no ``opt_state``)."""
    info = dict(meta or {}, config={"model": dict(model_config)}, converted=True)
    with Checkpointer(directory, keep=1, async_save=False) as checkpointer:
        checkpointer.save(0, {"params": params, "ema_params": params}, info, force=True)


class PreemptionGuard:
    """Turns preemption notices into a clean stop at a step boundary.

    In a single process, entering installs handlers for ``signals`` that only record the signal
    (:attr:`requested`); exiting restores the previous handlers. In a multi-process run no handler
    is installed: a local flag would stop the processes at different steps, and JAX's
    coordination service (``jax.distributed``) already catches SIGTERM on any process and picks
    a step at which all stop together, seen through :meth:`Checkpointer.reached_preemption`.

    The loop calls :meth:`should_stop` after every call of the compiled step with the new step
    number, on every process; when it returns True: save with ``force=True``, :meth:`Checkpointer.wait`,
    exit.
    """

    def __init__(self, checkpointer: Checkpointer, *, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self._checkpointer = checkpointer
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._received: int | None = None
        self._last_step: int | None = None

    def _record(self, signum: int, frame: Any) -> None:
        self._received = signum

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() > 1 or not self._signals:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered in the main thread (Python delivers signals "
                               "there); pass signals=() to rely on jax.distributed's preemption service only")
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, previous in self._previous.items():
            # None: the previous handler was not installed from Python and cannot be reinstated.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """Whether one of ``signals`` arrived while the guard was active."""
        return self._received is not None

    def should_stop(self, step: int) -> bool:
        """True once a stop was requested, locally or by the coordination service.

        JAX's preemption sync point is one past the largest value any process last reported, and
        is reached only by passing exactly that value; with several optimizer steps per call the
        step jumps, so every step since the previous call is reported in order.
        """
        first = step if self._last_step is None else self._last_step + 1
        self._last_step = step
        if any(self._checkpointer.reached_preemption(s) for s in range(first, step + 1)):
            logging.warning("preemption sync point reached at step %d: stopping", step)
            return True
        if self.requested:
            logging.warning("signal %s received: stopping at step %d", signal.Signals(self._received).name,
                            step)
            return True
        return False
