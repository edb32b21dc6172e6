"""The op registry: every op is described once, here, by an ``OpDef``.

An ``OpDef`` carries the op's shape/dtype rule, its numpy evaluator (used by constant folding and
the reference interpreter), whether it is a collective, and its ONNX lowering. Shape inference,
folding, partitioning and export look ops up by name instead of switching on op names.

Writing an op (see ``graphbuild/ops/*.py``)::

    def _infer_relu(node):                   # node.inputs are typed Values, node.attrs plain data
        (x,) = node.inputs
        return [TensorType(x.dtype, x.shape)]

    register(OpDef("relu", infer=_infer_relu,
                   evaluate=lambda node, inputs: [np.maximum(inputs[0], 0)],
                   lower=lambda ctx, node: ctx.emit("Relu", [ctx.name(node.inputs[0])], [ctx.name(node.output)])))

Rules raise ``ShapeInferenceError`` (or any ``GraphBuildError``) with a message about the inputs;
``infer_types`` prefixes it with the node's name and the user's creation site.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from graphbuild.dtypes import DType
from graphbuild.errors import GraphBuildError, GraphConstructionError, ShapeInferenceError

if TYPE_CHECKING:
    from graphbuild.ir.network import Network
    from graphbuild.ir.node import Node
    from graphbuild.ir.value import Shape, Value


class TensorType(NamedTuple):
    """What a shape rule returns for each output."""

    dtype: DType
    shape: "Shape"


class LoweringContext(Protocol):
    """What an op's ONNX lowering may call (implemented by ``graphbuild.passes.export_onnx``)."""

    opset: int
    use_plugin: bool

    def name(self, value: "Value") -> str:
        """The ONNX tensor name of an IR value (inputs, constants and node outputs)."""

    def fresh(self, hint: str) -> str:
        """A new unique ONNX tensor name for an intermediate."""

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], *, domain: str = "", name: Optional[str] = None, **attrs: Any) -> Sequence[str]:
        """Appends an ONNX node; ``""`` in inputs marks an omitted optional input."""

    def constant(self, array: np.ndarray, hint: str) -> str:
        """Adds an initializer holding ``array`` and returns its tensor name."""

    def add_check(self, tensor: str, check: Mapping[str, Any]) -> None:
        """Exposes ``tensor`` as an extra segment output that the executor checks after the run."""


Evaluate = Callable[["Node", Sequence[Optional[np.ndarray]]], Sequence[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class OpDef:
    """The single description of an op.

    Attributes:
        name: registry name, also the IR node's ``op``.
        infer: shape/dtype rule: ``infer(node) -> [TensorType, ...]`` (one per output).
        evaluate: numpy evaluator ``evaluate(node, inputs) -> [array, ...]`` (read ``node.attrs``,
            ``node.name``); None when the op can only run inside an engine or across ranks.
        lower: ``lower(ctx, node)`` emits ONNX nodes writing ``ctx.name(node.outputs[i])``.
        domain: ``""`` for ops that lower to standard ONNX, ``"graphbuild"`` for graphbuild's own.
        collective: True for ops that communicate between ranks (segments are cut there).
        combine: for collectives, ``combine(node, per_rank_arrays, out) -> array``: the result
            every rank receives, given each rank's input in group order; ``out`` is an optional
            preallocated buffer (the workspace) to write into. Used by the reference interpreter
            and the in-process executor alike.
        foldable: whether constant folding may evaluate it when all inputs are constants.
        doc: one line for ``graphbuild inspect`` and error hints.
    """

    name: str
    infer: Callable[["Node"], Sequence[TensorType]]
    evaluate: Optional[Evaluate] = None
    lower: Optional[Callable[[LoweringContext, "Node"], None]] = None
    domain: str = ""
    collective: bool = False
    combine: Optional[Callable[["Node", Sequence[np.ndarray], Optional[np.ndarray]], np.ndarray]] = None
    foldable: bool = True
    doc: str = ""

    def infer_types(self, node: "Node") -> list[TensorType]:
        """Runs the shape rule, turning any failure into an error that names the node."""
        try:
            types = list(self.infer(node))
        except GraphBuildError as exc:
            raise type(exc)(f"{node.describe()}: {exc}{node.where()}") from None
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise ShapeInferenceError(f"{node.describe()}: {exc}{node.where()}") from exc
        return types


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Adds an op; registering a name twice is an error."""
    if opdef.name in _REGISTRY:
        raise GraphConstructionError(f"op '{opdef.name}' is already registered")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    """Looks an op up by name.

    Raises:
        GraphConstructionError: unknown op, with the list of known ones.
    """
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise GraphConstructionError(f"unknown op '{name}'; registered ops: {known}") from None


def create_node(
    net: "Network",
    op: str,
    inputs: Sequence[Optional["Value"]],
    attrs: Optional[dict[str, Any]] = None,
    *,
    name: Optional[str] = None,
    index: Optional[int] = None,
    origin: Optional[tuple[str, int, str]] = None,
) -> "Node":
    """Adds a node of the registered op ``op`` to ``net``; its shape/dtype rule runs at once.

    Args:
        net: the network to add to.
        op: registry name.
        inputs: values of ``net`` (``None`` for an omitted optional input).
        attrs: plain-data attributes.
        name: requested node name (scoped and made unique).
        index: insert at this position of ``net.nodes`` (passes use this).
        origin: creation site; by default the innermost frame outside graphbuild.
    """
    opdef = get_op(op)
    return net.add_node(op, inputs, attrs, infer=opdef.infer_types, domain=opdef.domain, name=name, index=index, origin=origin)


def registered_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


_LOADED = False


def _ensure_loaded() -> None:
    """Imports the op definition modules once (they register themselves)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import graphbuild.ops  # noqa: F401  (registers every op family)
