"""``Tensor``: the user's handle on a value of a network.

Arithmetic operators build ops in the tensor's network. ``==`` and ``hash`` keep Python's identity
semantics, so tensors can be dict keys and compared with ``is``-like behaviour; use
``F.equal``-style ops for elementwise comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from graphbuild.ir.value import Shape, Value

if TYPE_CHECKING:
    from graphbuild.dtypes import DType, DTypeLike
    from graphbuild.ir.network import Network


class Tensor:
    """A symbolic tensor: dtype and (possibly symbolic) shape, no data.

    Obtain tensors from ``Network.add_input``, ``gb.constant`` and ``graphbuild.functional`` ops.
    """

    __slots__ = ("value",)

    def __init__(self, value: Value) -> None:
        self.value = value

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def dtype(self) -> "DType":
        return self.value.dtype

    @property
    def shape(self) -> Shape:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return len(self.value.shape)

    @property
    def network(self) -> "Network":
        return self.value.network

    def __repr__(self) -> str:
        return f"Tensor({self.value.describe()})"

    # Arithmetic builds ops; the functional module is imported lazily (it imports this module).
    def __add__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.add(self, other)

    def __radd__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.add(other, self)

    def __sub__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.sub(self, other)

    def __rsub__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.sub(other, self)

    def __mul__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.mul(self, other)

    def __rmul__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.mul(other, self)

    def __truediv__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.div(self, other)

    def __rtruediv__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.div(other, self)

    def __matmul__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.matmul(self, other)

    def __rmatmul__(self, other: Any) -> "Tensor":
        from graphbuild import functional as F

        return F.matmul(other, self)

    def __neg__(self) -> "Tensor":
        from graphbuild import functional as F

        return F.mul(self, -1)

    def cast(self, dtype: "DTypeLike") -> "Tensor":
        from graphbuild import functional as F

        return F.cast(self, dtype)

    def reshape(self, *shape: Any) -> "Tensor":
        from graphbuild import functional as F

        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def transpose(self, perm: Sequence[int] | None = None) -> "Tensor":
        from graphbuild import functional as F

        return F.transpose(self, perm)

    def __bool__(self) -> bool:
        from graphbuild.errors import GraphConstructionError

        raise GraphConstructionError(
            f"{self!r} is symbolic and has no truth value; use graphbuild.functional.where for data-dependent choices"
        )
