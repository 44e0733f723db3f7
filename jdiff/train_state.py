"""The train state: a plain pytree of arrays, so jit, sharding and orbax see nothing else.

No random key is stored: every step derives its keys from ``fold_in(seed, step)``, so a run resumed
from a checkpoint draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimiser steps taken
    params: Any
    ema_params: Any
    opt_state: Any
    sampler_state: Any       # the timestep sampler's loss history, or None for uniform t

    def checkpoint_items(self) -> dict[str, Any]:
        """The named pytrees a checkpoint stores (the step goes into its metadata)."""
        items = dict(params=self.params, ema_params=self.ema_params, opt_state=self.opt_state)
        if self.sampler_state is not None:
            items["sampler_state"] = self.sampler_state
        return items
