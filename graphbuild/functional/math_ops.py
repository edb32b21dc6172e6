"""Elementwise math: ``sqrt``, ``exp``, ``log``, ``tanh``, ``erf``, ``sigmoid``, ``absolute``,
``neg``, ``power``, ``maximum`` and ``minimum``.

The names follow numpy where Python's builtins would be shadowed (``absolute``, ``power``).
Numerics and lowerings are documented in ``graphbuild.ops.math_ops``. Binary ops take a Python
scalar for one operand, as the arithmetic ops do (``graphbuild.functional.elementwise``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from graphbuild.functional.attrs import add_op
from graphbuild.functional.elementwise import Operand, operands

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor


def _unary(op: str, x: Tensor, name: Optional[str]) -> Tensor:
    return add_op(op, [x], name=name).output.tensor()


def sqrt(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """Square root, elementwise (float dtypes; NaN below 0)."""
    return _unary("sqrt", x, name)


def exp(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """``e ** x``, elementwise (float dtypes)."""
    return _unary("exp", x, name)


def log(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """Natural logarithm, elementwise (float dtypes; -inf at 0, NaN below)."""
    return _unary("log", x, name)


def tanh(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """Hyperbolic tangent, elementwise (float dtypes)."""
    return _unary("tanh", x, name)


def erf(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """The error function, elementwise (float dtypes)."""
    return _unary("erf", x, name)


def sigmoid(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """``1 / (1 + exp(-x))``, elementwise (float dtypes)."""
    return _unary("sigmoid", x, name)


def absolute(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """``|x|``, elementwise (float and int dtypes; exact)."""
    return _unary("absolute", x, name)


def neg(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """``-x``, elementwise (float and int dtypes; exact)."""
    return _unary("neg", x, name)


def _binary(op: str, a: Operand, b: Operand, name: Optional[str]) -> Tensor:
    return add_op(op, operands(op, a, b), name=name).output.tensor()


def power(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """``a ** b`` elementwise with broadcasting (float dtypes; one operand may be a scalar)."""
    return _binary("power", a, b, name)


def maximum(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """The larger of ``a`` and ``b`` elementwise, with broadcasting (float and int dtypes)."""
    return _binary("maximum", a, b, name)


def minimum(a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
    """The smaller of ``a`` and ``b`` elementwise, with broadcasting (float and int dtypes)."""
    return _binary("minimum", a, b, name)
