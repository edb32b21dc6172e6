"""Neural-network ops: ``matmul``, ``linear``, the activations ``relu``, ``silu`` and ``gelu``, ``softmax``,
``layer_norm`` and ``rms_norm``.

Numerics: for float16 and bfloat16 inputs, ``matmul``, ``linear``, ``silu``, ``gelu``, ``softmax``,
``layer_norm`` and ``rms_norm`` cast their inputs to float32, compute in float32 (matmul
accumulates in float32; the gelu evaluator uses float64 for erf) and round the result back once; evaluators and lowerings do exactly that,
so engines agree with the reference within float32 rounding. ``relu`` is exact in every dtype.

Lowerings (opset 17 and newer): ``MatMul``; ``linear`` as ``MatMul(x, Transpose(weight))`` (+ ``Add``
of the bias; ONNX Runtime folds the transpose of an initializer when the session loads); ``Relu`` (floats) or ``Max(x, 0)`` (ints); ``Sigmoid`` +
``Mul``; ``Gelu`` (opset 20 and newer, ``approximate`` "none" or "tanh"; its formula in ``Erf`` or
``Tanh`` before that); ``Softmax``; ``LayerNormalization``
(``stash_type=1``); rms_norm composed as ``x / Sqrt(ReduceMean(x * x) + eps) * weight``.

ONNX Runtime 1.31 (CPU provider) has none of these kernels in bfloat16, and no ``Relu``/``MatMul``
for bool or ``Relu`` for int64; it has float16 kernels, but float16 goes through float32 as well so
that engines compute what the evaluators compute. The widening costs two ``Cast`` nodes per op.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import ShapeInferenceError
from graphbuild.ir.value import format_shape
from graphbuild.ops.common import (
    NUMERIC,
    broadcast_shapes,
    from_float32,
    int64_constant,
    lower_in_float32,
    normalize_axis,
    require_dtype,
    require_same_dtype,
    same_dim,
    scalar_constant,
    to_float32,
)
from graphbuild.ops.registry import LoweringContext, OpDef, TensorType, register


def _same_type(node: Any) -> Sequence[TensorType]:
    x = node.inputs[0]
    return [TensorType(x.dtype, x.shape)]


def _infer_float_unary(node: Any) -> Sequence[TensorType]:
    require_dtype(node.inputs[0], dtypes.FLOATS, "the input")
    return _same_type(node)


# ------------------------------------------------------------------------------------ matmul
def _infer_matmul(node: Any) -> Sequence[TensorType]:
    a, b = node.inputs
    dtype = require_same_dtype([a, b], "operands")
    require_dtype(a, NUMERIC, "operands")
    if a.rank == 0 or b.rank == 0:
        raise ShapeInferenceError(f"operands must be at least 1-D, got shapes {format_shape(a.shape)} and {format_shape(b.shape)}")
    a_shape = (1,) + a.shape if a.rank == 1 else a.shape
    b_shape = b.shape + (1,) if b.rank == 1 else b.shape
    if not same_dim(a_shape[-1], b_shape[-2]):
        raise ShapeInferenceError(
            f"contracting dims differ: {a_shape[-1]!r} (last of {format_shape(a.shape)}) vs "
            f"{b_shape[-2]!r} ({'only' if b.rank == 1 else 'second to last'} of {format_shape(b.shape)}); "
            "they must be the same int or the same symbol"
        )
    batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    rows = (a_shape[-2],) if a.rank > 1 else ()
    cols = (b_shape[-1],) if b.rank > 1 else ()
    return [TensorType(dtype, batch + rows + cols)]


def _evaluate_matmul(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    a, b = inputs
    if a.dtype.kind in "iu":
        return [np.asarray(np.matmul(a, b))]
    return [from_float32(np.matmul(to_float32(a), to_float32(b)), a.dtype)]


def _lower_matmul(ctx: LoweringContext, node: Any) -> None:
    lower_in_float32(ctx, node, node.inputs, lambda ins, out: ctx.emit("MatMul", ins, [out]))


register(
    OpDef("matmul", infer=_infer_matmul, evaluate=_evaluate_matmul, lower=_lower_matmul, doc="numpy matmul (batch broadcast, 1-D operands)")
)


# ------------------------------------------------------------------------------------ relu
def _infer_relu(node: Any) -> Sequence[TensorType]:
    require_dtype(node.inputs[0], NUMERIC, "the input")
    return _same_type(node)


def _lower_relu(ctx: LoweringContext, node: Any) -> None:
    (x,) = node.inputs
    if x.dtype.is_int:
        zero = scalar_constant(ctx, 0, x.dtype.numpy, f"{node.name}/zero")
        ctx.emit("Max", [ctx.name(x), zero], [ctx.name(node.output)])
        return
    lower_in_float32(ctx, node, node.inputs, lambda ins, out: ctx.emit("Relu", ins, [out]), widen=(dtypes.bfloat16,))


register(
    OpDef(
        "relu",
        infer=_infer_relu,
        evaluate=lambda node, inputs: [np.asarray(np.maximum(inputs[0], np.zeros((), inputs[0].dtype)))],
        lower=_lower_relu,
        doc="max(x, 0)",
    )
)


# ------------------------------------------------------------------------------------ silu
def _evaluate_silu(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x = to_float32(inputs[0])
    with np.errstate(over="ignore"):
        sigmoid = np.float32(1) / (np.float32(1) + np.exp(-x))
    return [from_float32(x * sigmoid, inputs[0].dtype)]


def _lower_silu(ctx: LoweringContext, node: Any) -> None:
    def body(ins: list[str], out: str) -> None:
        (sigmoid,) = ctx.emit("Sigmoid", ins, [ctx.fresh(f"{node.name}/sigmoid")])
        ctx.emit("Mul", [ins[0], sigmoid], [out])

    lower_in_float32(ctx, node, node.inputs, body)


register(OpDef("silu", infer=_infer_float_unary, evaluate=_evaluate_silu, lower=_lower_silu, doc="x * sigmoid(x)"))


# ------------------------------------------------------------------------------------ gelu
GELU_APPROXIMATIONS = ("none", "tanh")
_erf = np.frompyfunc(math.erf, 1, 1)


def _approximation(node: Any) -> str:
    approximate = node.attrs.get("approximate", "none")
    if approximate not in GELU_APPROXIMATIONS:
        raise ShapeInferenceError(f"approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
    return approximate


def _infer_gelu(node: Any) -> Sequence[TensorType]:
    _approximation(node)
    return _infer_float_unary(node)


def _evaluate_gelu(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x = to_float32(inputs[0]).astype(np.float64)
    if _approximation(node) == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        y = 0.5 * x * (1.0 + np.tanh(inner))
    else:
        y = 0.5 * x * (1.0 + np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64))
    return [from_float32(y.astype(np.float32), inputs[0].dtype)]


def _lower_gelu(ctx: LoweringContext, node: Any) -> None:
    approximate = _approximation(node)
    if ctx.opset >= 20:
        lower_in_float32(ctx, node, node.inputs, lambda ins, out: ctx.emit("Gelu", ins, [out], approximate=approximate))
        return
    tag = node.name

    def composed(ins: list[str], out: str) -> None:  # before opset 20: the formula, in ONNX ops
        (x,) = ins
        if approximate == "tanh":
            (cube,) = ctx.emit("Mul", [x, x], [ctx.fresh(f"{tag}/square")])
            (cube,) = ctx.emit("Mul", [cube, x], [ctx.fresh(f"{tag}/cube")])
            (cube,) = ctx.emit("Mul", [cube, scalar_constant(ctx, 0.044715, np.float32, f"{tag}/c")], [ctx.fresh(f"{tag}/c_cube")])
            (inner,) = ctx.emit("Add", [x, cube], [ctx.fresh(f"{tag}/inner")])
            scale = scalar_constant(ctx, math.sqrt(2.0 / math.pi), np.float32, f"{tag}/sqrt_2_over_pi")
            (inner,) = ctx.emit("Mul", [inner, scale], [ctx.fresh(f"{tag}/scaled")])
            (curve,) = ctx.emit("Tanh", [inner], [ctx.fresh(f"{tag}/tanh")])
        else:
            (scaled,) = ctx.emit("Mul", [x, scalar_constant(ctx, 1.0 / math.sqrt(2.0), np.float32, f"{tag}/rsqrt2")], [ctx.fresh(f"{tag}/scaled")])
            (curve,) = ctx.emit("Erf", [scaled], [ctx.fresh(f"{tag}/erf")])
        (shifted,) = ctx.emit("Add", [curve, scalar_constant(ctx, 1.0, np.float32, f"{tag}/one")], [ctx.fresh(f"{tag}/one_plus")])
        (half_x,) = ctx.emit("Mul", [x, scalar_constant(ctx, 0.5, np.float32, f"{tag}/half")], [ctx.fresh(f"{tag}/half_x")])
        ctx.emit("Mul", [half_x, shifted], [out])

    lower_in_float32(ctx, node, node.inputs, composed)


register(
    OpDef(
        "gelu",
        infer=_infer_gelu,
        evaluate=_evaluate_gelu,
        lower=_lower_gelu,
        doc="0.5 * x * (1 + erf(x / sqrt(2))), or the tanh approximation",
    )
)


# ------------------------------------------------------------------------------------ softmax
def _infer_softmax(node: Any) -> Sequence[TensorType]:
    x = node.inputs[0]
    require_dtype(x, dtypes.FLOATS, "the input")
    if x.rank == 0:
        raise ShapeInferenceError("the input must be at least 1-D, got a scalar")
    normalize_axis(node.attrs.get("axis", -1), x.rank)
    return _same_type(node)


def _evaluate_softmax(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x = to_float32(inputs[0])
    axis = node.attrs.get("axis", -1)
    with np.errstate(invalid="ignore"):
        shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
        y = shifted / np.sum(shifted, axis=axis, keepdims=True)
    return [from_float32(y, inputs[0].dtype)]


def _lower_softmax(ctx: LoweringContext, node: Any) -> None:
    axis = normalize_axis(node.attrs.get("axis", -1), node.inputs[0].rank)
    lower_in_float32(ctx, node, node.inputs, lambda ins, out: ctx.emit("Softmax", ins, [out], axis=axis))


register(OpDef("softmax", infer=_infer_softmax, evaluate=_evaluate_softmax, lower=_lower_softmax, doc="exp(x) / sum(exp(x)) along attrs['axis']"))


# ------------------------------------------------------------------------------------ norms
def _eps(node: Any) -> float:
    eps = node.attrs.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ShapeInferenceError(f"eps must be a non-negative float, got {eps!r}")
    return float(eps)


def _infer_norm(node: Any) -> Sequence[TensorType]:
    x = node.inputs[0]
    params = [v for v in node.inputs[1:] if v is not None]
    require_dtype(x, dtypes.FLOATS, "the input")
    require_same_dtype([x] + params, "the input and its weight/bias")
    _eps(node)
    if x.rank == 0:
        raise ShapeInferenceError("the input must be at least 1-D, got a scalar")
    for what, value in zip(("weight", "bias"), node.inputs[1:]):
        if value is None:
            if what == "weight":
                raise ShapeInferenceError("the weight is required")
            continue
        if value.rank != 1 or not same_dim(value.shape[0], x.shape[-1]):
            raise ShapeInferenceError(
                f"{what} must have shape ({x.shape[-1]},) to match the last axis of input {format_shape(x.shape)}, "
                f"got {format_shape(value.shape)}"
            )
    return _same_type(node)


def _evaluate_layer_norm(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x, weight = to_float32(inputs[0]), to_float32(inputs[1])
    bias = to_float32(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    mean = np.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = np.mean(centered * centered, axis=-1, keepdims=True)
    y = centered / np.sqrt(variance + np.float32(_eps(node))) * weight
    if bias is not None:
        y = y + bias
    return [from_float32(y, inputs[0].dtype)]


def _lower_layer_norm(ctx: LoweringContext, node: Any) -> None:
    eps = _eps(node)
    # An omitted bias is left out, not passed as "": ONNX Runtime 1.31's extended graph optimizer
    # crashes (segfault) on LayerNormalization with a trailing empty input name.
    inputs = [v for v in node.inputs if v is not None]
    lower_in_float32(ctx, node, inputs, lambda ins, out: ctx.emit("LayerNormalization", ins, [out], axis=-1, epsilon=eps, stash_type=1))


register(
    OpDef(
        "layer_norm",
        infer=_infer_norm,
        evaluate=_evaluate_layer_norm,
        lower=_lower_layer_norm,
        doc="(x - mean) / sqrt(var + eps) * weight + bias over the last axis",
    )
)


def _evaluate_rms_norm(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x, weight = to_float32(inputs[0]), to_float32(inputs[1])
    mean_square = np.mean(x * x, axis=-1, keepdims=True)
    y = x / np.sqrt(mean_square + np.float32(_eps(node))) * weight
    return [from_float32(y, inputs[0].dtype)]


def _lower_rms_norm(ctx: LoweringContext, node: Any) -> None:
    tag = node.name

    def body(ins: list[str], out: str) -> None:
        x, weight = ins
        (square,) = ctx.emit("Mul", [x, x], [ctx.fresh(f"{tag}/square")])
        if ctx.opset >= 18:  # axes became an input in opset 18
            last = int64_constant(ctx, [-1], f"{tag}/last_axis")
            (mean,) = ctx.emit("ReduceMean", [square, last], [ctx.fresh(f"{tag}/mean_square")], keepdims=1)
        else:
            (mean,) = ctx.emit("ReduceMean", [square], [ctx.fresh(f"{tag}/mean_square")], axes=[-1], keepdims=1)
        eps = scalar_constant(ctx, _eps(node), np.float32, f"{tag}/eps")
        (shifted,) = ctx.emit("Add", [mean, eps], [ctx.fresh(f"{tag}/plus_eps")])
        (root,) = ctx.emit("Sqrt", [shifted], [ctx.fresh(f"{tag}/rms")])
        (normed,) = ctx.emit("Div", [x, root], [ctx.fresh(f"{tag}/normalized")])
        ctx.emit("Mul", [normed, weight], [out])

    lower_in_float32(ctx, node, node.inputs, body)


register(
    OpDef(
        "rms_norm",
        infer=_infer_norm,
        evaluate=_evaluate_rms_norm,
        lower=_lower_rms_norm,
        doc="x / sqrt(mean(x * x) + eps) * weight over the last axis",
    )
)



# ------------------------------------------------------------------------------------ linear
def _infer_linear(node: Any) -> Sequence[TensorType]:
    x, weight = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    params = [weight] + ([bias] if bias is not None else [])
    dtype = require_same_dtype([x] + params, "the input and its weight/bias")
    require_dtype(x, dtypes.FLOATS, "the input")
    if x.rank == 0:
        raise ShapeInferenceError("the input must be at least 1-D, got a scalar")
    if weight.rank != 2:
        raise ShapeInferenceError(f"weight must be 2-D [out_features, in_features], got {format_shape(weight.shape)}")
    if not same_dim(weight.shape[1], x.shape[-1]):
        raise ShapeInferenceError(
            f"weight {format_shape(weight.shape)} has in_features {weight.shape[1]!r}, but the input "
            f"{format_shape(x.shape)} has {x.shape[-1]!r} on its last axis (weights are [out_features, in_features])"
        )
    if bias is not None and (bias.rank != 1 or not same_dim(bias.shape[0], weight.shape[0])):
        raise ShapeInferenceError(f"bias must have shape ({weight.shape[0]},) (out_features), got {format_shape(bias.shape)}")
    return [TensorType(dtype, x.shape[:-1] + (weight.shape[0],))]


def _evaluate_linear(node: Any, inputs: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    x, weight = to_float32(inputs[0]), to_float32(inputs[1])
    y = np.matmul(x, weight.T)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + to_float32(inputs[2])
    return [from_float32(y, inputs[0].dtype)]


def _lower_linear(ctx: LoweringContext, node: Any) -> None:
    tag = node.name
    inputs = [v for v in node.inputs if v is not None]

    def body(ins: list[str], out: str) -> None:
        (weight_t,) = ctx.emit("Transpose", [ins[1]], [ctx.fresh(f"{tag}/weight_t")], perm=[1, 0])
        if len(ins) == 2:
            ctx.emit("MatMul", [ins[0], weight_t], [out])
            return
        (product,) = ctx.emit("MatMul", [ins[0], weight_t], [ctx.fresh(f"{tag}/matmul")])
        ctx.emit("Add", [product, ins[2]], [out])

    lower_in_float32(ctx, node, inputs, body)


register(
    OpDef(
        "linear",
        infer=_infer_linear,
        evaluate=_evaluate_linear,
        lower=_lower_linear,
        doc="x @ weight.T + bias, weight [out_features, in_features] (PyTorch layout)",
    )
)
