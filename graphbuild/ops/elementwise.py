"""Elementwise ops: ``add``, ``sub``, ``mul``, ``div``, the comparisons ``equal`` and ``less``,
``where``, ``cast`` and ``identity``.

Binary ops broadcast with numpy rules extended to symbolic dims (``graphbuild.ops.common``) and
never promote: both operands must have the same dtype (the functional layer turns Python scalars
into constants of the other operand's dtype).

ONNX Runtime's CPU provider has no bfloat16 kernels for Add/Sub/Mul/Div/Equal/Less/Where and no
bool kernel for Where, so those cases are lowered through a wider type: bfloat16 is computed in
float32 and rounded back once, which for a single +, -, *, / gives the same bits as a correctly
rounded bfloat16 operation (and what ml_dtypes computes); comparisons and ``where`` are exact after
the widening. Integer ``div`` truncates toward zero (ONNX semantics, unlike numpy's floor
division); dividing an integer by zero is an error in the reference and in ONNX Runtime alike.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import ExecutionError, ShapeInferenceError
from graphbuild.ops.common import NUMERIC, broadcast_shapes, cast, require_dtype, require_same_dtype
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register


# ------------------------------------------------------------------------------------ arithmetic
def _infer_arithmetic(node: Any) -> Sequence[TensorType]:
    a, b = node.inputs
    dtype = require_same_dtype([a, b], "operands")
    require_dtype(a, NUMERIC, "operands")
    return [TensorType(dtype, broadcast_shapes(a.shape, b.shape))]


def _divide(node: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float division, or integer division truncating toward zero like ONNX ``Div``."""
    if a.dtype.kind == "f" or a.dtype == dtypes.bfloat16.numpy:
        return np.divide(a, b)
    if not np.all(b):
        raise ExecutionError(f"{node.describe()}: integer division by zero")
    quotient = np.floor_divide(a, b)
    rounded_down = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return quotient + rounded_down.astype(a.dtype)


_NUMPY_ARITHMETIC = {
    "add": lambda node, a, b: np.add(a, b),
    "sub": lambda node, a, b: np.subtract(a, b),
    "mul": lambda node, a, b: np.multiply(a, b),
    "div": _divide,
}


