"""The picture's data model: nodes, edges, ranks, segments, collectives and scopes.

``GraphModel`` is what every output format is drawn from. It is filled by ``from_network`` (a
logical network), ``from_ranks`` (the rank networks the partition pass makes, cut into segments)
or ``graphbuild.viz.onnx_source`` (an engine directory or one segment ``.onnx``), then laid out by
``graphbuild.viz.layout`` and written by ``graphbuild.viz.render``.

Node ids are unique across ranks: ``op:NAME``, ``in:NAME`` (graph input) and ``out:NAME`` (graph
output) in a logical picture, prefixed with ``rN/`` for rank ``N``. Every node sits in a column
(one per rank) and a band: band 0 holds the graph inputs, then one band per step (a segment, or
one collective), and the last band the graph outputs; bands line up across columns, so a
collective's per-rank nodes share one row and are drawn as one bridge across the ranks it joins.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from graphbuild.ir import Network, Node, Value
from graphbuild.sharding import hidden_split_sizes, vocab_shard_rows

FAMILIES: dict[str, str] = {
    "io": "#8a94a6",
    "embedding": "#d9480f",
    "collective": "#7048e8",
    "matmul": "#1971c2",
    "norm": "#2b8a3e",
    "activation": "#e8590c",
    "elementwise": "#5c7cfa",
    "shape": "#868e96",
    "reduce": "#0c8599",
    "other": "#495057",
}
"""Op family -> colour, in legend order."""

_FAMILY_OPS = {
    "embedding": {"embedding", "tpembedding"},
    "collective": {"allreduce", "allgather"},
    "matmul": {"matmul", "linear", "gemm", "einsum", "bmm"},
    "norm": {"layernorm", "layernormalization", "rmsnorm", "simplifiedlayernormalization", "batchnormalization"},
    "activation": {"gelu", "relu", "softmax", "tanh", "sigmoid", "erf", "silu", "swish", "logsoftmax", "softplus"},
    "elementwise": {
        "add", "sub", "mul", "div", "pow", "sqrt", "exp", "log", "neg", "abs", "where", "less", "greater",
        "equal", "and", "or", "not", "lessorequal", "greaterorequal", "max", "min", "clip", "reciprocal",
        "scale", "cast",
    },
    "shape": {
        "reshape", "transpose", "split", "concat", "unsqueeze", "squeeze", "slice", "expand", "shape",
        "range", "arangelike", "flatten", "identity", "constant", "constantofshape", "tile", "gather", "gatherelements",
    },
}  # fmt: skip
COLLECTIVE_STYLES = {"allreduce": "all-reduce (sum)", "allgather": "all-gather (concat)"}


def op_family(op: str) -> str:
    """The colour family of an op, from its graphbuild or ONNX name (``layer_norm``, ``LayerNormalization``)."""
    key = op.replace("_", "").lower()
    if key in ("input", "output"):
        return "io"
    for family, ops in _FAMILY_OPS.items():
        if key in ops:
            return family
    if key.startswith("reduce") or key.startswith("arg"):
        return "reduce"
    return "other"


def is_tp_embedding(op: str) -> bool:
    """``TPEmbedding`` (ONNX), ``tp_embedding`` (rank IR) and TP ``embedding`` nodes stand out."""
    return op.replace("_", "").lower() == "tpembedding"


_SEPARATORS = re.compile(r"[./]")


def scopes_of(name: str) -> list[str]:
    """The name scopes a node name lies in, outermost first: ``h.0.attn/q`` -> ``h``, ``h.0``, ``h.0.attn``."""
    return [name[: m.start()] for m in _SEPARATORS.finditer(name) if m.start() > 0]


def plain(value: Any) -> Any:
    """Attribute values as JSON data: tuples become lists, numpy scalars numbers, bytes text."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def source_of(origin: Optional[tuple[str, int, str]]) -> Optional[str]:
    """``model.py:12 in forward`` (the form ``Node.where`` uses), or None."""
    if origin is None:
        return None
    filename, line, function = origin
    return f"{os.path.basename(filename)}:{line} in {function}"


@dataclasses.dataclass
class Tensor:
    """A tensor as the picture shows it."""

    name: str
    dtype: str
    shape: list[Any]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _tensor(value: Value) -> Tensor:
    return Tensor(value.name, value.dtype.name, [plain(d) for d in value.shape])


