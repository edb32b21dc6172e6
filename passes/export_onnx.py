"""ONNX export: lowers a rank's network, or one segment of it, to an ONNX model.

Export is a plain function (it produces a model, not a network). Each node is lowered by its
op's ``OpDef.lower``; this module supplies the ``LoweringContext`` they write into, turns
constants into initializers (arrays over ``external_data_threshold`` bytes go to an external-data
file beside the model, written straight from the array without an extra copy), and validates every
written model with ``onnx.checker`` (``full_check=True``).

Models use opset 21 of the standard domain, ``graphbuild`` domain version 1 for the custom ops,
and IR version 10 (ONNX Runtime 1.31 rejects the onnx package's default of 14).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphbuild
from graphbuild import dtypes
from graphbuild.errors import ExportError, GraphBuildError
from graphbuild.ir import Network, Node, Value
from graphbuild.ir.names import Namespace
from graphbuild.ops.emitter import OpEmitter
from graphbuild.ops.registry import get_op
from graphbuild.plugin import DOMAIN, DOMAIN_VERSION

DEFAULT_OPSET = 21
MIN_OPSET = 17  # LayerNormalization; older ops are lowered per opset where they changed since
IR_VERSION = 10
EXTERNAL_DATA_THRESHOLD = 1 << 20


@functools.cache
def _runtime_loads(opset: int) -> bool:
    """Whether the installed ONNX Runtime loads a model of this standard opset."""
    import onnxruntime as ort

    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own Fail/InvalidGraph types
        return False
    return True


@functools.cache
def supported_opsets() -> range:
    """The standard opsets graphbuild exports here: from ``MIN_OPSET`` to the newest that both the
    installed onnx knows and the installed ONNX Runtime loads (the one source of that range)."""
    newest = onnx.defs.onnx_opset_version()
    while newest > DEFAULT_OPSET and not _runtime_loads(newest):
        newest -= 1
    return range(MIN_OPSET, newest + 1)


def check_opset(opset: int) -> None:
    """Refuses opsets outside ``supported_opsets()``.

    Raises:
        ExportError: naming the opset and the range that works with the installed onnx and ONNX Runtime.
    """
    supported = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in supported:
        import onnxruntime as ort

        raise ExportError(
            f"opset {opset!r} is not supported: graphbuild exports standard ONNX opsets {supported.start} to {supported.stop - 1} "
            f"(default {DEFAULT_OPSET}) with the installed onnx {onnx.__version__} and ONNX Runtime {ort.__version__}"
        )


@dataclasses.dataclass
class ExportedModel:
    """A lowered model plus what the executor needs to know about it."""

    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    checks: list[dict[str, Any]]
    ops: dict[str, int]
    external: dict[str, np.ndarray]  # initializer name -> array written to external data

    @property
    def onnx_nodes(self) -> int:
        return len(self.model.graph.node)


def _value_info(name: str, value: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, value.dtype.onnx, [d if isinstance(d, int) else str(d) for d in value.shape])


class _Lowering:
    """The ``LoweringContext`` for one ONNX graph."""

    def __init__(self, *, opset: int, use_plugin: bool, external_data_threshold: Optional[int]) -> None:
        self.opset = opset
        self.use_plugin = use_plugin
        self._threshold = external_data_threshold
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.external: dict[str, np.ndarray] = {}
        self.checks: list[dict[str, Any]] = []
        self.check_outputs: list[onnx.ValueInfoProto] = []
        self.domains: set[str] = set()
        self._tensor_names = Namespace()
        self._node_names = Namespace()
        self._current: Optional[Node] = None
        self._added_constants: set[str] = set()

    # --- LoweringContext --------------------------------------------------------------------
    @property
    def op(self) -> OpEmitter:
        """``ctx.op.Gather(table, index, axis=0)``: emits one node, returns its output name."""
        return OpEmitter(self, self._current.name if self._current is not None else "graph")

    def name(self, value: Value) -> str:
        if value.is_constant and value.name not in self._added_constants:
            self._added_constants.add(value.name)
            self.add_initializer(value.name, value.const)
        return value.name

    def fresh(self, hint: str) -> str:
        return self._tensor_names.claim(hint)

    def emit(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], *, domain: str = "", name: Optional[str] = None, **attrs: Any) -> Sequence[str]:
        base = name or (f"{self._current.name}/{op_type}" if self._current is not None else op_type)
        node = helper.make_node(op_type, list(inputs), list(outputs), name=self._node_names.claim(base), domain=domain or None, **attrs)
        if self._current is not None:  # which graphbuild node, created where: read by graphbuild viz
            node.doc_string = f"{self._current.describe()}{self._current.where()}"
        self.nodes.append(node)
        if domain:
            self.domains.add(domain)
        return list(outputs)

    def constant(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.add_initializer(name, np.asarray(array))
        return name

    def add_check(self, tensor: str, check: Mapping[str, Any]) -> None:
        self.checks.append({"tensor": tensor, **check})
        self.check_outputs.append(helper.make_tensor_value_info(tensor, TensorProto.INT64, [3]))

    # --- helpers ----------------------------------------------------------------------------
    def reserve(self, names: Iterable[str]) -> None:
        """Keeps ``fresh`` from handing out ``names`` (tensor names the model already uses)."""
        for name in names:
            if name not in self._tensor_names:
                self._tensor_names.claim(name)

    def add_initializer(self, name: str, array: np.ndarray) -> None:
        self.reserve([name])
        if self._threshold is not None and array.nbytes > self._threshold:
            tensor = TensorProto(name=name, data_type=dtypes.as_dtype(array.dtype).onnx, dims=array.shape)
            self.external[name] = array
            self.initializers.append(tensor)
        else:
            self.initializers.append(_to_tensor_proto(array, name))

    def lower(self, node: Node) -> None:
        opdef = get_op(node.op)
        if opdef.lower is None:
            raise ExportError(f"{node.describe()}: op '{node.op}' has no ONNX lowering{node.where()}")
        self._current = node
        try:
            opdef.lower(self, node)
        except GraphBuildError:
            raise
        except Exception as exc:
            raise ExportError(f"{node.describe()}: lowering to ONNX failed: {exc}{node.where()}") from exc
        finally:
            self._current = None


def _to_tensor_proto(array: np.ndarray, name: str) -> TensorProto:
    if array.dtype == dtypes.bfloat16.numpy:
        tensor = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=array.shape)
        tensor.raw_data = np.ascontiguousarray(array).view(np.uint16).tobytes()
        return tensor
    return numpy_helper.from_array(np.ascontiguousarray(array).reshape(array.shape), name)


def lower_nodes(
    net: Network,
    nodes: Sequence[Node],
    inputs: Sequence[Value],
    outputs: Sequence[tuple[str, Value]],
    *,
    use_plugin: bool,
    opset: int = DEFAULT_OPSET,
    external_data_threshold: Optional[int] = None,
    graph_name: Optional[str] = None,
) -> ExportedModel:
    """Lowers ``nodes`` (in order) into one ONNX model.

    Args:
        net: the network the nodes belong to.
        nodes: the nodes to lower, topologically ordered.
        inputs: graph inputs of the model (values produced outside ``nodes``).
        outputs: ``(onnx_output_name, value)`` pairs; an Identity is added where the names differ.
        use_plugin: lower ``tp_embedding`` to graphbuild's custom op (else standard ONNX ops).
        opset: standard-domain opset.
        external_data_threshold: initializers larger than this many bytes are recorded in
            ``ExportedModel.external`` for the caller to write as external data; None keeps all
            inline.
        graph_name: the ONNX graph's name.
    """
    ctx = _Lowering(opset=opset, use_plugin=use_plugin, external_data_threshold=external_data_threshold)
    # Only the values this model holds: reserving every value of ``net`` would cost the whole
    # network's size once per segment.
    ctx.reserve(v.name for v in inputs)
    ctx.reserve(v.name for node in nodes for v in (*node.inputs, *node.outputs) if v is not None)
    ctx.reserve(v.name for _, v in outputs)
    ctx.reserve(name for name, _ in outputs)
    ops: dict[str, int] = {}
    for node in nodes:
        ops[node.op] = ops.get(node.op, 0) + 1
        ctx.lower(node)
    graph_outputs = []
    for out_name, value in outputs:
        if out_name != ctx.name(value):
            ctx.emit("Identity", [value.name], [out_name], name=f"output/{out_name}")
        graph_outputs.append(_value_info(out_name, value))
    graph = helper.make_graph(
        ctx.nodes,
        graph_name or net.name,
        [_value_info(v.name, v) for v in inputs],
        graph_outputs + ctx.check_outputs,
        initializer=ctx.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    if ctx.domains - {""}:
        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="graphbuild", producer_version=graphbuild.__version__)
    model.ir_version = IR_VERSION
    return ExportedModel(
        model=model,
        inputs=[v.name for v in inputs],
        outputs=[name for name, _ in outputs],
        checks=ctx.checks,
        ops=ops,
        external=ctx.external,
    )


def network_to_model(net: Network, *, use_plugin: bool = False, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Exports a whole single-rank network without collectives as one self-contained ONNX model.

    Raises:
        ExportError: the network contains collectives (export it through ``gb.build``) or an op
            cannot be lowered.
    """
    for node in net.nodes:
        opdef = get_op(node.op)
        if opdef.collective:
            raise ExportError(f"{node.describe()}: collectives cannot be exported into a single model; use gb.build{node.where()}")
        if opdef.logical:
            raise ExportError(f"{node.describe()}: run the partition pass first (graphbuild.passes.partition){node.where()}")
    exported = lower_nodes(net, net.nodes, list(net.inputs.values()), list(net.outputs.items()), use_plugin=use_plugin, opset=opset)
    return exported.model


def write_model(exported: ExportedModel, path: Path) -> list[Path]:
    """Writes the model (and its external data beside it, as ``<name>.data``) and checks it.

    Returns:
        The files written, model first.

    Raises:
        ExportError: ``onnx.checker`` rejects the written model.
    """
    written = [path]
    model = exported.model
    if exported.external:
        data_path = path.with_name(path.name + ".data")
        by_name = {t.name: t for t in model.graph.initializer}
        offset = 0
        with open(data_path, "wb") as data_file:
            for name, array in exported.external.items():
                padding = (-offset) % 64
                data_file.write(b"\0" * padding)
                offset += padding
                contiguous = np.ascontiguousarray(array)
                data_file.write(memoryview(contiguous.view(np.uint8).reshape(-1)))
                tensor = by_name[name]
                tensor.data_location = TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key, val in (("location", data_path.name), ("offset", str(offset)), ("length", str(contiguous.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, val
                offset += contiguous.nbytes
        written.append(data_path)
    with open(path, "wb") as model_file:
        model_file.write(model.SerializeToString())
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path.name}: the exported model does not pass onnx.checker: {exc}") from exc
    return written
