"""``Value``: one tensor in a network, with its type, producer, constant payload and uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from graphbuild.dtypes import DType

if TYPE_CHECKING:
    from graphbuild.ir.network import Network
    from graphbuild.ir.node import Node

Dim = Union[int, str]
Shape = tuple[Dim, ...]

#: The class of the user's handle on a value (``graphbuild.tensor.Tensor`` registers itself); the
#: IR only needs something it can call with a ``Value``.
_HANDLE_TYPE: Optional[Callable[["Value"], Any]] = None


def register_handle_type(handle_type: Callable[["Value"], Any]) -> None:
    """Sets what ``Value.tensor()`` wraps values in (called once by ``graphbuild.tensor``)."""
    global _HANDLE_TYPE
    _HANDLE_TYPE = handle_type


def format_shape(shape: Shape) -> str:
    """``(batch, seq, 4096)`` style rendering used in messages and tables."""
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


class Value:
    """A tensor of a network: a graph input, a constant, or a node's output.

    Attributes:
        name: unique within the network's value namespace.
        dtype: element type.
        shape: dims as ints or symbolic names (strings).
        const: the payload of a constant, else None.
        producer: the node that computes this value, or None for inputs and constants.
        index: output index within ``producer``.
    """

    __slots__ = ("network", "name", "dtype", "shape", "const", "producer", "index", "_uses", "_tensor")

    def __init__(
        self,
        network: "Network",
        name: str,
        dtype: DType,
        shape: Shape,
        *,
        producer: Optional["Node"] = None,
        index: int = 0,
        const: Optional[np.ndarray] = None,
    ) -> None:
        self.network = network
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape)
        self.const = const
        self.producer = producer
        self.index = index
        self._uses: list[tuple["Node", int]] = []
        self._tensor: Any = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def uses(self) -> tuple[tuple["Node", int], ...]:
        """``(node, input_index)`` pairs that read this value. Only node code edits them."""
        return tuple(self._uses)

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def is_input(self) -> bool:
        return self.producer is None and self.const is None

    @property
    def is_static(self) -> bool:
        """True when every dim is a concrete int."""
        return all(isinstance(d, int) for d in self.shape)

    def tensor(self) -> Any:
        """The user's handle for this value, a ``graphbuild.Tensor`` (one per value, so identity
        comparisons hold)."""
        if self._tensor is None:
            if _HANDLE_TYPE is None:
                raise RuntimeError("no tensor handle type is registered; import graphbuild first")
            self._tensor = _HANDLE_TYPE(self)
        return self._tensor

    def describe(self) -> str:
        return f"'{self.name}' {self.dtype}{format_shape(self.shape)}"

    def __repr__(self) -> str:
        kind = "const" if self.is_constant else ("input" if self.producer is None else "value")
        return f"<{kind} {self.describe()}>"
