"""Shape ops: ``reshape``, ``transpose``, ``concat``, ``split``, ``slice_tensor``, ``gather``,
``unsqueeze``, ``squeeze`` and ``arange_like`` (indices along a dim).

The slicing function is called ``slice_tensor`` so that it does not shadow Python's ``slice``.
How symbolic dims flow through each op (reshape's ``-1``, derived names such as
``"seq_slice_1_end"`` and ``"past_plus_seq"``) is documented in ``graphbuild.ops.shape``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op
from graphbuild.ir.network import as_value, is_value_like
from graphbuild.ir.value import Dim
from graphbuild.ops.common import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor


def reshape(x: Tensor, shape: Sequence[Dim], *, name: Optional[str] = None) -> Tensor:
    """Gives ``x`` a new shape with the same elements (row-major order).

    Args:
        x: any tensor.
        shape: target dims: non-negative ints, at most one ``-1`` (inferred), or symbol names that
            are dims of ``x`` (``("batch", "seq", 8, 64)`` splits the last axis of
            ``("batch", "seq", 512)``).
        name: the node's name.

    Raises:
        ShapeInferenceError: the element counts differ or cannot be proven equal, or ``-1`` cannot
            be inferred (see ``graphbuild.ops.shape``).
    """
    return add_op("reshape", [x], {"shape": shape}, name=name).output.tensor()


def transpose(x: Tensor, perm: Optional[Sequence[int]] = None, *, name: Optional[str] = None) -> Tensor:
    """Permutes the axes of ``x``: output axis ``i`` is input axis ``perm[i]`` (None reverses them)."""
    return add_op("transpose", [x], {"perm": perm}, name=name).output.tensor()


def concat(tensors: Sequence[Tensor], axis: int = 0, *, name: Optional[str] = None) -> Tensor:
    """Joins tensors of one dtype and rank along ``axis``; their other dims must be equal.

    A symbolic extent along ``axis`` gives a derived symbol: ``past`` and ``seq`` make
    ``"past_plus_seq"``.
    """
    if is_value_like(tensors) or not tensors:
        raise GraphConstructionError(f"concat: expected a non-empty sequence of tensors, got {tensors!r}")
    return add_op("concat", list(tensors), {"axis": axis}, name=name).output.tensor()


def split(x: Tensor, sizes: Union[int, Sequence[int]], axis: int = 0, *, name: Optional[str] = None) -> tuple[Tensor, ...]:
    """Cuts ``x`` into consecutive pieces along a static ``axis``.

    Args:
        x: the tensor to split.
        sizes: each piece's extent along ``axis`` (they must add up to the axis), or an int ``n`` for
            ``n`` equal pieces (the axis must divide by ``n``).
        axis: the axis to cut; its size must be static.
        name: the node's name; the pieces are named ``{name}:0``, ``{name}:1``, ...

    Returns:
        One tensor per piece.
    """
    value = as_value(x)
    if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
        sizes = _equal_parts(value.shape, int(sizes), axis)
    node = add_op("split", [x], {"sizes": sizes, "axis": axis}, name=name)
    return tuple(v.tensor() for v in node.outputs)


def _equal_parts(shape: tuple, parts: int, axis: int) -> tuple[int, ...]:
    if parts < 1:
        raise GraphConstructionError(f"split: the number of pieces must be positive, got {parts}")
    if not -len(shape) <= axis < len(shape):
        raise GraphConstructionError(f"split: axis={axis} is out of range for shape {shape}")
    dim = shape[axis]
    if not isinstance(dim, int) or dim % parts:
        raise GraphConstructionError(f"split: axis {axis} of size {dim!r} does not divide into {parts} equal static pieces; give sizes")
    return (dim // parts,) * parts


def slice_tensor(
    x: Tensor,
    starts: Sequence[Optional[int]],
    ends: Sequence[Optional[int]],
    axes: Optional[Sequence[int]] = None,
    steps: Optional[Sequence[int]] = None,
    *,
    name: Optional[str] = None,
) -> Tensor:
    """A strided slice with numpy semantics: ``x[..., starts[i]:ends[i]:steps[i], ...]``.

    ``slice_tensor(x, [1], [None], axes=[1])`` is ``x[:, 1:]``. Negative bounds count from the end
    and out-of-range bounds clamp, as in numpy.

    Args:
        x: the tensor to slice.
        starts: first index per sliced axis; None means the start (the end for negative steps).
        ends: stop index per sliced axis (exclusive); None means to the end (to the start for
            negative steps).
        axes: the sliced axes (default: the first ``len(starts)`` axes).
        steps: strides per sliced axis, non-zero (default 1).
        name: the node's name.

    Slicing a symbolic dim other than in full gives a derived symbol such as ``"seq_slice_1_end"``
    (see ``graphbuild.ops.shape``).
    """
    count = len(starts)
    step_list = [1] * count if steps is None else list(steps)
    if len(ends) != count or len(step_list) != count:
        raise GraphConstructionError(f"slice_tensor: starts {list(starts)}, ends {list(ends)} and steps {step_list} must have equal lengths")
    start_list = [_bound(s, step, start=True) for s, step in zip(starts, step_list)]
    end_list = [_bound(e, step, start=False) for e, step in zip(ends, step_list)]
    attrs = {"starts": start_list, "ends": end_list, "axes": axes, "steps": step_list}
    return add_op("slice", [x], attrs, name=name).output.tensor()


def _bound(value: Optional[int], step: Any, *, start: bool) -> Any:
    if value is not None:
        return value
    forward = not isinstance(step, (int, np.integer)) or step > 0
    if start:
        return 0 if forward else INT64_MAX
    return INT64_MAX if forward else INT64_MIN


def gather(x: Tensor, indices: Tensor, axis: int = 0, *, name: Optional[str] = None) -> Tensor:
    """Takes entries of ``x`` along ``axis`` at ``indices`` (ONNX ``Gather``).

    The result has shape ``x.shape[:axis] + indices.shape + x.shape[axis + 1:]``. Indices are int32
    or int64; negatives count from the end; indices outside ``[-n, n)`` are an error at run time.
    """
    return add_op("gather", [x, indices], {"axis": axis}, name=name).output.tensor()


def unsqueeze(x: Tensor, axes: Union[int, Sequence[int]], *, name: Optional[str] = None) -> Tensor:
    """Inserts size-1 axes; ``axes`` index the output (``unsqueeze(x, 0)`` prepends one)."""
    axes = (axes,) if isinstance(axes, (int, np.integer)) else axes
    return add_op("unsqueeze", [x], {"axes": axes}, name=name).output.tensor()


def squeeze(x: Tensor, axes: Union[None, int, Sequence[int]] = None, *, name: Optional[str] = None) -> Tensor:
    """Removes size-1 axes: ``axes`` (each must be a static 1), or every static 1 when None.

    Symbolic dims are never squeezed implicitly, even if they are 1 at run time. The node records
    the resolved axes.
    """
    if axes is None:
        axes = tuple(i for i, d in enumerate(as_value(x).shape) if d == 1)
    axes = (axes,) if isinstance(axes, (int, np.integer)) else axes
    return add_op("squeeze", [x], {"axes": axes}, name=name).output.tensor()


def arange_like(x: Tensor, axis: int = -1, dtype: str = "int64", *, name: Optional[str] = None) -> Tensor:
    """``[0, 1, ..., n - 1]`` where ``n = x.shape[axis]``, symbolic dims included.

    Reads only the shape of ``x``: ``arange_like(input_ids, -1)`` gives the position ids of a
    ``[batch, seq]`` input, shape ``(seq,)``.

    Args:
        x: any tensor of rank >= 1.
        axis: the dim to count (negatives count from the end).
        dtype: ``"int64"`` (default) or ``"int32"``.
        name: the node's name.
    """
    return add_op("arange_like", [x], {"axis": axis, "dtype": str(dtype)}, name=name).output.tensor()
