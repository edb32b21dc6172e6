"""Reductions: ``reduce_sum``, ``reduce_mean`` and ``reduce_max`` (see ``graphbuild.ops.reduce``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from graphbuild.functional.attrs import add_op

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor

Axes = Union[None, int, Sequence[int]]


def _reduce(op: str, x: Tensor, axes: Axes, keepdims: bool, name: Optional[str]) -> Tensor:
    if isinstance(axes, (int, np.integer)) and not isinstance(axes, bool):
        axes = (int(axes),)
    return add_op(op, [x], {"axes": axes, "keepdims": keepdims}, name=name).output.tensor()


def reduce_sum(x: Tensor, axes: Axes = None, keepdims: bool = False, *, name: Optional[str] = None) -> Tensor:
    """Sum over ``axes``.

    Args:
        x: float or int input (half floats accumulate in float32).
        axes: an axis or a sequence of axes (negatives count from the end); None reduces all.
        keepdims: keep the reduced axes as size 1.
        name: the node's name.
    """
    return _reduce("reduce_sum", x, axes, keepdims, name)


def reduce_mean(x: Tensor, axes: Axes = None, keepdims: bool = False, *, name: Optional[str] = None) -> Tensor:
    """Mean over ``axes`` (float dtypes; arguments as ``reduce_sum``)."""
    return _reduce("reduce_mean", x, axes, keepdims, name)


def reduce_max(x: Tensor, axes: Axes = None, keepdims: bool = False, *, name: Optional[str] = None) -> Tensor:
    """Maximum over ``axes`` (float and int dtypes; arguments as ``reduce_sum``)."""
    return _reduce("reduce_max", x, axes, keepdims, name)
