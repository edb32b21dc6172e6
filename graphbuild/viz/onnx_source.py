"""Fills a ``GraphModel`` from what ``gb.build`` wrote: an engine directory or one segment ``.onnx``.

Segments are read without their external data (weights are described by their initializers'
dims and dtype, never loaded). Shapes of intermediate tensors come from ONNX shape inference,
helped past graphbuild's ``TPEmbedding`` (whose output is ``ids.shape + [table columns]``). The
source line of each node is read from the ONNX node's ``doc_string``, where the exporter writes
``op 'name' (created at file.py:12 in function)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
from onnx import helper

from graphbuild.errors import EngineError
from graphbuild.viz.model import GraphModel, Tensor, add_to_collective, annotate_shards, plain, weight_entry

_CREATED = re.compile(r"\(created at (.+)\)\s*$")


def _dims(type_proto: onnx.TypeProto) -> tuple[str, list[Any]]:
    tensor = type_proto.tensor_type
    dtype = _dtype_name(tensor.elem_type) if tensor.elem_type else "?"
    if not tensor.HasField("shape"):
        return dtype, ["?"]
    return dtype, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def _dtype_name(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return helper.tensor_dtype_to_np_dtype(elem_type).name


def _tp_embedding_types(model: onnx.ModelProto, known: dict[str, tuple[str, list[Any]]]) -> bool:
    """Adds ``value_info`` for TPEmbedding outputs that shape inference could not type; True if any."""
    inits = {t.name: t for t in model.graph.initializer}
    added = False
    for node in model.graph.node:
        if node.op_type != "TPEmbedding" or node.output[0] in known or node.input[0] not in known or node.input[1] not in inits:
            continue
        table = inits[node.input[1]]
        shape = known[node.input[0]][1] + [int(table.dims[-1])]
        model.graph.value_info.append(helper.make_tensor_value_info(node.output[0], table.data_type, shape))
        added = True
    return added


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[str, list[Any]]]:
    """``name -> (dtype, shape)`` of every typed tensor of ``model`` after shape inference."""

    def collect(m: onnx.ModelProto) -> dict[str, tuple[str, list[Any]]]:
        graph = m.graph
        found = {v.name: _dims(v.type) for v in (*graph.input, *graph.output, *graph.value_info)}
        found.update({t.name: (_dtype_name(t.data_type), list(t.dims)) for t in graph.initializer})
        return found

    inferred = model
    for _ in range(3):  # TPEmbedding is opaque to ONNX: type its outputs and infer again
        try:
            inferred = onnx.shape_inference.infer_shapes(inferred, strict_mode=False)
        except Exception:  # an unexpected model still draws, just with fewer shapes
            break
        known = collect(inferred)
        if not _tp_embedding_types(inferred, known):
            return known
    return collect(inferred)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            value = f"tensor {_dtype_name(value.data_type)}{tuple(value.dims)}"
        elif isinstance(value, (onnx.GraphProto, onnx.SparseTensorProto)):
            value = type(value).__name__
        out[attribute.name] = plain(value)
    return out


def initializer_bytes(tensor: onnx.TensorProto) -> int:
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    itemsize = 2 if tensor.data_type == onnx.TensorProto.BFLOAT16 else helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


class _RankReader:
    """Adds one rank's segments (ONNX nodes) and collectives to a column of the model."""

    def __init__(self, model: GraphModel, column: int, rank: Optional[int]) -> None:
        self.model, self.column, self.rank = model, column, rank
        self.prefix = "" if rank is None else f"r{rank}/"
        self.types: dict[str, tuple[str, list[Any]]] = {}
        self.producer: dict[str, str] = {}
        self.weight_bytes = 0
        self.dtype_bytes: dict[str, int] = {}

    def tensor(self, name: str) -> Tensor:
        dtype, shape = self.types.get(name, ("?", ["?"]))
        return Tensor(name, dtype, shape)

    def add_input(self, name: str, band: int) -> None:
        node_id = f"{self.prefix}in:{name}"
        self.model.add_node(node_id, name=name, op="input", column=self.column, band=band, rank=self.rank, outputs=[self.tensor(name)])
        self.producer[name] = node_id

    def add_output(self, name: str, value: str, band: int) -> None:
        node_id = f"{self.prefix}out:{name}"
        self.model.add_node(node_id, name=name, op="output", column=self.column, band=band, rank=self.rank, inputs=[self.tensor(value)])
        if value in self.producer:
            self.model.add_edge(self.producer[value], node_id, self.tensor(value))

    def segment(self, onnx_model: onnx.ModelProto, band: int, seg_id: str) -> list[str]:
        inits = {t.name: t for t in onnx_model.graph.initializer}
        ids = []
        for index, node in enumerate(onnx_model.graph.node):
            name = node.name or f"{node.op_type}_{index}"
            node_id = f"{self.prefix}op:{name}"
            if node_id in self.model._ids:
                node_id = f"{node_id}#{seg_id}"
            weights = []
            for value in node.input:
                if value in inits:
                    tensor = inits[value]
                    size = initializer_bytes(tensor)
                    weights.append(weight_entry(value, _dtype_name(tensor.data_type), list(tensor.dims), size))
            for weight in weights:
                self.dtype_bytes[weight["dtype"]] = self.dtype_bytes.get(weight["dtype"], 0) + weight["bytes"]
            match = _CREATED.search(node.doc_string or "")
            self.model.add_node(
                node_id, name=name, op=node.op_type, domain=node.domain, column=self.column, band=band, rank=self.rank,
                inputs=[self.tensor(v) for v in node.input if v and v not in inits], outputs=[self.tensor(v) for v in node.output if v],
                attrs=_attrs(node), weights=weights, source=match.group(1) if match else None, segment=seg_id,
            )  # fmt: skip
            for value in node.input:
                if value in self.producer:
                    self.model.add_edge(self.producer[value], node_id, self.tensor(value))
            for value in node.output:
                self.producer[value] = node_id
            ids.append(node_id)
        self.weight_bytes += sum(initializer_bytes(t) for t in inits.values())
        return ids


