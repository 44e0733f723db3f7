"""One flat vector for a tree of parameters, and back.

The train state keeps the parameters, their EMA and the optimiser's moments each as ONE float32 vector
and unravels the parameters into the model's tree inside the compiled step (one split and reshapes,
which XLA fuses into the bf16 casts that the model applies anyway). The optimiser update and the EMA
then run as a few kernels over 57 M numbers instead of one or more small kernels for each of the
~400 parameter arrays, and the gradient arrives as one vector (the transpose of the split is one
concatenation). On an H200 this cut the ADM CIFAR-10 train step from 4,054 to 2,532 kernels and raised
training from 3,901 to 4,431 img/s (benchmark variant with ``jax.flatten_util.ravel_pytree``, which
splits the same way; docs/benchmarks.md). AdamW, the gradient clip and the EMA are element-wise (the
clip's norm is a sum), so the arithmetic is the same as on the tree.

Checkpoints still hold trees (``params``, ``ema_params``, and an ``opt_state`` whose moments are trees
shaped like the parameters), so their format does not depend on this layout.

Convolution kernels (the tree's 4-D leaves, flax's HWIO) can be stored output-channel first (OHWI), the
filter layout of cuDNN's NHWC convolutions: then the piece of the vector that the step reads is already
in the order the convolution wants, and the transpose back after the reshape cancels against the one
XLA would insert, both for the parameters going in and for the weight gradients coming out
(:func:`preferred_conv_order`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


CONV_ORDERS = ("HWIO", "OHWI")
_OHWI_FROM_HWIO, _HWIO_FROM_OHWI = (3, 0, 1, 2), (1, 2, 3, 0)


def preferred_conv_order() -> str:
    """How convolution kernels are best stored in the vector on the default backend: 'OHWI' on GPUs
    (cuDNN's filter layout; on an H200 this removed the step's ~90 kernel transposes), else flax's 'HWIO'."""
    return "OHWI" if jax.default_backend() == "gpu" else "HWIO"


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """Where each leaf of a parameter tree lives in the flat vector: leaves in ``jax.tree`` order, each
    raveled in C order — 4-D leaves (convolution kernels, HWIO in the tree) first transposed to
    ``conv_order`` — then zeros up to ``size`` (a multiple of ``multiple``, so that the vector splits
    evenly over devices). Hashable, so a train state can carry it as static metadata."""
    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype
    size: int
    conv_order: str = "HWIO"

    @classmethod
    def of(cls, tree: Any, multiple: int = 1, conv_order: str = "HWIO") -> FlatLayout:
        """The layout of ``tree`` (arrays, tracers or ShapeDtypeStructs of one floating dtype), with its
        convolution kernels stored in ``conv_order`` ('HWIO' or 'OHWI')."""
        if conv_order not in CONV_ORDERS:
            raise ValueError(f"conv_order must be one of {CONV_ORDERS}, got {conv_order!r}")
        leaves, treedef = jax.tree.flatten(tree)
        dtypes = {np.dtype(leaf.dtype) for leaf in leaves}
        if len(dtypes) != 1:
            raise ValueError("a flat parameter vector needs one dtype for all parameters, got "
                             f"{sorted(map(str, dtypes))}: "
                             "keep config.model's parameters in one dtype (float32)")
        count = sum(math.prod(leaf.shape) for leaf in leaves)
        return cls(treedef, tuple(tuple(leaf.shape) for leaf in leaves), dtypes.pop(),
                   -(-count // multiple) * multiple, conv_order)

    def _stored(self, shape: tuple[int, ...]) -> bool:
        return self.conv_order == "OHWI" and len(shape) == 4

    @property
    def num_params(self) -> int:
        """Parameters in the tree (the vector's length without its padding)."""
        return sum(math.prod(shape) for shape in self.shapes)

    def ravel(self, tree: Any) -> jax.Array:
        """The vector (``size``,) of a tree with this layout's structure and shapes."""
        leaves = self.treedef.flatten_up_to(tree)
        shapes = tuple(tuple(leaf.shape) for leaf in leaves)
        if shapes != self.shapes:
            wrong = next(i for i, (a, b) in enumerate(zip(shapes, self.shapes)) if a != b)
            raise ValueError(f"parameter {wrong} has shape {shapes[wrong]}, "
                             f"the layout expects {self.shapes[wrong]}")
        stored = [jnp.transpose(leaf, _OHWI_FROM_HWIO) if self._stored(shape) else leaf
                  for leaf, shape in zip(leaves, shapes)]
        vector = jnp.concatenate([jnp.ravel(leaf).astype(self.dtype) for leaf in stored])
        return jnp.pad(vector, (0, self.size - self.num_params))

    def unravel(self, vector: jax.Array) -> Any:
        """The tree whose leaves are the vector's consecutive pieces (padding dropped)."""
        if tuple(vector.shape) != (self.size,):
            raise ValueError(f"expected a flat vector of shape ({self.size},), got {tuple(vector.shape)}")
        # One split, not a slice per leaf: the gradient of a split is one concatenation, that of a slice a
        # pad to the full vector (hundreds of full-size pads and adds in the backward pass).
        ends = np.cumsum([math.prod(shape) for shape in self.shapes])
        pieces = jnp.split(vector, [int(end) for end in ends])[:len(self.shapes)]
        return self.treedef.unflatten([
            piece.reshape(np.take(shape, _OHWI_FROM_HWIO)).transpose(_HWIO_FROM_OHWI) if self._stored(shape)
            else piece.reshape(shape) for piece, shape in zip(pieces, self.shapes)])

    def is_flat(self, leaf: Any) -> bool:
        """Whether ``leaf`` is one of this layout's vectors (e.g. an Adam moment of a flat state)."""
        return tuple(getattr(leaf, "shape", ())) == (self.size,)

    def unravel_leaves(self, tree: Any) -> Any:
        """``tree`` with each flat vector among its leaves replaced by the parameter tree it holds."""
        return jax.tree.map(lambda leaf: self.unravel(leaf) if self.is_flat(leaf) else leaf, tree)

    def ravel_leaves(self, template: Any, tree: Any) -> Any:
        """The inverse of :meth:`unravel_leaves`: ``tree`` has ``template``'s structure, except that
        where ``template`` has a flat vector it has a parameter tree, which is raveled."""
        return jax.tree.map(lambda leaf, sub: self.ravel(sub) if self.is_flat(leaf) else sub, template, tree)
