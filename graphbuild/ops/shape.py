"""Shape ops: ``reshape``, ``transpose``, ``concat``, ``split``, ``slice``, ``gather``,
``unsqueeze`` and ``squeeze``. They move data without arithmetic, so every dtype is exact and
ONNX Runtime's CPU kernels cover all six.

Attributes (plain data) and symbolic-dim rules:

- ``reshape``: ``shape`` entries are non-negative ints, at most one ``-1``, or symbol names that
  are dims of the input. ``0`` means a zero-sized dim (numpy semantics, ONNX ``allowzero=1``).
  Without ``-1`` the element counts must provably agree: the symbols of input and target must be
  the same multiset and the int products equal. ``-1`` is inferred from a static input, or from a
  symbolic one when every symbol of the input appears in the target (then ``-1`` = int product of
  the input / int product of the target, which must divide). The lowering builds the shape tensor
  at run time (``Shape`` + ``Gather`` for symbols, ``Concat`` with constants).
- ``transpose``: ``perm`` (None reverses the axes). ``concat``: ``axis``; other dims must be the
  same int or symbol; along ``axis`` ints add up, and symbols give the derived name
  ``"a_plus_b"`` (ints summed last: ``"seq_plus_1"``).
- ``split``: ``sizes`` (ints) and ``axis``; the axis must be static and the sizes must add up to it.
- ``slice``: ``starts``, ``ends``, ``axes``, ``steps`` (ints; numpy semantics, negatives count
  from the end, ``INT64_MAX``/``INT64_MIN`` mean "to the end" for positive/negative steps).
  Static dims give static results. A symbolic dim sliced in full (step 1 from 0 to the end, or
  step -1 from the end to the beginning) keeps its symbol; any other slice of a symbolic dim gives
  the derived symbol ``"{dim}_slice_{start}_{end}[_step{step}]"``, where negatives are written
  ``m3`` and the extremes ``end``/``begin`` (``seq[1:]`` is ``"seq_slice_1_end"``): the same slice
  of the same dim gives the same symbol, so shapes derived from it stay comparable. One engine
  deviation: on a symbolic dim, a negative step starting before the beginning at run time (say
  ``start=-5`` on a dim of 3) selects nothing in numpy but starts at index 0 in ONNX ``Slice``;
  static dims are exact.
- ``gather``: ``axis``; ONNX ``Gather`` semantics, int32/int64 indices, negatives count from the
  end; indices outside ``[-n, n)`` are an error naming the first one and its position.
- ``unsqueeze``: ``axes`` into the output. ``squeeze``: ``axes`` (None: every static 1); a squeezed
  dim must be a static 1.
"""

from __future__ import annotations

import collections
from typing import Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import ExecutionError, ShapeInferenceError
from graphbuild.ir.value import Dim, Shape, format_shape
from graphbuild.ops.common import (
    INT64_MAX,
    INT64_MIN,
    check_int,
    check_ints,
    dim_product,
    int64_constant,
    normalize_axes,
    normalize_axis,
    require_dtype,
    require_same_dtype,
    same_dim,
    shape_tensor,
)
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register


def _first(node: Any) -> Any:
    return node.inputs[0]


# ------------------------------------------------------------------------------------ reshape
def reshape_result(source: Shape, target: Sequence[Any]) -> Shape:
    """The output shape of reshaping ``source`` to ``target`` under the rules of this module."""
    dims: list[Dim] = []
    for entry in target:
        if isinstance(entry, str):
            if entry not in source:
                raise ShapeInferenceError(f"target symbol {entry!r} is not a dim of the input {format_shape(source)}")
            dims.append(entry)
        else:
            value = check_int(entry, "a target dim")
            if value < -1:
                raise ShapeInferenceError(f"target dims must be >= -1, got {value} in {list(target)}")
            dims.append(value)
    if dims.count(-1) > 1:
        raise ShapeInferenceError(f"at most one target dim may be -1, got {list(target)}")
    source_static, source_symbols = dim_product(source)
    target_static, target_symbols = dim_product([d for d in dims if d != -1])
    source_count, target_count = collections.Counter(source_symbols), collections.Counter(target_symbols)
    described = f"{format_shape(source)} to {list(target)}"
    if -1 not in dims:
        if source_count != target_count or source_static != target_static:
            raise ShapeInferenceError(
                f"cannot reshape {described}: element counts differ or cannot be proven equal "
                "(symbols must appear in both, the int dims must have the same product)"
            )
        return tuple(dims)
    missing, extra = source_count - target_count, target_count - source_count
    if missing or extra:
        problem = (
            f"symbolic dims {sorted(missing.elements())} of the input are not in the target"
            if missing
            else f"symbols {sorted(extra.elements())} appear more often in the target than in the input"
        )
        raise ShapeInferenceError(f"cannot infer -1 reshaping {described}: {problem}")
    if target_static == 0 or source_static % target_static:
        raise ShapeInferenceError(f"cannot reshape {described}: {source_static} elements do not divide into groups of {target_static}")
    inferred = source_static // target_static
    return tuple(inferred if d == -1 else d for d in dims)