class GraphModel:
    """Nodes, edges and their grouping, before and after layout (see the module docstring).

    Attributes:
        header: name, kind (``logical``, ``ranks``, ``engine``, ``segment``), tp_size, dtype, opset,
            files and sizes, shown in the picture's header.
        columns: one label per column (``rank 0``...; ``network`` for a logical picture).
        bands: per band, ``(kind, label)``: ``("inputs", ...)``, ``("segment", "segment 0")``,
            ``("collective", name)``, ``("body", ...)``, ``("outputs", ...)``.
        nodes: node dicts (``id``, ``name``, ``op``, ``domain``, ``family``, ``rank``, ``column``,
            ``band``, ``segment``, ``inputs``, ``outputs``, ``attrs``, ``weights``, ``source``).
        edges: ``{"source", "target", "tensor", "dtype", "shape"}`` dicts.
        segments: ``{"id", "rank", "index", "file", "band", "nodes"}`` dicts.
        collectives: ``{"id", "op", "name", "instance_id", "group", "band", "nodes", "attrs"}``.
    """

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.columns: list[str] = []
        self.bands: list[tuple[str, str]] = []
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self.segments: list[dict[str, Any]] = []
        self.collectives: list[dict[str, Any]] = []
        self._ids: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, tuple[float, float, float, float]] = {}  # filled by layout

    def node(self, node_id: str) -> dict[str, Any]:
        return self._ids[node_id]

    def band(self, kind: str, label: str, index: Optional[int] = None) -> int:
        """The band at ``index`` (created or checked), or a new band at the end."""
        if index is None or index == len(self.bands):
            self.bands.append((kind, label))
            return len(self.bands) - 1
        return index

    def add_node(self, node_id: str, *, name: str, op: str, column: int, band: int, rank: Optional[int], domain: str = "",
                 inputs: Sequence[Tensor] = (), outputs: Sequence[Tensor] = (), attrs: Optional[dict[str, Any]] = None,
                 weights: Sequence[dict[str, Any]] = (), source: Optional[str] = None, segment: Optional[str] = None) -> dict[str, Any]:
        """Adds one node (see the class docstring for its fields)."""
        if node_id in self._ids:
            raise ValueError(f"duplicate node id {node_id!r}")
        family = op_family(op)
        if op == "Gather" and weights and weights[0] is not None and len(weights[0]["shape"]) == 2:
            family = "embedding"  # a lookup in a table (embeddings lowered without the plugin)
        node = {
            "id": node_id, "name": name, "op": op, "domain": domain, "family": family,
            "tp": is_tp_embedding(op) or (op == "embedding" and int((attrs or {}).get("tp_size", 1)) > 1),
            "rank": rank, "column": column, "band": band, "segment": segment,
            "inputs": [t.as_json() for t in inputs], "outputs": [t.as_json() for t in outputs],
            "attrs": plain(attrs or {}), "weights": list(weights), "source": source,
        }  # fmt: skip
        self.nodes.append(node)
        self._ids[node_id] = node
        return node

    def add_edge(self, source: str, target: str, tensor: Tensor) -> None:
        self.edges.append({"source": source, "target": target, "tensor": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape)})

    def scopes(self) -> list[dict[str, Any]]:
        """Name scopes holding at least two nodes of one column: ``{"name", "parent", "nodes"}``,
        in tree order (each scope right after its parent)."""
        members: dict[str, list[str]] = {}
        per_column: dict[tuple[str, int], int] = {}
        for node in self.nodes:
            if node["op"] in ("input", "output"):
                continue
            for scope in scopes_of(node["name"]):
                members.setdefault(scope, []).append(node["id"])
                per_column[scope, node["column"]] = per_column.get((scope, node["column"]), 0) + 1
        kept = {name for (name, _), count in per_column.items() if count >= 2}
        result = []
        for name in sorted(kept, key=lambda s: [_natural(p) for p in scopes_of(s) if p in kept] + [_natural(s)]):
            parents = [p for p in scopes_of(name) if p in kept]
            result.append({"name": name, "parent": parents[-1] if parents else None, "nodes": members[name]})
        return result


