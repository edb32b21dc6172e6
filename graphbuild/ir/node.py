"""``Node``: one op application, with its inputs, outputs, plain-data attributes and origin."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from graphbuild.ir.network import Network
    from graphbuild.ir.value import Value

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_DIRS = (_PACKAGE_DIR + os.sep,)


def user_frame(skip_dirs: tuple[str, ...] = _INTERNAL_DIRS) -> Optional[tuple[str, int, str]]:
    """``(file, line, function)`` of the innermost caller outside graphbuild, or None."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(skip_dirs) and "importlib" not in filename:
            return (filename, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return None


def format_origin(origin: Optional[tuple[str, int, str]]) -> str:
    """`` (created at model.py:12 in make_network)`` for a creation site, or an empty string."""
    if origin is None:
        return ""
    filename, line, function = origin
    return f" (created at {os.path.basename(filename)}:{line} in {function})"


class Node:
    """An op application inside one network.

    Attributes:
        op: registry name of the op (``"embedding"``, ``"matmul"``...).
        domain: ``""`` for ops that map to standard ONNX, ``"graphbuild"`` for graphbuild's own.
        name: unique within the network's node namespace.
        inputs: input values; ``None`` marks an omitted optional input.
        outputs: output values, owned by this node.
        attrs: plain data (ints, floats, strings, tuples, None) describing the op instance.
        meta: free-form annotations that passes attach (never read by the exporter).
        origin: ``(file, line, function)`` of the user code that created the node, if known.
    """

    __slots__ = ("network", "op", "domain", "name", "inputs", "outputs", "attrs", "meta", "origin")

    def __init__(
        self,
        network: "Network",
        op: str,
        domain: str,
        name: str,
        inputs: tuple[Optional["Value"], ...],
        attrs: dict[str, Any],
        origin: Optional[tuple[str, int, str]] = None,
    ) -> None:
        self.network = network
        self.op = op
        self.domain = domain
        self.name = name
        self.inputs = inputs
        self.outputs: tuple["Value", ...] = ()
        self.attrs = attrs
        self.meta: dict[str, Any] = {}
        self.origin = origin

    def _link_inputs(self) -> None:
        for i, value in enumerate(self.inputs):
            if value is not None:
                value._uses.append((self, i))

    def replace_input(self, index: int, value: Optional["Value"]) -> None:
        """Points input ``index`` at ``value``, keeping both use lists right."""
        old = self.inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.remove((self, index))
        if value is not None:
            value._uses.append((self, index))
        self.inputs = self.inputs[:index] + (value,) + self.inputs[index + 1 :]

    @property
    def output(self) -> "Value":
        """The single output of a one-output node."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.describe()} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    def describe(self) -> str:
        """``embedding 'wte'``: the form every error message uses to name a node."""
        return f"{self.op} '{self.name}'"

    def where(self) -> str:
        """`` (created at model.py:12 in make_network)`` or an empty string."""
        return format_origin(self.origin)

    def __repr__(self) -> str:
        ins = ", ".join("None" if v is None else v.name for v in self.inputs)
        outs = ", ".join(v.name for v in self.outputs)
        return f"<node {self.describe()}: ({ins}) -> ({outs}) {self.attrs}>"
