"""Helpers shared by the core op families: symbolic broadcasting, attribute checks, float32
compute for narrow floats, and small ONNX lowering building blocks.

Symbolic dims follow one set of rules everywhere (``broadcast_shapes``, ``same_dim``):

- broadcasting (numpy rules, aligned from the right): ``1`` vs ``d`` gives ``d``; equal dims give
  themselves; a symbol vs an int other than 1 gives the int (the symbol is assumed to take that
  value at run time, which ONNX Runtime checks); two different ints (neither 1) or two different
  symbols are an error;
- dims that must be equal without broadcasting (matmul's contracting dims, concat's other axes,
  norm weights) must be the same int or the same symbol name.

float16 and bfloat16 transcendental, normalization and matmul ops compute in float32 and round
the result back once; the evaluators (``to_float32``/``from_float32``) and the lowerings
(``lower_in_float32``) do exactly the same, so engines match the reference within float32 rounding.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.dtypes import DType
from graphbuild.errors import ShapeInferenceError
from graphbuild.ir.value import Dim, Shape, Value, format_shape
from graphbuild.ops.registry import LoweringContext

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

#: dtypes arithmetic accepts (everything but bool).
NUMERIC: tuple[DType, ...] = dtypes.FLOATS + dtypes.INTS


# ------------------------------------------------------------------------------------ dims
def broadcast_shapes(*shapes: Shape) -> Shape:
    """The numpy broadcast of ``shapes`` under the symbolic rules in the module docstring.

    Raises:
        ShapeInferenceError: naming every shape and the first clashing axis (as a negative index).
    """
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for axis in range(-rank, 0):
        dims = [s[axis] for s in shapes if len(s) >= -axis]
        result: Dim = 1
        for dim in dims:
            if dim == 1 or dim == result:
                continue
            if result == 1:
                result = dim
            elif isinstance(result, str) and isinstance(dim, int):
                result = dim
            elif isinstance(result, int) and isinstance(dim, str):
                continue
            else:
                listed = " and ".join(format_shape(s) for s in shapes)
                raise ShapeInferenceError(
                    f"cannot broadcast shapes {listed}: axis {axis} has sizes {result!r} and {dim!r} "
                    "(sizes must be equal or one of them 1)"
                )
        out.append(result)
    return tuple(out)


def same_dim(a: Dim, b: Dim) -> bool:
    """True when two dims are provably equal: the same int or the same symbol name."""
    return type(a) is type(b) and a == b


def dim_product(dims: Sequence[Dim]) -> tuple[int, list[str]]:
    """The product of the int dims and the list of symbolic ones."""
    static, symbols = 1, []
    for dim in dims:
        if isinstance(dim, int):
            static *= dim
        else:
            symbols.append(dim)
    return static, symbols


# ------------------------------------------------------------------------------------ attrs
def check_int(value: Any, what: str) -> int:
    """``value`` as an int; bools, floats and None are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ShapeInferenceError(f"{what} must be an int, got {value!r}")
    return int(value)


def check_ints(values: Any, what: str) -> tuple[int, ...]:
    """A sequence of ints as a tuple (see ``check_int``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
        raise ShapeInferenceError(f"{what} must be a sequence of ints, got {values!r}")
    return tuple(check_int(v, f"{what} entry") for v in values)


def normalize_axis(axis: Any, rank: int, what: str = "axis") -> int:
    """``axis`` in ``[0, rank)``, accepting negatives in ``[-rank, 0)``."""
    axis = check_int(axis, what)
    if not -rank <= axis < rank:
        raise ShapeInferenceError(f"{what}={axis} is out of range for rank {rank} (valid: {-rank}..{rank - 1})")
    return axis % rank


def normalize_axes(axes: Any, rank: int, what: str = "axes") -> tuple[int, ...]:
    """Distinct axes in ``[0, rank)``, in the given order."""
    result = tuple(normalize_axis(a, rank, f"{what} entry") for a in check_ints(axes, what))
    if len(set(result)) != len(result):
        raise ShapeInferenceError(f"{what} {list(axes)} names an axis twice")
    return result


def require_dtype(value: Value, allowed: Sequence[DType], what: str) -> None:
    """Raises unless ``value``'s dtype is one of ``allowed``."""
    if value.dtype not in allowed:
        names = ", ".join(d.name for d in allowed)
        raise ShapeInferenceError(f"{what} must be one of {names}, got {value.dtype}")


