"""A layered (Sugiyama-style) top-to-bottom layout of a ``GraphModel``, computed in Python.

Steps, per column (one column per rank, side by side):

1. **Layering**: longest path from the sources, inside each band (inputs, segment, collective,
   outputs; see ``graphbuild.viz.model``), using ``networkx.topological_generations`` of the
   band's subgraph. Bands are stacked at the same heights in every column, so segment ``k`` of
   every rank shares one strip and each collective sits on one row across the ranks it joins.
2. **Long edges** get a dummy node in every layer they cross, so they are routed around nodes.
3. **Ordering**: barycenter sweeps, down then up, four times; a sort is stable, so ties keep
   the network's own order.
4. **Coordinates**: nodes are packed left to right in their order, then pulled towards the mean
   position of their neighbours in the layer above (down sweeps) and below (up sweeps), and
   packed again with a minimum gap; each layer is shifted so that the pull balances.

Results are stored in the model: ``positions`` (``x`` centre, ``y`` top, width, height), and the
dicts gain ``points`` (edges), ``box`` (segments, ranks) and ``x0``/``x1``/``y`` (collectives).
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from graphbuild.viz.model import GraphModel

NODE_H = 38
LAYER_GAP = 34
BAND_GAP = 30
NODE_GAP = 18
DUMMY_W = 6
COLUMN_GAP = 90
BOX_PAD = 14
SWEEPS = 4


def node_width(node: dict[str, Any]) -> float:
    """Wide enough for the op and the short name (at about 6.6 px a character), within [72, 240]."""
    text = max(len(node["op"]), min(len(short_name(node["name"])), 30))
    return float(min(240, max(72, 6.6 * text + 22)))


def short_name(name: str) -> str:
    """The name itself up to 16 characters, else its last one or two parts:
    ``h.0.attn/q_heads`` -> itself, ``h.0.attn/q_heads/Shape`` -> ``q_heads/Shape``."""
    if len(name) <= 16:
        return name
    parts = name.replace("/", "\x00/").replace(".", "\x00.").split("\x00")
    tail = "".join(parts[-2:]).lstrip("./")
    return tail if len(tail) <= 30 else "…" + tail[-29:]


def layout(model: GraphModel) -> None:
    """Computes every position of ``model`` in place (see the module docstring)."""
    by_column: dict[int, list[dict[str, Any]]] = {}
    for node in model.nodes:
        by_column.setdefault(node["column"], []).append(node)
    local, depth = _layers(model, by_column)
    starts, total = [], 0
    for band in range(len(model.bands)):
        starts.append(total)
        total += depth.get(band, 0)
    layer_of = {node_id: starts[model.node(node_id)["band"]] + layer for node_id, layer in local.items()}
    layer_y = _layer_tops(model, starts, depth, total)
    widths = {node["id"]: node_width(node) for node in model.nodes}
    offset = 0.0
    columns = []
    chains: dict[int, list[str]] = {}
    for column in range(len(model.columns)):
        nodes = by_column.get(column, [])
        ids = {n["id"] for n in nodes}
        edges = [(i, e) for i, e in enumerate(model.edges) if e["source"] in ids]
        x, column_chains = _place_column(nodes, edges, layer_of, widths, total)
        chains.update(column_chains)
        left = min((x[i] - widths.get(i, DUMMY_W) / 2 for i in x), default=0.0)
        right = max((x[i] + widths.get(i, DUMMY_W) / 2 for i in x), default=0.0)
        right = max(right, left + 120)
        shift = offset + BOX_PAD + 8 - left
        for node in nodes:
            model.positions[node["id"]] = (x[node["id"]] + shift, layer_y[layer_of[node["id"]]], widths[node["id"]], NODE_H)
        for i, chain in column_chains.items():
            model.edges[i]["points"] = _points(model, model.edges[i], [(x[d] + shift, layer_y[layer]) for d, layer in chain])
        columns.append({"label": model.columns[column], "box": [offset, 0.0, right - left + 2 * BOX_PAD + 16, 0.0]})
        offset += right - left + 2 * BOX_PAD + 16 + COLUMN_GAP
    for i, edge in enumerate(model.edges):
        if i not in chains:
            edge["points"] = _points(model, edge, [])
    height = layer_y[-1] + NODE_H + BAND_GAP if total else NODE_H
    for column in columns:
        column["box"][3] = height
    model.header["columns"] = columns
    model.header["size"] = [max(offset - COLUMN_GAP, 200.0), height]
    _boxes(model, columns, starts, depth, layer_y)


def _layers(model: GraphModel, by_column: dict[int, list[dict[str, Any]]]) -> tuple[dict[str, int], dict[int, int]]:
    """Each node's layer inside its band, and each band's depth (the deepest column's)."""
    local: dict[str, int] = {}
    depth: dict[int, int] = {}
    graph = nx.DiGraph()
    graph.add_nodes_from(node["id"] for node in model.nodes)
    graph.add_edges_from(
        (e["source"], e["target"]) for e in model.edges if model.node(e["source"])["band"] == model.node(e["target"])["band"]
    )
    for nodes in by_column.values():
        bands: dict[int, list[str]] = {}
        for node in nodes:
            bands.setdefault(node["band"], []).append(node["id"])
        for band, ids in bands.items():
            for layer, generation in enumerate(nx.topological_generations(graph.subgraph(ids))):
                for node_id in generation:
                    local[node_id] = layer
                depth[band] = max(depth.get(band, 0), layer + 1)
    return local, depth


def _layer_tops(model: GraphModel, starts: list[int], depth: dict[int, int], total: int) -> list[float]:
    tops, y = [], BAND_GAP + 10.0
    band_of_layer = {}
    for band, start in enumerate(starts):
        for layer in range(start, start + depth.get(band, 0)):
            band_of_layer[layer] = band
    for layer in range(total):
        if layer > 0 and band_of_layer[layer] != band_of_layer[layer - 1]:
            y += BAND_GAP
        tops.append(y)
        y += NODE_H + LAYER_GAP
    return tops or [0.0]


def _place_column(nodes: list[dict[str, Any]], edges: list[tuple[int, dict[str, Any]]], layer_of: dict[str, int], widths: dict[str, float], total: int):
    """Orders and places one column's nodes; returns x centres (dummies included) and edge chains."""
    layers: list[list[str]] = [[] for _ in range(total)]
    for node in nodes:
        layers[layer_of[node["id"]]].append(node["id"])
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    chains: dict[int, list[tuple[str, int]]] = {}
    for index, edge in edges:
        source, target = edge["source"], edge["target"]
        top, bottom = layer_of[source], layer_of[target]
        previous = source
        chain = []
        for layer in range(top + 1, bottom):
            dummy = f"\x00{index}:{layer}"
            layers[layer].append(dummy)
            chain.append((dummy, layer))
            down.setdefault(previous, []).append(dummy)
            up.setdefault(dummy, []).append(previous)
            previous = dummy
        if bottom > top:
            down.setdefault(previous, []).append(target)
            up.setdefault(target, []).append(previous)
        if chain:
            chains[index] = chain
    position = {v: i for layer in layers for i, v in enumerate(layer)}
    for _ in range(SWEEPS):
        for order, neighbours in ((range(1, total), up), (range(total - 2, -1, -1), down)):
            for layer in order:
                row = layers[layer]
                keys = {v: _mean([position[u] for u in neighbours.get(v, ())], position[v]) for v in row}
                row.sort(key=keys.__getitem__)
                for i, v in enumerate(row):
                    position[v] = i
    x: dict[str, float] = {}
    for row in layers:
        _pack(row, {v: 0.0 for v in row}, widths, x)
    for _ in range(SWEEPS):
        for order, neighbours in ((range(1, total), up), (range(total - 2, -1, -1), down)):
            for layer in order:
                row = layers[layer]
                _pack(row, {v: _mean([x[u] for u in neighbours.get(v, ())], x[v]) for v in row}, widths, x)
    return x, chains


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _pack(row: list[str], desired: dict[str, float], widths: dict[str, float], x: dict[str, float]) -> None:
    """Places ``row`` in order at its desired centres, at least ``NODE_GAP`` apart, shifted so the
    mean displacement is zero."""
    if not row:
        return
    right = float("-inf")
    placed = []
    for v in row:
        half = widths.get(v, DUMMY_W) / 2
        centre = max(desired[v], right + half + NODE_GAP)
        placed.append(centre)
        right = centre + half
    shift = sum(desired[v] - c for v, c in zip(row, placed)) / len(row)
    for v, centre in zip(row, placed):
        x[v] = centre + shift


def _points(model: GraphModel, edge: dict[str, Any], through: list[tuple[float, float]]) -> list[float]:
    sx, sy, _, sh = model.positions[edge["source"]]
    tx, ty, _, _ = model.positions[edge["target"]]
    points = [sx, sy + sh]
    for x, y in through:
        points += [x, y + NODE_H / 2]
    return [round(p, 1) for p in points + [tx, ty]]


def _boxes(model: GraphModel, columns: list[dict[str, Any]], starts: list[int], depth: dict[int, int], layer_y: list[float]) -> None:
    """Segment boxes span their column and band; collectives span their ranks' nodes."""
    for segment in model.segments:
        band = segment["band"]
        top = layer_y[starts[band]] - BOX_PAD - 12
        bottom = layer_y[starts[band] + depth[band] - 1] + NODE_H + BOX_PAD
        left, _, width, _ = columns[model.node(segment["nodes"][0])["column"]]["box"]
        segment["box"] = [left + 6, top, width - 12, bottom - top]
    for collective in model.collectives:
        xs = [model.positions[n][0] for n in collective["nodes"]]
        collective["y"] = model.positions[collective["nodes"][0]][1] + NODE_H / 2
        collective["x0"], collective["x1"] = min(xs), max(xs)
