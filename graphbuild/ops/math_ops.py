"""Elementwise math: the unary ``sqrt``, ``exp``, ``log``, ``tanh``, ``erf``, ``sigmoid``,
``absolute`` and ``neg``, and the binary ``power``, ``maximum`` and ``minimum``.

Dtypes: ``sqrt``, ``exp``, ``log``, ``tanh``, ``erf``, ``sigmoid`` and ``power`` take floats only;
``absolute``, ``neg``, ``maximum`` and ``minimum`` take floats and ints. Binary ops broadcast like
the arithmetic ops (``graphbuild.ops.common``) and never promote.

Numerics: the float-only ops compute float16 and bfloat16 in float32 and round back once (the
evaluators and the lowerings alike, see ``lower_in_float32``); ``erf`` evaluates in float64 and
rounds to float32 first. ``absolute``, ``neg``, ``maximum`` and ``minimum`` are exact in every
dtype; bfloat16 goes through float32 (exact) because ONNX Runtime's CPU provider has no bfloat16
kernels for them. Domain errors follow IEEE (``sqrt(-1)`` and ``log(-1)`` are NaN, ``log(0)`` is
-inf), as ONNX Runtime does.

Lowerings (opset 17 and newer, unchanged since): ``Sqrt``, ``Exp``, ``Log``, ``Tanh``, ``Erf``,
``Sigmoid``, ``Abs``, ``Neg``, ``Pow``, ``Max``, ``Min``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.ops.common import NUMERIC, broadcast_shapes, from_float32, lower_in_float32, require_dtype, require_same_dtype, to_float32
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register

_erf = np.frompyfunc(math.erf, 1, 1)


def _float_erf(x: np.ndarray) -> np.ndarray:
    return np.asarray(_erf(x.astype(np.float64)), dtype=np.float64).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.float32(1) / (np.float32(1) + np.exp(-x))


# ------------------------------------------------------------------------------------ unary
#: name -> (ONNX op, float32 numpy function, doc); float dtypes only.
_FLOAT_UNARY: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], str]] = {
    "sqrt": ("Sqrt", np.sqrt, "square root (NaN below 0)"),
    "exp": ("Exp", np.exp, "e ** x"),
    "log": ("Log", np.log, "natural logarithm (-inf at 0, NaN below)"),
    "tanh": ("Tanh", np.tanh, "hyperbolic tangent"),
    "erf": ("Erf", _float_erf, "the error function"),
    "sigmoid": ("Sigmoid", _sigmoid, "1 / (1 + exp(-x))"),
}

#: name -> (ONNX op, numpy function, doc); floats and ints, exact.
_EXACT_UNARY: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], str]] = {
    "absolute": ("Abs", np.abs, "|x|"),
    "neg": ("Neg", np.negative, "-x"),
}


def _infer_float_unary(node: Any) -> Sequence[TensorType]:
    (x,) = node.inputs
    require_dtype(x, dtypes.FLOATS, "the input")
    return [TensorType(x.dtype, x.shape)]


def _infer_numeric_unary(node: Any) -> Sequence[TensorType]:
    (x,) = node.inputs
    require_dtype(x, NUMERIC, "the input")
    return [TensorType(x.dtype, x.shape)]


def _evaluate_float_unary(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    function = _FLOAT_UNARY[node.op][1]
    with np.errstate(all="ignore"):
        result = function(to_float32(inputs[0]))
    return [from_float32(result, inputs[0].dtype)]


def _evaluate_exact_unary(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    function = _EXACT_UNARY[node.op][1]
    with np.errstate(all="ignore"):  # abs/neg of the smallest int wrap around, as in ONNX Runtime
        return [np.asarray(function(inputs[0]), dtype=inputs[0].dtype)]


def _lower_unary(onnx_op: str, widen: Sequence[dtypes.DType]) -> Callable[[LoweringContext, Any], None]:
    def lower(ctx: LoweringContext, node: Any) -> None:
        lower_in_float32(ctx, node, node.inputs, lambda ins, out: ctx.emit(onnx_op, ins, [out]), widen=widen)

    return lower


for _name, (_onnx, _fn, _doc) in _FLOAT_UNARY.items():
    register(OpDef(_name, infer=_infer_float_unary, evaluate=_evaluate_float_unary, lower=_lower_unary(_onnx, (dtypes.float16, dtypes.bfloat16)), doc=_doc))
for _name, (_onnx, _fn, _doc) in _EXACT_UNARY.items():
    register(OpDef(_name, infer=_infer_numeric_unary, evaluate=_evaluate_exact_unary, lower=_lower_unary(_onnx, (dtypes.bfloat16,)), doc=_doc))


# ------------------------------------------------------------------------------------ binary
def _infer_binary(allowed: Sequence[dtypes.DType]) -> Callable[[Any], Sequence[TensorType]]:
    def infer(node: Any) -> Sequence[TensorType]:
        a, b = node.inputs
        dtype = require_same_dtype([a, b], "operands")
        require_dtype(a, allowed, "operands")
        return [TensorType(dtype, broadcast_shapes(a.shape, b.shape))]

    return infer


def _evaluate_power(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    a, b = inputs
    with np.errstate(all="ignore"):
        return [from_float32(np.power(to_float32(a), to_float32(b)), a.dtype)]


def _evaluate_extremum(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    a, b = inputs
    function = np.maximum if node.op == "maximum" else np.minimum
    return [np.asarray(function(a, b), dtype=a.dtype)]


def _lower_binary(onnx_op: str, widen: Sequence[dtypes.DType]) -> Callable[[LoweringContext, Any], None]:
    def lower(ctx: LoweringContext, node: Any) -> None:
        lower_in_float32(ctx, node, node.inputs, lambda ins, out: ctx.emit(onnx_op, ins, [out]), widen=widen)

    return lower


register(
    OpDef(
        "power",
        infer=_infer_binary(dtypes.FLOATS),
        evaluate=_evaluate_power,
        lower=_lower_binary("Pow", (dtypes.float16, dtypes.bfloat16)),
        doc="a ** b with broadcasting (floats)",
    )
)
register(OpDef("maximum", infer=_infer_binary(NUMERIC), evaluate=_evaluate_extremum, lower=_lower_binary("Max", (dtypes.bfloat16,)), doc="elementwise max(a, b)"))
register(OpDef("minimum", infer=_infer_binary(NUMERIC), evaluate=_evaluate_extremum, lower=_lower_binary("Min", (dtypes.bfloat16,)), doc="elementwise min(a, b)"))
