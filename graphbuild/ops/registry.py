"""The op registry: every op is described once, here, by an ``OpDef``.

An ``OpDef`` carries the op's shape/dtype rule, its attribute schema, its numpy evaluator (used by
constant folding and the reference interpreter), its ONNX lowering, and its tensor-parallel
behaviour: what it says about the network's TP layout (``tp_claim``), how a logical node becomes
each rank's nodes (``partition``; replicated when None), whether it exchanges data with other
ranks (``communicates``) and how the exchange combines (``contribute``/``combine``). Shape
inference, folding, partitioning, segmentation, export and the reference interpreter ask the
registry instead of switching on op names; ``docs/adding-an-op.md`` walks through adding one.

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
from graphbuild.ops.schema import AttrSchema

if TYPE_CHECKING:
    from graphbuild.ir.network import Network
    from graphbuild.ops.emitter import OpEmitter
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

    @property
    def op(self) -> "OpEmitter":
        """Emits ONNX nodes that read like ONNX: ``ctx.op.Gather(table, index, axis=0)`` returns
        the output's name (see ``graphbuild.ops.emitter``)."""

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


class TPClaim(NamedTuple):
    """What one node says about its network's tensor-parallel layout.

    Attributes:
        tp_size: the number of ranks the node spans.
        group: the ranks taking part, in rank order (None when the node does not name them).
        position: this network's position in ``group`` when the node is rank-local, else None.
        logical: True when the node is a logical op that the partition splits over ``tp_size``
            ranks (a network holding one cannot be rank-local).
    """

    tp_size: int
    group: Optional[tuple[int, ...]]
    position: Optional[int]
    logical: bool = False


class RankContext(Protocol):
    """What a partition rule may use (implemented by ``graphbuild.passes.partition``).

    Attributes:
        source: the network being partitioned.
        net: the rank network under construction.
        position: this rank's position in ``group``.
        tp_size: the number of ranks.
        group: the ranks taking part, in rank order.
        logical: whether ``source`` is logical (tables get sliced) or rank-local (checked).
    """

    source: "Network"
    net: "Network"
    position: int
    tp_size: int
    group: tuple[int, ...]
    logical: bool

    def value(self, value: Optional["Value"]) -> Optional["Value"]:
        """The rank network's counterpart of a source value."""

    def emit(self, op: str, inputs: Sequence[Optional["Value"]], attrs: dict[str, Any], *, name: str, origin: Any = None) -> "Node":
        """Adds a node of a registered op to the rank network."""

    def replicate(self, node: "Node", attrs: Optional[dict[str, Any]] = None) -> Sequence["Value"]:
        """``node`` rebuilt in the rank network (same op, name, origin; ``attrs`` when given)."""

    def constant_shard(self, weight: "Value", key: Any, make: Callable[[np.ndarray], np.ndarray], suffix: str) -> "Value":
        """A constant holding ``make(weight.const)``, made once per ``(weight, key)``; it keeps the
        weight's name when it is the only form of the weight this rank holds, else it is named
        ``{weight}.{suffix}``."""


PartitionRule = Callable[[RankContext, "Node"], Sequence["Value"]]


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
        collective: True for ops that communicate between ranks in rank networks (segments are
            cut there). A collective must have a ``partition`` rule.
        combine: for ops that exchange data, ``combine(node, per_rank_arrays, out) -> array``: the
            result every rank receives, given each rank's contribution in group order; ``out`` is
            an optional preallocated buffer (the workspace) to write into. Used by the reference
            interpreter and the in-process executor alike.
        foldable: whether constant folding may evaluate it when all inputs are constants.
        doc: one line for ``graphbuild inspect`` and error hints.
        attrs: the attribute schema (types, defaults, checks), applied when a node is created.
        tp_claim: ``tp_claim(node) -> TPClaim | None``: the TP layout the node implies (None for
            ops that every rank runs as they are).
        partition: ``partition(ctx, node) -> values``: the node rebuilt on one rank (see
            ``RankContext``), returning the values that replace its outputs; None replicates it.
        logical: the op only exists before partition (its rule replaces it); segmentation and
            export refuse it.
        communicates: ``communicates(node) -> bool`` when only some nodes of the op exchange data
            with other ranks (default: ``collective``).
        contribute: ``contribute(node, inputs) -> array``: this rank's part of the exchange
            (default: the first input).
        workspace_input: the input index of the optional workspace buffer the exchange's result
            is written into.
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
    attrs: Optional[AttrSchema] = None
    tp_claim: Optional[Callable[["Node"], Optional[TPClaim]]] = None
    partition: Optional[PartitionRule] = None
    logical: bool = False
    communicates: Optional[Callable[["Node"], bool]] = None
    contribute: Optional[Callable[["Node", Sequence[Optional[np.ndarray]]], np.ndarray]] = None
    workspace_input: Optional[int] = None

    def claim(self, node: "Node") -> Optional[TPClaim]:
        """What ``node`` says about its network's TP layout (None: nothing, it is replicated)."""
        return self.tp_claim(node) if self.tp_claim is not None else None

    def exchanges(self, node: "Node") -> bool:
        """Whether ``node`` exchanges data with other ranks in its network (dead-code elimination
        keeps it, and ``reference.run_ranks`` meets the peers there): ``communicates(node)``, or
        every node of a collective op."""
        return self.communicates(node) if self.communicates is not None else self.collective

    def contribution(self, node: "Node", inputs: Sequence[Optional[np.ndarray]]) -> np.ndarray:
        """This rank's part of an exchange (``contribute``; by default the first input)."""
        if self.contribute is not None:
            return self.contribute(node, inputs)
        return inputs[0]

    def check_attrs(self, attrs: Mapping[str, Any], what: str, where: str = "") -> dict[str, Any]:
        """``attrs`` checked against the op's schema, with defaults filled in (unchanged without one).

        Raises:
            GraphConstructionError: naming ``what``, the attribute and ``where`` (the creation site).
        """
        if self.attrs is None:
            return dict(attrs)
        return self.attrs.apply(attrs, what, where)

    def infer_types(self, node: "Node") -> list[TensorType]:
        """Checks the attributes and runs the shape rule, turning any failure into an error that
        names the node and its creation site."""
        try:
            if self.attrs is not None:
                node.attrs = self.attrs.apply(node.attrs, "", "")
            types = list(self.infer(node))
        except GraphBuildError as exc:
            raise type(exc)(f"{node.describe()}: {exc}{node.where()}") from None
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise ShapeInferenceError(f"{node.describe()}: {exc}{node.where()}") from exc
        return types


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Adds an op.

    Raises:
        GraphConstructionError: the name is taken, or a collective has no partition rule (it
            would be copied to every rank unchanged, which is never what a collective means).
    """
    if opdef.name in _REGISTRY:
        raise GraphConstructionError(f"op '{opdef.name}' is already registered")
    if opdef.collective and opdef.partition is None:
        raise GraphConstructionError(
            f"op '{opdef.name}' is a collective without a partition rule; give OpDef(partition=...) saying "
            "what each rank runs (see graphbuild.ops.collectives)"
        )
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