def _natural(text: str) -> list[Any]:
    """Sort key that puts ``h.2`` before ``h.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def weight_entry(name: str, dtype: str, shape: Sequence[Any], nbytes: int) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": [plain(d) for d in shape], "bytes": int(nbytes)}


def _prefix(rank: Optional[int]) -> str:
    return "" if rank is None else f"r{rank}/"


class _ColumnWriter:
    """Adds one network's nodes and edges to a column of a ``GraphModel``."""

    def __init__(self, model: GraphModel, net: Network, column: int, rank: Optional[int]) -> None:
        self.model, self.net, self.column, self.rank = model, net, column, rank
        self.prefix = _prefix(rank)
        self.producer: dict[int, str] = {}

    def inputs(self, band: int) -> None:
        for name, value in self.net.inputs.items():
            node_id = f"{self.prefix}in:{name}"
            self.model.add_node(node_id, name=name, op="input", column=self.column, band=band, rank=self.rank, outputs=[_tensor(value)])
            self.producer[id(value)] = node_id

    def node(self, node: Node, band: int, segment: Optional[str] = None) -> str:
        node_id = f"{self.prefix}op:{node.name}"
        weights = [weight_entry(v.name, v.dtype.name, v.shape, v.const.nbytes) for v in node.inputs if v is not None and v.is_constant]
        tensors = [_tensor(v) for v in node.inputs if v is not None and not v.is_constant]
        self.model.add_node(
            node_id, name=node.name, op=node.op, domain=node.domain, column=self.column, band=band, rank=self.rank,
            inputs=tensors, outputs=[_tensor(v) for v in node.outputs], attrs=node.attrs, weights=weights,
            source=source_of(node.origin), segment=segment,
        )  # fmt: skip
        for value in node.inputs:
            if value is not None and not value.is_constant and id(value) in self.producer:
                self.model.add_edge(self.producer[id(value)], node_id, _tensor(value))
        for value in node.outputs:
            self.producer[id(value)] = node_id
        return node_id

    def outputs(self, band: int) -> None:
        for name, value in self.net.outputs.items():
            node_id = f"{self.prefix}out:{name}"
            self.model.add_node(node_id, name=name, op="output", column=self.column, band=band, rank=self.rank, inputs=[_tensor(value)])
            if id(value) in self.producer:
                self.model.add_edge(self.producer[id(value)], node_id, _tensor(value))


def _weight_bytes(nets: Iterable[Network]) -> int:
    return int(sum(v.const.nbytes for net in nets for v in net.constants.values()))


def _main_dtype(nets: Iterable[Network]) -> str:
    sizes: dict[str, int] = {}
    for net in nets:
        for value in net.constants.values():
            sizes[value.dtype.name] = sizes.get(value.dtype.name, 0) + value.const.nbytes
    return max(sizes, key=sizes.__getitem__) if sizes else "-"


def from_network(nets: Sequence[Network]) -> GraphModel:
    """The logical picture: each network as written (several for rank-local networks), unpartitioned."""
    tp_size = max((int(n.attrs.get("tp_size", 1)) for net in nets for n in net.nodes if n.op == "embedding"), default=1)
    model = GraphModel({
        "name": nets[0].name, "kind": "logical", "tp_size": tp_size, "dtype": _main_dtype(nets), "opset": None,
        "weight_bytes": _weight_bytes(nets), "files": [],
    })  # fmt: skip
    inputs, body, outputs = model.band("inputs", "inputs"), model.band("body", "network"), model.band("outputs", "outputs")
    for column, net in enumerate(nets):
        rank = net.meta.get("tp_position") if len(nets) > 1 else None
        model.columns.append(net.name)
        writer = _ColumnWriter(model, net, column, rank if isinstance(rank, int) else (column if len(nets) > 1 else None))
        writer.inputs(inputs)
        for node in net.nodes:
            writer.node(node, body)
        writer.outputs(outputs)
    annotate_shards(model)
    return model


def from_ranks(ranks: Sequence[Network], schedules: Sequence[Sequence[Any]], name: str) -> GraphModel:
    """The partitioned picture: rank networks side by side, cut into their segments and collectives.

    Args:
        ranks: one network per rank, as the partition pass returns them.
        schedules: ``graphbuild.passes.segment`` of each rank (the same collectives in the same order).
        name: the network's name, for the header.
    """
    from graphbuild.passes import CollectiveStep

    model = GraphModel({
        "name": name, "kind": "ranks", "tp_size": len(ranks), "dtype": _main_dtype(ranks), "opset": None,
        "weight_bytes": _weight_bytes(ranks), "files": [],
    })  # fmt: skip
    model.band("inputs", "inputs")
    for step in schedules[0]:
        if isinstance(step, CollectiveStep):
            model.band("collective", step.node.name)
        else:
            model.band("segment", f"segment {step.index}")
    outputs = model.band("outputs", "outputs")
    collectives: dict[Any, dict[str, Any]] = {}
    for rank, (net, steps) in enumerate(zip(ranks, schedules)):
        model.columns.append(f"rank {rank}")
        writer = _ColumnWriter(model, net, rank, rank)
        writer.inputs(0)
        for band, step in enumerate(steps, start=1):
            if isinstance(step, CollectiveStep):
                node_id = writer.node(step.node, band)
                add_to_collective(collectives, model, step.node.op, step.node.name, step.node.attrs, band, node_id)
                continue
            seg_id = f"r{rank}/segment{step.index}"
            ids = [writer.node(node, band, seg_id) for node in step.nodes]
            file = f"rank{rank}/segment{step.index}.onnx"  # where gb.build writes it
            model.segments.append({"id": seg_id, "rank": rank, "index": step.index, "file": file, "band": band, "nodes": ids})
        writer.outputs(outputs)
    model.collectives = list(collectives.values())
    annotate_shards(model)
    return model


