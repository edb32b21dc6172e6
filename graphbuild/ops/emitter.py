"""``ctx.op``: ONNX node emission that reads like the ONNX it emits.

A lowering writes ``op.Gather(table, index, axis=0)`` instead of
``(x,) = ctx.emit("Gather", [ctx.name(table), index], [ctx.fresh("...")], axis=0)``. Each call
appends one node and returns its output's tensor name (a tuple for ``outputs=n > 1``).

Inputs may be tensor names (``str``), IR values (their ONNX names, constants becoming
initializers), numpy arrays (a new initializer each) or ``None`` (an omitted optional input).
Keywords other than ``out``, ``outputs``, ``name`` and ``domain`` are the ONNX node's attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np

from graphbuild.ir.value import Value

if TYPE_CHECKING:
    from graphbuild.ops.registry import LoweringContext

Input = Union[str, Value, np.ndarray, None]


class OpEmitter:
    """Emits ONNX nodes into a lowering context; ``getattr`` gives one emitter per op type.

    Args:
        ctx: the lowering context.
        prefix: how fresh output names start (the lowered node's name), e.g. ``"wte/lookup"``.
    """

    def __init__(self, ctx: "LoweringContext", prefix: str) -> None:
        self._ctx = ctx
        self._prefix = prefix

    def _input(self, value: Input, op_type: str) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, Value):
            return self._ctx.name(value)
        return self._ctx.constant(np.asarray(value), f"{self._prefix}/{op_type}_const")

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def emit(*inputs: Input, out: Optional[Union[str, Sequence[str]]] = None, outputs: int = 1, name: Optional[str] = None, domain: str = "", **attrs: Any) -> Any:
            """Appends one ``op_type`` node; returns its output name(s)."""
            if out is None:
                names = [self._ctx.fresh(f"{self._prefix}/{op_type}") for _ in range(outputs)]
            else:
                names = [out] if isinstance(out, str) else list(out)
            written = self._ctx.emit(op_type, [self._input(v, op_type) for v in inputs], names, domain=domain, name=name, **attrs)
            return written[0] if len(written) == 1 else tuple(written)

        emit.__name__ = op_type
        return emit


__all__ = ["OpEmitter"]
