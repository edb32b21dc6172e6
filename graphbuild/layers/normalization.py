"""``LayerNorm`` and ``RMSNorm`` over the last axis, with replicated parameters (every rank holds
the whole ``weight``/``bias``; no communication)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from graphbuild import dtypes
from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError
from graphbuild.ir.network import as_value
from graphbuild.layers.module import Module, Parameter
from graphbuild.layers.parallel import check_features, float_dtype, layer_label
from graphbuild.tensor import Tensor


def _check_eps(what: str, eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise GraphConstructionError(f"{what}: eps must be a non-negative float, got {eps!r}")
    return float(eps)


class LayerNorm(Module):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (``torch.nn.LayerNorm``).

    Args:
        normalized_shape: size of the last axis.
        eps: added to the (biased) variance.
        bias: whether there is a ``bias`` parameter (``weight`` is always there).
        dtype: float32, float16 or bfloat16.
        name: the layer's name when called on its own.

    Parameters ``weight`` (ones) and ``bias`` (zeros), shape ``[normalized_shape]``.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, *, bias: bool = True, dtype: dtypes.DTypeLike = "float32", name: Optional[str] = None) -> None:
        super().__init__(name=name)
        what = layer_label("LayerNorm", name)
        check_features(what, normalized_shape=normalized_shape)
        self.normalized_shape = int(normalized_shape)
        self.eps = _check_eps(what, eps)
        self.dtype = float_dtype(what, dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, np.float32), self.dtype)
        self.bias = Parameter(np.zeros(self.normalized_shape, np.float32), self.dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """Normalizes ``x [..., normalized_shape]``."""
        net = as_value(x).network
        bias = self.bias.tensor(net) if self.bias is not None else None
        return F.layer_norm(x, self.weight.tensor(net), bias, eps=self.eps, name=self.path)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis (LLaMA's ``RMSNorm``).

    Args:
        normalized_shape: size of the last axis.
        eps: added to the mean square.
        dtype: float32, float16 or bfloat16.
        name: the layer's name when called on its own.

    Parameter ``weight`` (ones), shape ``[normalized_shape]``.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6, *, dtype: dtypes.DTypeLike = "float32", name: Optional[str] = None) -> None:
        super().__init__(name=name)
        what = layer_label("RMSNorm", name)
        check_features(what, normalized_shape=normalized_shape)
        self.normalized_shape = int(normalized_shape)
        self.eps = _check_eps(what, eps)
        self.dtype = float_dtype(what, dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, np.float32), self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Normalizes ``x [..., normalized_shape]``."""
        return F.rms_norm(x, self.weight.tensor(as_value(x).network), eps=self.eps, name=self.path)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"