def add_to_collective(collectives: dict[Any, dict[str, Any]], model: GraphModel, op: str, name: str, attrs: dict[str, Any], band: int, node_id: str) -> None:
    """Joins one rank's collective node to the bridge of its instance (created on first sight)."""
    key = (attrs.get("instance_id"), band)
    entry = collectives.get(key)
    if entry is None:
        entry = collectives[key] = {
            "id": f"c{len(collectives)}", "op": op, "label": COLLECTIVE_STYLES.get(op, op), "name": name,
            "instance_id": attrs.get("instance_id"), "group": plain(attrs.get("group", [])), "band": band,
            "nodes": [], "attrs": {k: plain(v) for k, v in attrs.items() if k not in ("rank", "tp_position")},
        }  # fmt: skip
    entry["nodes"].append(node_id)
    model.node(node_id)["collective"] = entry["id"]


def annotate_shards(model: GraphModel) -> None:
    """Adds ``shard``: the row or column range each embedding lookup holds, to its attributes."""
    readers: dict[str, list[dict[str, Any]]] = {}
    for edge in model.edges:
        readers.setdefault(edge["source"], []).append(model.node(edge["target"]))
    for node in model.nodes:
        attrs, op = node["attrs"], node["op"]
        if op == "embedding" and int(attrs.get("tp_size", 1)) > 1:
            n, vocab, dim = int(attrs["tp_size"]), int(attrs.get("vocab_size", 0)), int(attrs.get("embedding_dim", 0))
            group = list(attrs.get("tp_group") or range(n))
            ranks = [attrs["tp_rank"]] if attrs.get("tp_rank") in group else group
            attrs["shard"] = "; ".join(f"rank {r}: {_range(vocab, dim, n, group.index(r), int(attrs.get('sharding_dim', 0)))}" for r in ranks)
        elif is_tp_embedding(op) and node["weights"]:
            rows, cols = (node["weights"][0]["shape"] + [0, 0])[:2]
            gathers = [r for r in readers.get(node["id"], []) if r["op"].lower() == "allgather"]
            n = int(attrs.get("tp_size", len(model.columns) if model.header["kind"] != "segment" else 1))
            rank = int(attrs.get("tp_position", node["rank"] or 0))
            if model.header["kind"] != "segment":  # ONNX's TPEmbedding leaves the rank to its file's place
                attrs.setdefault("tp_size", n)
                attrs.setdefault("tp_position", rank)
                group = next((r["attrs"]["group"] for r in readers.get(node["id"], []) if r["attrs"].get("group")), None)
                attrs.setdefault("tp_rank", group[rank] if group and rank < len(group) else rank)
            if gathers:
                sizes = gathers[0]["attrs"].get("sizes") or [cols] * n
                start = sum(sizes[:rank])
                attrs["shard"] = f"columns [{start}, {start + cols}) of {sum(sizes)} (sharding_dim=1)"
                attrs.setdefault("sharding_dim", 1)
            else:
                start, vocab = int(attrs.get("vocab_start", 0)), int(attrs.get("vocab_size", rows))
                attrs["shard"] = f"rows [{start}, {min(start + rows, vocab)}) of {vocab} (sharding_dim=0)"
                if n > 1:
                    attrs.setdefault("sharding_dim", 0)


def _range(vocab: int, dim: int, n: int, rank: int, sharding_dim: int) -> str:
    if sharding_dim == 0:
        rows = vocab_shard_rows(vocab, n)
        return f"rows [{rank * rows}, {min((rank + 1) * rows, vocab)})"
    sizes = hidden_split_sizes(dim, n)
    start = sum(sizes[:rank])
    return f"columns [{start}, {start + sizes[rank]})"
