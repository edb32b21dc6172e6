"""Checks a manifest against the ONNX files it names, before ONNX Runtime sees them.

Each segment file is parsed without its external data (cheap: graph structure and small
initializers only). Then:

- every external-data location, wherever a tensor can hold one (initializers, sparse
  initializers, ``Constant`` and other tensor attributes, ``If``/``Loop``/``Scan`` subgraphs), is a
  file the manifest lists, in the segment's own folder;
- the graph's inputs and outputs are exactly what the manifest's step says it reads, writes and
  checks (so a range check removed from the manifest, or outputs renamed, is caught);
- dtypes and shapes flow: engine inputs into segments, segment outputs through collectives (an
  all-reduce keeps the shape, an all-gather multiplies the gathered axis by the group size) into
  later segments and the engine outputs, as far as the shapes are known;
- every custom-domain node is a custom op the manifest declares.

A manifest edited to disagree with its files is refused with an ``EngineError`` naming the rank,
step and tensor.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import onnx

from graphbuild.engine.files import PinnedEngineDir
from graphbuild.engine.manifest import CollectiveStep, Manifest, RankPlan, SegmentStep, TensorSpec
from graphbuild.errors import EngineError

#: (elem_type, dims or None when unknown); a dim is an int, a symbol name, or None.
TensorType = tuple[int, Optional[tuple[object, ...]]]
_STANDARD_DOMAINS = ("", "ai.onnx")
_UNKNOWN: TensorType = (0, None)


def load_segment(pin: PinnedEngineDir, relpath: str) -> onnx.ModelProto:
    """Parses a segment file through the pinned directory, without its external data."""
    data = pin.read_bytes(relpath)
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise EngineError(f"{pin.describe(relpath)}: not a readable ONNX model ({type(exc).__name__}: {exc}); the engine is corrupt - rebuild it") from None


def iter_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every ``TensorProto`` a graph holds, with a description, subgraphs included."""
    for tensor in graph.initializer:
        yield f"initializer '{tensor.name}'", tensor
    for sparse in graph.sparse_initializer:
        yield f"sparse initializer '{sparse.values.name}'", sparse.values
        yield f"indices of sparse initializer '{sparse.values.name}'", sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            where = f"attribute '{attr.name}' of node '{node.name}'"
            tensors = [attr.t] if attr.HasField("t") else []
            tensors += list(attr.tensors)
            sparse_tensors = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
            for sparse in sparse_tensors:
                tensors += [sparse.values, sparse.indices]
            for tensor in tensors:
                yield where, tensor
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for subgraph in subgraphs:
                yield from iter_tensors(subgraph)


def check_external_data(pin: PinnedEngineDir, manifest: Manifest, relpath: str, model: onnx.ModelProto) -> None:
    """Every external-data location in ``model`` is a listed file beside it."""
    folder = relpath.rsplit("/", 1)[0] + "/" if "/" in relpath else ""
    for where, tensor in iter_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = folder + location
        if not location or "/" in location or "\\" in location or location in (".", "..") or target not in manifest.files:
            raise EngineError(f"{pin.describe(relpath)}: {where} refers to external data '{location}', which the manifest does not list beside it; the engine is corrupt - rebuild it")


def _type_of(info: onnx.ValueInfoProto) -> TensorType:
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return tensor.elem_type, None
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return tensor.elem_type, dims


def _spec_type(spec: TensorSpec) -> TensorType:
    return spec.dtype.onnx, tuple(spec.shape)


def _compatible(a: TensorType, b: TensorType) -> bool:
    if a[0] and b[0] and a[0] != b[0]:
        return False
    if a[1] is None or b[1] is None:
        return True
    if len(a[1]) != len(b[1]):
        return False
    return all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(a[1], b[1]))


def _show(kind: TensorType) -> str:
    name = onnx.TensorProto.DataType.Name(kind[0]).lower() if kind[0] else "?"
    dims = "(?)" if kind[1] is None else "(" + ", ".join("?" if d is None else str(d) for d in kind[1]) + ")"
    return name + dims


def _collective_type(step: CollectiveStep, kinds: list[TensorType]) -> TensorType:
    """The result of ``step`` given its group members' inputs (in group order)."""
    first = kinds[0]
    if step.op == "allreduce":
        return next((kind for kind in kinds if kind != _UNKNOWN), _UNKNOWN)
    if any(kind[1] is None for kind in kinds):
        return first[0], None
    dims = list(first[1])
    if not -len(dims) <= step.axis < len(dims):
        raise EngineError(f"{step.describe()}: gathers axis {step.axis} of a rank-{len(dims)} tensor")
    axis = step.axis % len(dims)
    parts = [kind[1][axis] if len(kind[1]) == len(dims) else None for kind in kinds]
    dims[axis] = sum(parts) if all(isinstance(part, int) for part in parts) else None
    return first[0], tuple(dims)


