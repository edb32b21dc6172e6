"""Neural-network ops: ``matmul``, ``relu``, ``silu``, ``gelu``, ``softmax``, ``layer_norm`` and
``rms_norm``.

float16 and bfloat16 inputs are computed in float32 and rounded back once (matmul accumulates in
float32), both in the reference interpreter and in exported engines.
"""

from __future__ import annotations

from typing import Optional

from graphbuild.functional.attrs import add_op
from graphbuild.tensor import Tensor


def matmul(a: Tensor, b: Tensor, *, name: Optional[str] = None) -> Tensor:
    """Matrix product with numpy semantics.

    ``a`` is ``[..., n, k]`` and ``b`` is ``[..., k, m]``; batch dims broadcast; a 1-D ``a`` is a
    row vector and a 1-D ``b`` a column vector, and the added axis is removed from the result.

    Args:
        a: left operand (float or int dtype, at least 1-D).
        b: right operand of the same dtype.
        name: the node's name.

    Raises:
        ShapeInferenceError: dtypes differ, or the contracting dims are not the same int or the
            same symbol name, or the batch dims do not broadcast.
    """
    return add_op("matmul", [a, b], name=name).output.tensor()


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
