"""``Tensor``: the user's handle on a value of a network.

Arithmetic operators build ops in the tensor's network. ``==`` and ``hash`` keep Python's identity
semantics, so tensors can be dict keys and compared with ``is``-like behaviour; use
``F.equal``-style ops for elementwise comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError
from graphbuild.ir.value import Shape, Value, register_handle_type

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

    # Arithmetic builds ops in the tensor's network through graphbuild.functional.
    def __add__(self, other: Any) -> "Tensor":
        return F.add(self, other)

    def __radd__(self, other: Any) -> "Tensor":
        return F.add(other, self)

    def __sub__(self, other: Any) -> "Tensor":
        return F.sub(self, other)

    def __rsub__(self, other: Any) -> "Tensor":
        return F.sub(other, self)

    def __mul__(self, other: Any) -> "Tensor":
        return F.mul(self, other)

    def __rmul__(self, other: Any) -> "Tensor":
        return F.mul(other, self)

    def __truediv__(self, other: Any) -> "Tensor":
        return F.div(self, other)

    def __rtruediv__(self, other: Any) -> "Tensor":
        return F.div(other, self)

    def __matmul__(self, other: Any) -> "Tensor":
        return F.matmul(self, other)

    def __rmatmul__(self, other: Any) -> "Tensor":
        return F.matmul(other, self)

    def __neg__(self) -> "Tensor":
        return F.mul(self, -1)

    def cast(self, dtype: "DTypeLike") -> "Tensor":
        return F.cast(self, dtype)

    def reshape(self, *shape: Any) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def transpose(self, perm: Sequence[int] | None = None) -> "Tensor":
        return F.transpose(self, perm)

    def __getitem__(self, key: Any) -> "Tensor":
        """Basic numpy indexing: ints, slices, ``...`` and ``None``.

        ``x[:, 1:]`` and ``x[..., ::2]`` become one ``slice``; each int index (``x[0]``, ``x[:, -1]``)
        a ``gather`` of a scalar, which drops the axis; each ``None`` an ``unsqueeze``. Index with a
        tensor through ``graphbuild.functional.gather``.

        Raises:
            GraphConstructionError: more indices than axes, two ellipses, an int outside a static
                dim, or an index of another type.
        """
        items = key if isinstance(key, tuple) else (key,)
        if sum(item is Ellipsis for item in items) > 1:
            raise GraphConstructionError(f"{self!r}[{key!r}]: an index can only have one ellipsis ('...')")
        consumed = sum(item is not None and item is not Ellipsis for item in items)
        if consumed > self.ndim:
            raise GraphConstructionError(f"{self!r}[{key!r}]: {consumed} indices for a tensor of rank {self.ndim}")
        starts: list[Any] = []
        ends: list[Any] = []
        steps: list[int] = []
        sliced: list[int] = []
        picks: list[tuple[int, int]] = []  # (input axis, index)
        inserted: list[int] = []  # output axes of None
        axis = out_axis = 0
        for item in items:
            if item is Ellipsis:
                skipped = self.ndim - consumed
                axis, out_axis = axis + skipped, out_axis + skipped
            elif item is None:
                inserted.append(out_axis)
                out_axis += 1
            elif isinstance(item, slice):
                if item != slice(None):
                    starts.append(item.start)
                    ends.append(item.stop)
                    steps.append(1 if item.step is None else item.step)
                    sliced.append(axis)
                axis, out_axis = axis + 1, out_axis + 1
            elif isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
                dim = self.shape[axis]
                if isinstance(dim, int) and not -dim <= item < dim:
                    raise GraphConstructionError(f"{self!r}[{key!r}]: index {item} is out of bounds for axis {axis} with size {dim}")
                picks.append((axis, int(item)))
                axis += 1
            else:
                raise GraphConstructionError(
                    f"{self!r}[{key!r}]: unsupported index {item!r} ({type(item).__name__}); use ints, slices, '...' "
                    "and None, or graphbuild.functional.gather for tensor indices"
                )
        result: Tensor = F.slice_tensor(self, starts, ends, axes=sliced, steps=steps) if sliced else self
        for pick_axis, index in reversed(picks):  # from the last axis, so earlier axis numbers hold
            result = F.gather(result, self.network.add_constant(np.array(index, dtype=np.int64)), axis=pick_axis)
        return F.unsqueeze(result, inserted) if inserted else result

    def __bool__(self) -> bool:
        raise GraphConstructionError(
            f"{self!r} is symbolic and has no truth value; use graphbuild.functional.where for data-dependent choices"
        )


register_handle_type(Tensor)