def require_same_dtype(values: Sequence[Value], what: str) -> DType:
    """The common dtype of ``values``; graphbuild never promotes, so they must all match."""
    first = values[0].dtype
    for value in values[1:]:
        if value.dtype != first:
            got = ", ".join(f"{v.name} {v.dtype}" for v in values)
            raise ShapeInferenceError(f"{what} must share one dtype, got {got}; insert an explicit cast")
    return first


# ------------------------------------------------------------------------------------ evaluators
def to_float32(array: np.ndarray) -> np.ndarray:
    """The float32 working copy of a float16/bfloat16/float32 array."""
    return array.astype(np.float32, copy=False)


def from_float32(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rounds a float32 result back to the op's dtype (round to nearest even)."""
    return np.asarray(array, dtype=np.float32).astype(dtype, copy=False)


# ------------------------------------------------------------------------------------ lowering
def int64_constant(ctx: LoweringContext, values: Sequence[int], hint: str) -> str:
    """A 1-D int64 initializer (axes, sizes, starts...)."""
    return ctx.constant(np.asarray(values, dtype=np.int64).reshape(-1), hint)


def scalar_constant(ctx: LoweringContext, value: float, dtype: np.dtype, hint: str) -> str:
    """A 0-d initializer of ``dtype`` (eps, 0, 0.5...)."""
    return ctx.constant(np.asarray(value, dtype=dtype), hint)


def cast(ctx: LoweringContext, tensor: str, to: DType, hint: str, output: Optional[str] = None) -> str:
    """Emits ``Cast(tensor, to)`` writing ``output`` (a fresh name when omitted)."""
    (out,) = ctx.emit("Cast", [tensor], [output or ctx.fresh(hint)], to=to.onnx)
    return out


def lower_in_float32(
    ctx: LoweringContext,
    node: Any,
    inputs: Sequence[Value],
    body: Callable[[list[str], str], None],
    *,
    widen: Sequence[DType] = (dtypes.float16, dtypes.bfloat16),
) -> None:
    """Lowers ``node`` (one float output) through float32 when its dtype is in ``widen``.

    ``body(input_names, output_name)`` emits the float32 computation; the inputs are cast to
    float32 first and the result is cast back into the node's output. Otherwise ``body`` reads the
    inputs and writes the node's output directly.
    """
    out = ctx.name(node.output)
    dtype = node.output.dtype
    if dtype not in widen:
        body([ctx.name(v) for v in inputs], out)
        return
    names = [cast(ctx, ctx.name(v), dtypes.float32, f"{node.name}/{v.name}_f32") for v in inputs]
    wide = ctx.fresh(f"{node.name}/out_f32")
    body(names, wide)
    cast(ctx, wide, dtype, "", output=out)


def shape_tensor(ctx: LoweringContext, source: Value, dims: Shape, hint: str) -> str:
    """A 1-D int64 tensor holding ``dims`` at run time.

    Int dims become constants; each symbolic dim is read from ``Shape(source)`` at the first axis
    of ``source`` carrying that symbol (runs of them with one ``Gather``), and the pieces are
    concatenated. A fully static shape is a single initializer.
    """
    if all(isinstance(d, int) for d in dims):
        return int64_constant(ctx, [int(d) for d in dims], hint)
    (shape,) = ctx.emit("Shape", [ctx.name(source)], [ctx.fresh(f"{hint}/source_shape")])
    pieces: list[str] = []
    run: list[Dim] = []

    def flush() -> None:
        if not run:
            return
        if isinstance(run[0], int):
            pieces.append(int64_constant(ctx, [int(d) for d in run], f"{hint}/static"))
        else:
            indices = int64_constant(ctx, [source.shape.index(d) for d in run], f"{hint}/axes")
            (piece,) = ctx.emit("Gather", [shape, indices], [ctx.fresh(f"{hint}/dims")], axis=0)
            pieces.append(piece)
        run.clear()

    for dim in dims:
        if run and isinstance(run[0], int) != isinstance(dim, int):
            flush()
        run.append(dim)
    flush()
    if len(pieces) == 1:
        return pieces[0]
    (joined,) = ctx.emit("Concat", pieces, [ctx.fresh(hint)], axis=0)
    return joined