def _target(node: Any) -> list[Any]:
    shape = node.attrs.get("shape")
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise ShapeInferenceError(f"attribute 'shape' must be a sequence of ints and symbol names, got {shape!r}")
    return list(shape)


def _infer_reshape(node: Any) -> Sequence[TensorType]:
    x = _first(node)
    return [TensorType(x.dtype, reshape_result(x.shape, _target(node)))]


def _evaluate_reshape(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x = inputs[0]
    sizes = {}
    for dim, size in zip(node.inputs[0].shape, x.shape):
        sizes.setdefault(dim, size)
    target = [sizes[e] if isinstance(e, str) else e for e in _target(node)]
    return [x.reshape(target)]


def _lower_reshape(ctx: LoweringContext, node: Any) -> None:
    x = _first(node)
    shape = shape_tensor(ctx, x, node.output.shape, f"{node.name}/shape")
    ctx.emit("Reshape", [ctx.name(x), shape], [ctx.name(node.output)], allowzero=1)


register(OpDef("reshape", infer=_infer_reshape, evaluate=_evaluate_reshape, lower=_lower_reshape, doc="new shape, same elements"))


# ------------------------------------------------------------------------------------ transpose
def _perm(node: Any) -> tuple[int, ...]:
    rank = _first(node).rank
    perm = node.attrs.get("perm")
    if perm is None:
        return tuple(reversed(range(rank)))
    axes = normalize_axes(perm, rank, "perm")
    if len(axes) != rank:
        raise ShapeInferenceError(f"perm {list(perm)} must name each of the {rank} axes once")
    return axes


def _infer_transpose(node: Any) -> Sequence[TensorType]:
    x = _first(node)
    return [TensorType(x.dtype, tuple(x.shape[a] for a in _perm(node)))]


def _lower_transpose(ctx: LoweringContext, node: Any) -> None:
    ctx.emit("Transpose", [ctx.name(_first(node))], [ctx.name(node.output)], perm=list(_perm(node)))


register(
    OpDef(
        "transpose",
        infer=_infer_transpose,
        evaluate=lambda node, inputs: [np.transpose(inputs[0], _perm(node))],
        lower=_lower_transpose,
        doc="permutes the axes (default: reversed)",
    )
)


# ------------------------------------------------------------------------------------ concat
def _infer_concat(node: Any) -> Sequence[TensorType]:
    values = list(node.inputs)
    if not values:
        raise ShapeInferenceError("needs at least one tensor")
    dtype = require_same_dtype(values, "the inputs")
    rank = values[0].rank
    if any(v.rank != rank for v in values):
        raise ShapeInferenceError(f"inputs must share one rank, got shapes {', '.join(format_shape(v.shape) for v in values)}")
    if rank == 0:
        raise ShapeInferenceError("cannot concatenate 0-d tensors")
    axis = normalize_axis(node.attrs.get("axis"), rank)
    first = values[0].shape
    for value in values[1:]:
        for i in range(rank):
            if i != axis and not same_dim(first[i], value.shape[i]):
                raise ShapeInferenceError(
                    f"dims off the concat axis {axis} must match: {format_shape(first)} vs {format_shape(value.shape)} differ at axis {i}"
                )
    static, symbols = 0, []
    for value in values:
        dim = value.shape[axis]
        if isinstance(dim, int):
            static += dim
        else:
            symbols.append(dim)
    total: Dim = "_plus_".join(symbols + ([str(static)] if static else [])) if symbols else static
    return [TensorType(dtype, first[:axis] + (total,) + first[axis + 1 :])]


def _lower_concat(ctx: LoweringContext, node: Any) -> None:
    axis = normalize_axis(node.attrs["axis"], node.inputs[0].rank)
    ctx.emit("Concat", [ctx.name(v) for v in node.inputs], [ctx.name(node.output)], axis=axis)


register(
    OpDef(
        "concat",
        infer=_infer_concat,
        evaluate=lambda node, inputs: [np.concatenate(list(inputs), axis=node.attrs["axis"])],
        lower=_lower_concat,
        doc="joins tensors along attrs['axis']",
    )
)


# ------------------------------------------------------------------------------------ split
def _split_axis_and_sizes(node: Any) -> tuple[int, tuple[int, ...]]:
    x = _first(node)
    if x.rank == 0:
        raise ShapeInferenceError("cannot split a 0-d tensor")
    axis = normalize_axis(node.attrs.get("axis"), x.rank)
    sizes = check_ints(node.attrs.get("sizes"), "sizes")
    if not sizes or any(s < 0 for s in sizes):
        raise ShapeInferenceError(f"sizes must be a non-empty list of non-negative ints, got {list(sizes)}")
    dim = x.shape[axis]
    if not isinstance(dim, int):
        raise ShapeInferenceError(f"axis {axis} of {format_shape(x.shape)} is symbolic ({dim!r}); split needs a static axis")
    if sum(sizes) != dim:
        raise ShapeInferenceError(f"sizes {list(sizes)} add up to {sum(sizes)}, but axis {axis} of {format_shape(x.shape)} is {dim}")
    return axis, sizes


def _infer_split(node: Any) -> Sequence[TensorType]:
    x = _first(node)
    axis, sizes = _split_axis_and_sizes(node)
    return [TensorType(x.dtype, x.shape[:axis] + (s,) + x.shape[axis + 1 :]) for s in sizes]


def _evaluate_split(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    axis, sizes = _split_axis_and_sizes(node)
    return list(np.split(inputs[0], np.cumsum(sizes)[:-1], axis=axis))


def _lower_split(ctx: LoweringContext, node: Any) -> None:
    axis, sizes = _split_axis_and_sizes(node)
    split = int64_constant(ctx, sizes, f"{node.name}/sizes")
    ctx.emit("Split", [ctx.name(_first(node)), split], [ctx.name(v) for v in node.outputs], axis=axis)


register(OpDef("split", infer=_infer_split, evaluate=_evaluate_split, lower=_lower_split, doc="cuts a tensor into pieces along a static axis"))


# ------------------------------------------------------------------------------------ slice
def _slice_spec(node: Any) -> list[tuple[int, int, int, int]]:
    """``(axis, start, end, step)`` per sliced axis, validated."""
    x = _first(node)
    starts = check_ints(node.attrs.get("starts"), "starts")
    ends = check_ints(node.attrs.get("ends"), "ends")
    axes_attr = node.attrs.get("axes")
    axes = tuple(range(len(starts))) if axes_attr is None else normalize_axes(axes_attr, x.rank)
    steps_attr = node.attrs.get("steps")
    steps = (1,) * len(starts) if steps_attr is None else check_ints(steps_attr, "steps")
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeInferenceError(
            f"starts {list(starts)}, ends {list(ends)}, axes {list(axes)} and steps {list(steps)} must have equal lengths"
        )
    if len(axes) > x.rank:
        raise ShapeInferenceError(f"{len(axes)} slices for a rank-{x.rank} input")
    for value in starts + ends:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ShapeInferenceError(f"start/end {value} does not fit in int64")
    if 0 in steps:
        raise ShapeInferenceError(f"steps must be non-zero, got {list(steps)}")
    return list(zip(axes, starts, ends, steps))


def _token(value: int) -> str:
    if value >= INT64_MAX:
        return "end"
    if value <= INT64_MIN:
        return "begin"
    return f"m{-value}" if value < 0 else str(value)


def sliced_dim(dim: Dim, start: int, end: int, step: int) -> Dim:
    """The extent of ``dim[start:end:step]`` (symbolic dims: see the module docstring)."""
    if isinstance(dim, int):
        return len(range(*slice(start, end, step).indices(dim)))
    if (step == 1 and start == 0 and end >= INT64_MAX) or (step == -1 and start in (-1, INT64_MAX) and end <= INT64_MIN):
        return dim
    suffix = "" if step == 1 else f"_step{_token(step)}"
    return f"{dim}_slice_{_token(start)}_{_token(end)}{suffix}"


def _infer_slice(node: Any) -> Sequence[TensorType]:
    x = _first(node)
    shape = list(x.shape)
    for axis, start, end, step in _slice_spec(node):
        shape[axis] = sliced_dim(shape[axis], start, end, step)
    return [TensorType(x.dtype, tuple(shape))]


def _evaluate_slice(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    index = [slice(None)] * inputs[0].ndim
    for axis, start, end, step in _slice_spec(node):
        index[axis] = slice(start, end, step)
    return [inputs[0][tuple(index)]]


def _onnx_bounds(dim: Dim, start: int, end: int, step: int) -> tuple[int, int]:
    """Bounds for ONNX ``Slice`` that select what numpy selects.

    The two differ in one case: a negative step whose start lies before the beginning selects
    nothing in numpy, while ONNX clamps the start to 0. Static dims are normalized here; for a
    symbolic dim the bounds pass through unchanged (documented deviation).
    """
    if not isinstance(dim, int) or step > 0:
        return start, end
    first, stop, _ = slice(start, end, step).indices(dim)
    if first < 0:
        return 0, 0
    return first, INT64_MIN if stop < 0 else stop


def _lower_slice(ctx: LoweringContext, node: Any) -> None:
    spec = _slice_spec(node)
    if not spec:
        ctx.emit("Identity", [ctx.name(_first(node))], [ctx.name(node.output)])
        return
    x = _first(node)
    spec = [(axis, *_onnx_bounds(x.shape[axis], start, end, step), step) for axis, start, end, step in spec]
    axes, starts, ends, steps = (list(column) for column in zip(*spec))
    names = [int64_constant(ctx, values, f"{node.name}/{what}") for what, values in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
    ctx.emit("Slice", [ctx.name(_first(node))] + names, [ctx.name(node.output)])


register(OpDef("slice", infer=_infer_slice, evaluate=_evaluate_slice, lower=_lower_slice, doc="numpy-style strided slice along some axes"))


# ------------------------------------------------------------------------------------ gather
def _infer_gather(node: Any) -> Sequence[TensorType]:
    x, indices = node.inputs
    require_dtype(indices, dtypes.INTS, "indices")
    if x.rank == 0:
        raise ShapeInferenceError("cannot gather from a 0-d tensor")
    axis = normalize_axis(node.attrs.get("axis"), x.rank)
    return [TensorType(x.dtype, x.shape[:axis] + indices.shape + x.shape[axis + 1 :])]


def _evaluate_gather(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x, indices = inputs
    axis = normalize_axis(node.attrs["axis"], x.ndim)
    size = x.shape[axis]
    flat = indices.reshape(-1)
    bad = (flat < -size) | (flat >= size)
    if bad.any():
        position = int(np.argmax(bad))
        raise ExecutionError(
            f"{node.describe()}: index {int(flat[position])} at flat position {position} is outside [{-size}, {size}) for axis {axis}"
        )
    return [np.asarray(np.take(x, indices.astype(np.int64), axis=axis))]


def _lower_gather(ctx: LoweringContext, node: Any) -> None:
    x, indices = node.inputs
    axis = normalize_axis(node.attrs["axis"], x.rank)
    ctx.emit("Gather", [ctx.name(x), ctx.name(indices)], [ctx.name(node.output)], axis=axis)


register(OpDef("gather", infer=_infer_gather, evaluate=_evaluate_gather, lower=_lower_gather, doc="takes entries along an axis by index (ONNX Gather)"))


# ------------------------------------------------------------------------------------ unsqueeze
def _unsqueeze_axes(node: Any) -> tuple[int, ...]:
    axes = node.attrs.get("axes")
    return tuple(sorted(normalize_axes(axes, _first(node).rank + len(check_ints(axes, "axes")))))


def _infer_unsqueeze(node: Any) -> Sequence[TensorType]:
    x = _first(node)
    dims = list(x.shape)
    for axis in _unsqueeze_axes(node):
        dims.insert(axis, 1)
    return [TensorType(x.dtype, tuple(dims))]


def _lower_axes_op(onnx_op: str, axes_of: Any) -> Any:
    """Lowers to ``onnx_op(x, axes)``, or ``Identity`` when there are no axes (ONNX reads an empty
    ``axes`` of Squeeze as "every size-1 axis", which would include symbolic dims that happen to be 1)."""

    def lower(ctx: LoweringContext, node: Any) -> None:
        axes = axes_of(node)
        x, out = ctx.name(_first(node)), ctx.name(node.output)
        if not axes:
            ctx.emit("Identity", [x], [out])
            return
        ctx.emit(onnx_op, [x, int64_constant(ctx, axes, f"{node.name}/axes")], [out])

    return lower


register(
    OpDef(
        "unsqueeze",
        infer=_infer_unsqueeze,
        evaluate=lambda node, inputs: [np.expand_dims(inputs[0], _unsqueeze_axes(node))],
        lower=_lower_axes_op("Unsqueeze", _unsqueeze_axes),
        doc="inserts size-1 axes at attrs['axes'] of the output",
    )
)


# ------------------------------------------------------------------------------------ squeeze
def _squeeze_axes(node: Any) -> tuple[int, ...]:
    x = _first(node)
    axes = node.attrs.get("axes")
    if axes is None:
        return tuple(i for i, d in enumerate(x.shape) if d == 1)
    result = tuple(sorted(normalize_axes(axes, x.rank)))
    for axis in result:
        if x.shape[axis] != 1:
            raise ShapeInferenceError(f"axis {axis} of {format_shape(x.shape)} has size {x.shape[axis]!r}; only static size-1 axes can be squeezed")
    return result


def _infer_squeeze(node: Any) -> Sequence[TensorType]:
    x = _first(node)
    axes = _squeeze_axes(node)
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


register(
    OpDef(
        "squeeze",
        infer=_infer_squeeze,
        evaluate=lambda node, inputs: [np.squeeze(inputs[0], _squeeze_axes(node))],
        lower=_lower_axes_op("Squeeze", _squeeze_axes),
        doc="removes size-1 axes (attrs['axes'], or every static 1)",
    )
)
