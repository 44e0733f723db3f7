"""The train state: a plain pytree of arrays, so jit, sharding and orbax see nothing else.

No random key is stored: every step derives its keys from ``fold_in(seed, step)``, so a run resumed
from a checkpoint draws exactly what the uninterrupted run would have drawn.

Parameters, EMA and the optimiser's per-parameter moments are flat vectors (:mod:`jdiff.flat_params`,
for the speed of the update); ``layout`` (static metadata, not an array) unravels them. Checkpoints
hold the trees.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

from jdiff.flat_params import FlatLayout


@struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimiser steps taken
    params: jax.Array        # (layout.size,) float32
    ema_params: jax.Array    # (layout.size,) float32
    opt_state: Any           # the optimiser's state for the flat vector
    sampler_state: Any       # the timestep sampler's loss history, or None for uniform t
    layout: FlatLayout = struct.field(pytree_node=False)

    def params_tree(self) -> Any:
        return self.layout.unravel(self.params)

    def ema_params_tree(self) -> Any:
        return self.layout.unravel(self.ema_params)

    def checkpoint_items(self) -> dict[str, Any]:
        """The named pytrees a checkpoint stores (the step goes into its metadata), as trees shaped like
        the model's parameters; traceable (jit it to save without per-leaf dispatches)."""
        items = dict(params=self.params_tree(), ema_params=self.ema_params_tree(),
                     opt_state=self.layout.unravel_leaves(self.opt_state))
        if self.sampler_state is not None:
            items["sampler_state"] = self.sampler_state
        return items

    def with_checkpoint_items(self, items: dict[str, Any]) -> TrainState:
        """This state with the arrays of :meth:`checkpoint_items` ``items`` (the inverse; the step is
        not among them)."""
        return self.replace(params=self.layout.ravel(items["params"]),
                            ema_params=self.layout.ravel(items["ema_params"]),
                            opt_state=self.layout.ravel_leaves(self.opt_state, items["opt_state"]),
                            sampler_state=items["sampler_state"] if self.sampler_state is not None else None)
