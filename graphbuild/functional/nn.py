"""Neural-network ops: ``matmul``, ``linear``, ``relu``, ``silu``, ``gelu``, ``softmax``, ``layer_norm`` and
``rms_norm``.

float16 and bfloat16 inputs are computed in float32 and rounded back once (matmul accumulates in
float32), both in the reference interpreter and in exported engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from graphbuild.errors import GraphConstructionError
from graphbuild.functional.attrs import add_op
from graphbuild.ir.network import as_value

if TYPE_CHECKING:
    from graphbuild.tensor import Tensor


def matmul(a: Tensor, b: Tensor, *, transpose_a: bool = False, transpose_b: bool = False, name: Optional[str] = None) -> Tensor:
    """Matrix product with numpy semantics.

    ``a`` is ``[..., n, k]`` and ``b`` is ``[..., k, m]``; batch dims broadcast; a 1-D ``a`` is a
    row vector and a 1-D ``b`` a column vector, and the added axis is removed from the result.

    Args:
        a: left operand (float or int dtype, at least 1-D).
        b: right operand of the same dtype.
        transpose_a: swap the last two axes of ``a`` first (a ``transpose`` node; ``a`` at least 2-D).
        transpose_b: swap the last two axes of ``b`` first (``q @ k^T`` is
            ``matmul(q, k, transpose_b=True)``).
        name: the node's name.

    Raises:
        ShapeInferenceError: dtypes differ, or the contracting dims are not the same int or the
            same symbol name, or the batch dims do not broadcast.
    """
    if transpose_a:
        a = _swap_last_axes(a, "transpose_a", name)
    if transpose_b:
        b = _swap_last_axes(b, "transpose_b", name)
    return add_op("matmul", [a, b], name=name).output.tensor()


def _swap_last_axes(x: Tensor, what: str, name: Optional[str]) -> Tensor:
    rank = as_value(x).rank
    if rank < 2:
        label = f"matmul '{name}'" if name else "matmul"
        raise GraphConstructionError(f"{label}: {what} needs an operand of at least 2 dims, got shape {as_value(x).shape}")
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return add_op("transpose", [x], {"perm": perm}, name=f"{name}/{what}" if name else None).output.tensor()


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, name: Optional[str] = None) -> Tensor:
    """``x @ weight.T + bias`` with the weight in PyTorch layout ``[out_features, in_features]``.

    Args:
        x: float input ``[..., in_features]``.
        weight: ``[out_features, in_features]``, same dtype as ``x``.
        bias: optional ``[out_features]``, same dtype.
        name: the node's name.

    Returns:
        ``[..., out_features]``.

    Raises:
        ShapeInferenceError: dtypes differ or the features do not match (naming both shapes).
    """
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return add_op("linear", inputs, name=name).output.tensor()


def relu(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """``max(x, 0)`` elementwise (float and int dtypes)."""
    return add_op("relu", [x], name=name).output.tensor()


def silu(x: Tensor, *, name: Optional[str] = None) -> Tensor:
    """``x * sigmoid(x)`` elementwise (float dtypes), a.k.a. swish."""
    return add_op("silu", [x], name=name).output.tensor()


def gelu(x: Tensor, approximate: str = "none", *, name: Optional[str] = None) -> Tensor:
    """The Gaussian error linear unit, elementwise (float dtypes).

    Args:
        x: the input.
        approximate: ``"none"`` for the exact ``0.5 * x * (1 + erf(x / sqrt(2)))``, or ``"tanh"`` for
            ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``.
        name: the node's name.
    """
    return add_op("gelu", [x], {"approximate": approximate}, name=name).output.tensor()


def softmax(x: Tensor, axis: int = -1, *, name: Optional[str] = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis`` (float dtypes; computed stably, max subtracted)."""
    return add_op("softmax", [x], {"axis": axis}, name=name).output.tensor()


def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, eps: float = 1e-5, *, name: Optional[str] = None) -> Tensor:
    """Layer normalization over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Args:
        x: float input ``[..., D]``.
        weight: ``[D]`` scale, same dtype as ``x``.
        bias: optional ``[D]`` shift, same dtype as ``x``.
        eps: added to the (biased) variance.
        name: the node's name.
    """
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return add_op("layer_norm", inputs, {"eps": eps}, name=name).output.tensor()


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, *, name: Optional[str] = None) -> Tensor:
    """Root-mean-square normalization over the last axis: ``x / sqrt(mean(x**2) + eps) * weight``.

    Args:
        x: float input ``[..., D]``.
        weight: ``[D]`` scale, same dtype as ``x``.
        eps: added to the mean square.
        name: the node's name.
    """
    return add_op("rms_norm", [x, weight], {"eps": eps}, name=name).output.tensor()
