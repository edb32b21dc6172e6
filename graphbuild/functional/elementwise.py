"""Elementwise ops: arithmetic, comparisons, ``where``, ``cast`` and ``identity``.

Binary ops broadcast like numpy (symbolic dims included, see ``graphbuild.ops.common``) and never
promote dtypes: operands must match. A Python scalar (``int``, ``float``, ``bool`` or a numpy
scalar) may stand in for one operand; it becomes a 0-d constant of the other operand's dtype when
it fits: ints fit int tensors within range and float tensors; floats fit float tensors unless
they overflow (``x_float16 * 1e6`` is an error; rounding is not); bools fit bool tensors only.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op
from graphbuild.ir.network import as_value, is_value_like
from graphbuild.ir.value import Value

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor

Operand = Any  # a Tensor or a Python/numpy scalar


def _scalar_array(scalar: Any, dtype: dtypes.DType) -> Optional[np.ndarray]:
    """``scalar`` as a 0-d array of ``dtype``, or None when it does not fit (module docstring)."""
    if isinstance(scalar, (bool, np.bool_)):
        return np.asarray(scalar, dtype=np.bool_) if dtype == dtypes.bool_ else None
    if dtype.is_int:
        if not isinstance(scalar, numbers.Integral):
            return None
        info = np.iinfo(dtype.numpy)
        return np.asarray(int(scalar), dtype=dtype.numpy) if info.min <= int(scalar) <= info.max else None
    if not dtype.is_float:
        return None
    try:
        value = float(scalar)
    except OverflowError:
        return None
    with np.errstate(over="ignore"):
        array = np.asarray(value).astype(dtype.numpy)
    return array if np.isfinite(array) or not math.isfinite(value) else None


def _scalar_constant(op: str, scalar: Any, like: Value) -> Value:
    """A 0-d constant of ``like``'s dtype holding ``scalar``."""
    if not isinstance(scalar, (numbers.Real, np.bool_)):
        raise GraphConstructionError(f"{op}: expected a Tensor or a real scalar, got {type(scalar).__name__}")
    array = _scalar_array(scalar, like.dtype)
    if array is None:
        raise GraphConstructionError(
            f"{op}: scalar {scalar!r} does not fit {like.dtype}, the dtype of the other operand {like.describe()}; "
            "use a matching scalar or cast the tensor"
        )
    return like.network.add_constant(array).value


def operands(op: str, *items: Operand) -> list[Value]:
    """The IR values of ``items``; scalars become constants of the first tensor's dtype.

    Raises:
        GraphConstructionError: no item is a Tensor, or a scalar does not fit the dtype.
    """
    tensors = [as_value(x) for x in items if is_value_like(x)]
    if not tensors:
        got = ", ".join(type(x).__name__ for x in items)
        raise GraphConstructionError(f"{op}: at least one operand must be a Tensor, got {got}")
    return [as_value(x) if is_value_like(x) else _scalar_constant(op, x, tensors[0]) for x in items]


def _binary(op: str, a: Operand, b: Operand, name: Optional[str]) -> Tensor:
    return add_op(op, operands(op, a, b), name=name).output.tensor()


def add(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a + b`` elementwise, with broadcasting.

    Args:
        a: a tensor or a scalar.
        b: a tensor or a scalar (at least one of ``a``, ``b`` is a tensor); same dtype as ``a``.
        name: the node's name.

    Raises:
        ShapeInferenceError: the dtypes differ or the shapes do not broadcast.
    """
    return _binary("add", a, b, name)


def sub(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a - b`` elementwise, with broadcasting (see ``add`` for the operand rules)."""
    return _binary("sub", a, b, name)


def mul(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a * b`` elementwise, with broadcasting (see ``add`` for the operand rules)."""
    return _binary("mul", a, b, name)


def div(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a / b`` elementwise, with broadcasting (see ``add`` for the operand rules).

    Integer division truncates toward zero (ONNX ``Div``, C semantics; ``-7 / 2 == -3``), unlike
    numpy's ``//``. Integer division by zero is an error when the network runs.
    """
    return _binary("div", a, b, name)


def equal(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a == b`` elementwise as a bool tensor (any dtype, operands of one dtype).

    ``Tensor.__eq__`` stays identity, so elementwise comparison is spelled ``F.equal(a, b)``.
    """
    return _binary("equal", a, b, name)


def less(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a < b`` elementwise as a bool tensor (numeric dtypes; ``less(b, a)`` is "greater")."""
    return _binary("less", a, b, name)


def where(condition: Tensor, x: Operand, y: Operand, *, name: Optional[str] = None) -> Tensor:
    """Picks ``x`` where ``condition`` is true and ``y`` elsewhere, broadcasting all three.

    Args:
        condition: a bool tensor.
        x: tensor or scalar taken where ``condition`` holds.
        y: tensor or scalar taken elsewhere (at least one of ``x``, ``y`` is a tensor; same dtype).
        name: the node's name.
    """
    return add_op("where", [condition, *operands("where", x, y)], name=name).output.tensor()


def cast(x: Tensor, dtype: dtypes.DTypeLike, *, name: Optional[str] = None) -> Tensor:
    """Converts ``x`` to ``dtype`` (a DType, its name such as ``"float16"``, or a numpy dtype).

    Floats round to nearest even; floats to ints truncate toward zero (NaN and out-of-range values
    are undefined, as in ONNX); anything to bool is ``x != 0``.
    """
    try:
        target = dtypes.as_dtype(dtype)
    except GraphConstructionError as exc:
        raise GraphConstructionError(f"cast{f' {name!r}' if name else ''}: {exc}") from None
    return add_op("cast", [x], {"to": target.name}, name=name).output.tensor()


def identity(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """A new tensor with the same contents (useful to give a value a name or an output its own node)."""
    return add_op("identity", [x], name=name).output.tensor()
