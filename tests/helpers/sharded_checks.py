"""What the 4-device helper scripts measure of a sharded computation (imported from the scripts' folder,
which Python puts first on the path of a script)."""

import jax
import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute")


def collectives(compiled_text: str) -> list[str]:
    """The kinds of collective operation a compiled program's text contains (data moved between devices)."""
    return [op for op in COLLECTIVES if op in compiled_text]


def max_diff(got, expected) -> float:
    """The largest absolute difference between two pytrees of arrays, in float32."""
    return max(float(np.max(np.abs(np.asarray(g, np.float32) - np.asarray(e, np.float32))))
               for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)))
