"""A network as a ``networkx`` graph, for analysis and drawing with networkx's own tools.

Nodes of the graph are the network's values (``kind`` "input", "constant" or "value") and ops
(``kind`` "op"), keyed by ``"%name"`` and ``"op:name"`` so the two never collide; edges run from
each input value to the op reading it (``index`` is the input position) and from each op to its
outputs. Graph outputs carry ``outputs``, the names they are exported under.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

from graphbuild.ir.value import Value, format_shape

if TYPE_CHECKING:
    from graphbuild.ir.network import Network


def _value_key(value: Value) -> str:
    return f"%{value.name}"


def to_networkx(net: "Network") -> nx.MultiDiGraph:
    """Returns ``net`` as a bipartite value/op ``networkx.MultiDiGraph`` (see the module docstring)."""
    graph = nx.MultiDiGraph(name=net.name)

    def add_value(value: Value, kind: str) -> None:
        graph.add_node(_value_key(value), kind=kind, dtype=value.dtype.name, shape=format_shape(value.shape))

    for value in net.inputs.values():
        add_value(value, "input")
    for value in net.constants.values():
        add_value(value, "constant")
    for node in net.nodes:
        key = f"op:{node.name}"
        graph.add_node(key, kind="op", op=node.op, domain=node.domain, attrs=dict(node.attrs))
        for index, value in enumerate(node.inputs):
            if value is not None:
                graph.add_edge(_value_key(value), key, index=index)
        for index, value in enumerate(node.outputs):
            add_value(value, "value")
            graph.add_edge(key, _value_key(value), index=index)
    for name, value in net.outputs.items():
        graph.nodes[_value_key(value)].setdefault("outputs", []).append(name)
    return graph
