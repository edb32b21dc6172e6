"""Ops that create values from shapes: ``arange_like``.

``arange_like`` gives ``[0, 1, ..., n - 1]`` where ``n`` is one dim of its input, symbolic dims
included: position ids derived from the sequence axis, and the row/column indices a causal mask
compares. Attributes: ``axis`` (the dim, negatives count from the end) and ``dtype`` (``"int32"``
or ``"int64"``). Only the input's shape is read, never its data.

Lowering: a static dim becomes a constant; a symbolic one reads ``Shape(x, start=axis,
end=axis + 1)`` (opset 15 and newer), squeezes it to a scalar and feeds ``Range(0, n, 1)`` (int64,
cast to int32 when asked).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import ShapeInferenceError
from graphbuild.ops.common import cast, int64_constant, normalize_axis, scalar_constant
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register


def _axis_and_dtype(node: Any) -> tuple[int, dtypes.DType]:
    x = node.inputs[0]
    if x.rank == 0:
        raise ShapeInferenceError("the input must be at least 1-D, got a scalar")
    axis = normalize_axis(node.attrs.get("axis", -1), x.rank)
    dtype = dtypes.as_dtype(node.attrs.get("dtype", "int64"))
    if dtype not in dtypes.INTS:
        raise ShapeInferenceError(f"dtype must be int32 or int64, got {dtype}")
    return axis, dtype


def _infer_arange_like(node: Any) -> Sequence[TensorType]:
    axis, dtype = _axis_and_dtype(node)
    return [TensorType(dtype, (node.inputs[0].shape[axis],))]


def _evaluate_arange_like(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    axis, dtype = _axis_and_dtype(node)
    return [np.arange(inputs[0].shape[axis], dtype=dtype.numpy)]


def _lower_arange_like(ctx: LoweringContext, node: Any) -> None:
    axis, dtype = _axis_and_dtype(node)
    x = node.inputs[0]
    out = ctx.name(node.output)
    dim = x.shape[axis]
    if isinstance(dim, int):
        ctx.emit("Identity", [ctx.constant(np.arange(dim, dtype=dtype.numpy), f"{node.name}/values")], [out])
        return
    (extent,) = ctx.emit("Shape", [ctx.name(x)], [ctx.fresh(f"{node.name}/extent")], start=axis, end=axis + 1)
    (count,) = ctx.emit("Squeeze", [extent, int64_constant(ctx, [0], f"{node.name}/axis0")], [ctx.fresh(f"{node.name}/count")])
    zero = scalar_constant(ctx, 0, np.int64, f"{node.name}/zero")
    one = scalar_constant(ctx, 1, np.int64, f"{node.name}/one")
    if dtype == dtypes.int64:
        ctx.emit("Range", [zero, count, one], [out])
        return
    (values,) = ctx.emit("Range", [zero, count, one], [ctx.fresh(f"{node.name}/int64")])
    cast(ctx, values, dtype, "", output=out)


register(
    OpDef(
        "arange_like",
        infer=_infer_arange_like,
        evaluate=_evaluate_arange_like,
        lower=_lower_arange_like,
        doc="0..n-1 where n is dim attrs['axis'] of the input",
    )
)