def check_segments(pin: PinnedEngineDir, manifest: Manifest, ranks: Optional[Sequence[int]] = None) -> None:
    """Checks the segments of ``ranks`` (default: every rank) against the manifest (see the module docstring).

    Ranks are walked in lockstep (their schedules match), so an all-gather's result is known from
    what every member of its group contributes, uneven shards included. The files of ranks not
    asked for are not opened (an MPI process reads only its own); what they contribute to a
    collective counts as unknown.

    Raises:
        EngineError: naming the file, rank, step and tensor that disagree.
    """
    declared_ops = {(op.domain, op.op_type) for op in manifest.custom_ops}
    source = pin.describe("config.json")
    types: list[dict[str, TensorType]] = [{spec.name: _spec_type(spec) for spec in manifest.inputs} for _ in manifest.ranks]
    position_of = {rank: position for position, rank in enumerate(manifest.tp_group)}
    wanted = set(range(len(manifest.ranks)) if ranks is None else ranks)
    for index in range(len(manifest.ranks[0].steps)):
        results = []
        for plan in manifest.ranks:
            step = plan.steps[index]
            if isinstance(step, CollectiveStep):
                members = [types[position_of[rank]].get(manifest.ranks[position_of[rank]].steps[index].input, _UNKNOWN) for rank in step.group]
                results.append((plan.rank, step.output, _collective_type(step, members)))
                continue
            if plan.rank not in wanted:
                continue
            model = load_segment(pin, step.file)
            check_external_data(pin, manifest, step.file, model)
            _check_nodes(pin, step, model, declared_ops)
            _check_interface(f"{source}: ranks[{plan.rank}].steps[{index}]", step, model, types[plan.rank])
        for rank, name, kind in results:
            types[rank][name] = kind
    for plan in manifest.ranks:
        if plan.rank in wanted:
            _check_outputs(source, manifest, plan, types[plan.rank])


def _check_outputs(source: object, manifest: Manifest, plan: RankPlan, types: dict[str, TensorType]) -> None:
    for name, tensor in plan.outputs.items():
        spec = next(spec for spec in manifest.outputs if spec.name == name)
        if not _compatible(types[tensor], _spec_type(spec)):
            raise EngineError(
                f"{source}: ranks[{plan.rank}].outputs.{name}: tensor '{tensor}' is {_show(types[tensor])} but the engine "
                f"declares output '{name}' as {_show(_spec_type(spec))}; the manifest does not match its files - rebuild the engine"
            )


def _check_nodes(pin: PinnedEngineDir, step: SegmentStep, model: onnx.ModelProto, declared_ops: set[tuple[str, str]]) -> None:
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS and (node.domain, node.op_type) not in declared_ops:
            raise EngineError(f"{pin.describe(step.file)}: node '{node.name}' is custom op {node.domain}::{node.op_type}, which the manifest's custom_ops do not declare - rebuild the engine")


def _check_interface(where: str, step: SegmentStep, model: onnx.ModelProto, types: dict[str, TensorType]) -> None:
    mismatch = f"the manifest does not match {step.file} - rebuild the engine"
    graph_inputs = {info.name: _type_of(info) for info in model.graph.input}
    graph_outputs = {info.name: _type_of(info) for info in model.graph.output}
    if set(graph_inputs) != set(step.inputs):
        raise EngineError(f"{where}: inputs {sorted(step.inputs)} but the segment's graph reads {sorted(graph_inputs)}; {mismatch}")
    checks = {check.tensor: check for check in step.checks}
    if set(graph_outputs) != set(step.outputs) | set(checks):
        raise EngineError(
            f"{where}: outputs {sorted(step.outputs)} and checks {sorted(checks)} but the segment's graph writes "
            f"{sorted(graph_outputs)}; {mismatch}"
        )
    for name in step.inputs:
        if not _compatible(types[name], graph_inputs[name]):
            raise EngineError(f"{where}: input '{name}' is {_show(types[name])} here but the segment reads {_show(graph_inputs[name])}; {mismatch}")
    node_names = {node.name for node in model.graph.node}
    for name, check in checks.items():
        if graph_outputs[name] != (onnx.TensorProto.INT64, (3,)) or check.node not in node_names:
            raise EngineError(f"{where}: check '{name}' of node '{check.node}' is not a range check of this segment; {mismatch}")
    for name in step.outputs:
        types[name] = graph_outputs[name]
