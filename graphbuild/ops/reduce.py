"""Reductions: ``reduce_sum``, ``reduce_mean`` and ``reduce_max`` over some axes.

Attributes: ``axes`` (a tuple of ints, negatives count from the end; None reduces every axis) and
``keepdims`` (bool: keep the reduced axes as size 1). Symbolic dims that are not reduced pass
through; reduced ones disappear (or become 1).

Dtypes: ``reduce_sum`` and ``reduce_max`` take floats and ints, ``reduce_mean`` floats only.
float16 and bfloat16 sums and means accumulate in float32 and round back once; ``reduce_max`` is
exact (half types go through float32, which ONNX Runtime's CPU provider needs for bfloat16). Integer
sums wrap around on overflow, as in ONNX Runtime.

Lowerings: ``ReduceSum`` (axes as an input, opset 13 and newer), ``ReduceMean`` and ``ReduceMax``
(axes as an attribute at opset 17, as an input from opset 18). The axes are always listed (an
empty list would mean "every axis" in ONNX); a 0-d input lowers to ``Identity``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import ShapeInferenceError
from graphbuild.ops.common import NUMERIC, from_float32, int64_constant, lower_in_float32, normalize_axes, require_dtype, to_float32
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register

_ALLOWED = {"reduce_sum": NUMERIC, "reduce_mean": dtypes.FLOATS, "reduce_max": NUMERIC}
_ONNX = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax"}
#: The first opset where each ONNX reduction takes its axes as an input.
_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}


def reduced_axes(node: Any) -> tuple[int, ...]:
    """The sorted, normalized axes ``node`` reduces (every axis when ``axes`` is None)."""
    x = node.inputs[0]
    axes = node.attrs.get("axes")
    if axes is None:
        return tuple(range(x.rank))
    return tuple(sorted(normalize_axes(axes, x.rank)))


def _keepdims(node: Any) -> bool:
    keepdims = node.attrs.get("keepdims", False)
    if not isinstance(keepdims, (bool, np.bool_)):
        raise ShapeInferenceError(f"keepdims must be a bool, got {keepdims!r}")
    return bool(keepdims)


def _infer_reduce(node: Any) -> Sequence[TensorType]:
    x = node.inputs[0]
    require_dtype(x, _ALLOWED[node.op], "the input")
    axes = reduced_axes(node)
    keepdims = _keepdims(node)
    for axis in axes:
        if node.op == "reduce_max" and x.shape[axis] == 0:
            raise ShapeInferenceError(f"cannot take the max over axis {axis} of size 0")
    shape = tuple((1 if keepdims else None) if i in axes else d for i, d in enumerate(x.shape))
    return [TensorType(x.dtype, tuple(d for d in shape if d is not None))]


def _evaluate_reduce(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x = inputs[0]
    axes = reduced_axes(node)
    keepdims = _keepdims(node)
    if node.op == "reduce_max":
        return [np.asarray(np.max(x, axis=axes, keepdims=keepdims) if axes else x, dtype=x.dtype)]
    if x.dtype.kind in "iu":
        with np.errstate(over="ignore"):
            return [np.asarray(np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype), dtype=x.dtype)]
    function = np.sum if node.op == "reduce_sum" else np.mean
    result = function(to_float32(x), axis=axes, keepdims=keepdims) if axes else to_float32(x)
    return [from_float32(np.asarray(result, dtype=np.float32), x.dtype)]


def _lower_reduce(ctx: LoweringContext, node: Any) -> None:
    x = node.inputs[0]
    axes = list(reduced_axes(node))
    onnx_op = _ONNX[node.op]
    keepdims = int(_keepdims(node))
    widen = (dtypes.float16, dtypes.bfloat16)

    def body(ins: list[str], out: str) -> None:
        if not axes:
            ctx.emit("Identity", ins, [out])
        elif ctx.opset >= _AXES_INPUT_SINCE[onnx_op]:
            ctx.emit(onnx_op, [ins[0], int64_constant(ctx, axes, f"{node.name}/axes")], [out], keepdims=keepdims)
        else:
            ctx.emit(onnx_op, ins, [out], axes=axes, keepdims=keepdims)

    lower_in_float32(ctx, node, [x], body, widen=widen)


for _op, _doc in (
    ("reduce_sum", "sum over attrs['axes'] (None: all)"),
    ("reduce_mean", "mean over attrs['axes'] (None: all)"),
    ("reduce_max", "max over attrs['axes'] (None: all)"),
):
    register(OpDef(_op, infer=_infer_reduce, evaluate=_evaluate_reduce, lower=_lower_reduce, doc=_doc))