def _evaluate_arithmetic(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    a, b = inputs
    with np.errstate(all="ignore"):
        result = _NUMPY_ARITHMETIC[node.op](node, a, b)
    return [np.asarray(result, dtype=a.dtype)]


def _lower_binary(onnx_op: str) -> Any:
    """Lowers to ``onnx_op``; operands without an ONNX Runtime CPU kernel are widened first.

    bfloat16 goes through float32 and the result is cast back to the output dtype (bool for the
    comparisons, bfloat16 otherwise).
    """

    def lower(ctx: LoweringContext, node: Any) -> None:
        a, b = node.inputs
        out = ctx.name(node.output)
        if a.dtype != dtypes.bfloat16:
            ctx.emit(onnx_op, [ctx.name(a), ctx.name(b)], [out])
            return
        wide = [cast(ctx, ctx.name(v), dtypes.float32, f"{node.name}/{v.name}_f32") for v in (a, b)]
        if node.output.dtype == dtypes.bool_:
            ctx.emit(onnx_op, wide, [out])
            return
        (result,) = ctx.emit(onnx_op, wide, [ctx.fresh(f"{node.name}/out_f32")])
        cast(ctx, result, node.output.dtype, "", output=out)

    return lower


for _op, _onnx, _doc in (
    ("add", "Add", "a + b with broadcasting"),
    ("sub", "Sub", "a - b with broadcasting"),
    ("mul", "Mul", "a * b with broadcasting"),
    ("div", "Div", "a / b with broadcasting (integers truncate toward zero)"),
):
    register(OpDef(_op, infer=_infer_arithmetic, evaluate=_evaluate_arithmetic, lower=_lower_binary(_onnx), doc=_doc))


# ------------------------------------------------------------------------------------ comparisons
def _infer_comparison(node: Any) -> Sequence[TensorType]:
    a, b = node.inputs
    require_same_dtype([a, b], "operands")
    require_dtype(a, dtypes.ALL if node.op == "equal" else NUMERIC, "operands")
    return [TensorType(dtypes.bool_, broadcast_shapes(a.shape, b.shape))]


def _evaluate_comparison(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    a, b = inputs
    compare = np.equal if node.op == "equal" else np.less
    return [np.asarray(compare(a, b), dtype=np.bool_)]


register(OpDef("equal", infer=_infer_comparison, evaluate=_evaluate_comparison, lower=_lower_binary("Equal"), doc="a == b elementwise, bool result"))
register(OpDef("less", infer=_infer_comparison, evaluate=_evaluate_comparison, lower=_lower_binary("Less"), doc="a < b elementwise, bool result"))


# ------------------------------------------------------------------------------------ where
def _infer_where(node: Any) -> Sequence[TensorType]:
    condition, x, y = node.inputs
    if condition.dtype != dtypes.bool_:
        raise ShapeInferenceError(f"the condition must be bool, got {condition.dtype} (compare with equal/less, or cast)")
    dtype = require_same_dtype([x, y], "the two branches")
    return [TensorType(dtype, broadcast_shapes(condition.shape, x.shape, y.shape))]


def _evaluate_where(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    condition, x, y = inputs
    return [np.asarray(np.where(condition, x, y), dtype=x.dtype)]


#: Where has no ONNX Runtime CPU kernel for these; they go through an exact wider type.
_WHERE_WIDENED = {dtypes.bfloat16: dtypes.float32, dtypes.bool_: dtypes.int32}


def _lower_where(ctx: LoweringContext, node: Any) -> None:
    condition, x, y = node.inputs
    out = ctx.name(node.output)
    wide_dtype = _WHERE_WIDENED.get(x.dtype)
    if wide_dtype is None:
        ctx.emit("Where", [ctx.name(condition), ctx.name(x), ctx.name(y)], [out])
        return
    x_wide, y_wide = (cast(ctx, ctx.name(v), wide_dtype, f"{node.name}/{v.name}_{wide_dtype}") for v in (x, y))
    (result,) = ctx.emit("Where", [ctx.name(condition), x_wide, y_wide], [ctx.fresh(f"{node.name}/out_{wide_dtype}")])
    cast(ctx, result, x.dtype, "", output=out)


register(OpDef("where", infer=_infer_where, evaluate=_evaluate_where, lower=_lower_where, doc="condition ? x : y with broadcasting"))


# ------------------------------------------------------------------------------------ cast
def _target(node: Any) -> dtypes.DType:
    try:
        return dtypes.as_dtype(node.attrs["to"])
    except KeyError:
        raise ShapeInferenceError("attribute 'to' (the target dtype name) is missing") from None


def _infer_cast(node: Any) -> Sequence[TensorType]:
    (x,) = node.inputs
    return [TensorType(_target(node), x.shape)]


def _evaluate_cast(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    with np.errstate(all="ignore"):
        return [inputs[0].astype(_target(node).numpy)]


def _lower_cast(ctx: LoweringContext, node: Any) -> None:
    cast(ctx, ctx.name(node.inputs[0]), _target(node), "", output=ctx.name(node.output))


register(
    OpDef(
        "cast",
        infer=_infer_cast,
        evaluate=_evaluate_cast,
        lower=_lower_cast,
        doc="converts to attrs['to'] (round to nearest even; floats to ints truncate toward zero)",
    )
)


# ------------------------------------------------------------------------------------ identity
def _infer_identity(node: Any) -> Sequence[TensorType]:
    (x,) = node.inputs
    return [TensorType(x.dtype, x.shape)]


def _lower_identity(ctx: LoweringContext, node: Any) -> None:
    ctx.emit("Identity", [ctx.name(node.inputs[0])], [ctx.name(node.output)])


register(
    OpDef(
        "identity",
        infer=_infer_identity,
        evaluate=lambda node, inputs: [inputs[0]],
        lower=_lower_identity,
        doc="passes its input through unchanged",
    )
)