def load_model(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise EngineError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); point viz at an engine directory or a segment .onnx") from exc


def from_segment_file(path: Path) -> GraphModel:
    """One segment ``.onnx`` (or any ONNX model) on its own: its inputs, nodes and outputs."""
    onnx_model = load_model(path)
    opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), None)
    model = GraphModel({"name": onnx_model.graph.name or path.stem, "kind": "segment", "tp_size": "?", "dtype": "-", "opset": opset,
                        "weight_bytes": 0, "files": [{"path": path.name, "bytes": _file_bytes(path)}]})
    model.columns.append(path.name)
    reader = _RankReader(model, 0, None)
    reader.types = tensor_types(onnx_model)
    inputs, body, outputs = model.band("inputs", "inputs"), model.band("segment", path.name), model.band("outputs", "outputs")
    inits = {t.name for t in onnx_model.graph.initializer}
    for value in onnx_model.graph.input:
        if value.name not in inits:
            reader.add_input(value.name, inputs)
    ids = reader.segment(onnx_model, body, path.name)
    model.segments.append({"id": path.name, "rank": None, "index": 0, "file": path.name, "band": body, "nodes": ids})
    for value in onnx_model.graph.output:
        reader.add_output(value.name, value.name, outputs)
    _finish_header(model, [reader])
    return model


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _finish_header(model: GraphModel, readers: list[_RankReader]) -> None:
    sizes: dict[str, int] = {}
    for reader in readers:
        for dtype, size in reader.dtype_bytes.items():
            sizes[dtype] = sizes.get(dtype, 0) + size
    model.header["weight_bytes"] = sum(r.weight_bytes for r in readers)
    model.header["dtype"] = max(sizes, key=sizes.__getitem__) if sizes else "-"
    annotate_shards(model)


def from_engine_dir(path: Path) -> GraphModel:
    """An engine directory: every rank side by side, its segments and collectives in step order."""
    from graphbuild.engine import read_manifest
    from graphbuild.engine.files import resolve_inside

    manifest = read_manifest(path).to_json()  # validated, with the engine's own errors
    model = GraphModel({
        "name": manifest["name"], "kind": "engine", "tp_size": manifest["tp_size"], "dtype": "-", "opset": manifest.get("opset"),
        "weight_bytes": 0, "files": [{"path": rel, "bytes": int(entry.get("bytes", 0))} for rel, entry in manifest["files"].items()],
    })  # fmt: skip
    model.band("inputs", "inputs")
    for step in manifest["ranks"][0]["steps"]:
        model.band(step["kind"], step.get("name") or f"segment {step.get('index')}")
    outputs_band = model.band("outputs", "outputs")
    readers, collectives = [], {}
    for column, rank_entry in enumerate(manifest["ranks"]):
        rank = int(rank_entry.get("rank", column))
        model.columns.append(f"rank {rank}")
        reader = _RankReader(model, column, rank)
        readers.append(reader)
        loaded = {}
        for step in rank_entry["steps"]:
            if step["kind"] == "segment":
                loaded[step["file"]] = onnx_model = load_model(resolve_inside(path, step["file"], what="segment file"))
                reader.types.update(tensor_types(onnx_model))
        for spec in manifest["inputs"]:
            reader.types.setdefault(spec["name"], (spec["dtype"], list(spec["shape"])))
            reader.add_input(spec["name"], 0)
        for band, step in enumerate(rank_entry["steps"], start=1):
            if step["kind"] == "segment":
                seg_id = f"r{rank}/segment{step['index']}"
                ids = reader.segment(loaded[step["file"]], band, seg_id)
                model.segments.append({"id": seg_id, "rank": rank, "index": step["index"], "file": step["file"], "band": band, "nodes": ids})
                continue
            _collective(model, reader, collectives, step, band)
        for name, value in rank_entry.get("outputs", {}).items():
            reader.add_output(name, value, outputs_band)
    model.collectives = list(collectives.values())
    _finish_header(model, readers)
    return model


def _collective(model: GraphModel, reader: _RankReader, collectives: dict[Any, dict[str, Any]], step: dict[str, Any], band: int) -> None:
    node_id = f"{reader.prefix}op:{step['name']}"
    attrs = dict(step.get("attrs") or {})
    attrs.setdefault("instance_id", step.get("instance_id"))
    attrs.setdefault("group", step.get("group"))
    model.add_node(node_id, name=step["name"], op=step["op"], column=reader.column, band=band, rank=reader.rank,
                   inputs=[reader.tensor(step["input"])], outputs=[reader.tensor(step["output"])], attrs=attrs)
    if step["input"] in reader.producer:
        model.add_edge(reader.producer[step["input"]], node_id, reader.tensor(step["input"]))
    reader.producer[step["output"]] = node_id
    add_to_collective(collectives, model, step["op"], step["name"], attrs, band, node_id)
