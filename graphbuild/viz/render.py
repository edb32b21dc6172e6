"""Writes a laid-out ``GraphModel`` as JSON, a self-contained HTML viewer, a static SVG, or DOT.

- ``json``: the data model (``format: graphbuild-viz``): header, columns, bands, nodes with
  positions, edges with their routed points, segments, collectives, scopes, the family legend.
- ``html``: one file that works offline: the JSON, ``viewer.css`` and ``viewer.js`` (both in this
  folder, written for graphbuild) inlined into one page; the viewer draws on a canvas.
- ``svg``: a static drawing of the same layout, for documentation.
- ``dot``: Graphviz source: a cluster per rank and per segment, a collective as one node joined
  from every rank it spans.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from graphbuild.viz.layout import NODE_H, short_name
from graphbuild.viz.model import FAMILIES, GraphModel

FORMAT = "graphbuild-viz"
VERSION = 1
_HERE = Path(__file__).resolve().parent


def to_json(model: GraphModel) -> dict[str, Any]:
    """The picture's data model as JSON data (see the module docstring)."""
    nodes = []
    for node in model.nodes:
        x, y, w, h = model.positions[node["id"]]
        nodes.append({**node, "label": short_name(node["name"]), "x": round(x, 1), "y": round(y, 1), "w": round(w, 1), "h": h})
    return {
        "format": FORMAT,
        "version": VERSION,
        "header": model.header,
        "columns": model.header.get("columns", []),
        "bands": [{"kind": kind, "label": label} for kind, label in model.bands],
        "families": FAMILIES,
        "nodes": nodes,
        "edges": model.edges,
        "ranks": [{"rank": i, "label": label} for i, label in enumerate(model.columns)],
        "segments": model.segments,
        "collectives": model.collectives,
        "scopes": model.scopes(),
    }


def to_html(data: dict[str, Any]) -> str:
    """One self-contained page: the data, the stylesheet and the viewer script inlined."""
    css = (_HERE / "viewer.css").read_text(encoding="utf-8")
    script = (_HERE / "viewer.js").read_text(encoding="utf-8")
    # "</" cannot end the script element early once escaped; JSON reads "<\/" as "</".
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"{data['header']['name']} - graphbuild viz")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<style>\n{css}</style></head><body>\n"
        f"<script type=\"application/json\" id=\"graph-data\">{payload}</script>\n"
        f"<script>\n{script}</script>\n</body></html>\n"
    )


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _path(points: list[float]) -> str:
    """An SVG path through ``points`` with vertical tangents at every point (smooth curves)."""
    parts = [f"M{points[0]},{points[1]}"]
    for i in range(2, len(points), 2):
        x0, y0, x1, y1 = points[i - 2], points[i - 1], points[i], points[i + 1]
        mid = (y0 + y1) / 2
        parts.append(f"C{x0},{mid} {x1},{mid} {x1},{y1}")
    return "".join(parts)


def to_svg(data: dict[str, Any]) -> str:
    """A static SVG of the laid-out picture (nodes, edges, rank columns, segment boxes, bridges)."""
    width, height = data["header"]["size"]
    top = 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height + top:.0f}" '
        f'viewBox="0 {-top} {width:.0f} {height + top:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f'<rect x="0" y="{-top}" width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="8" y="{-top + 22}" font-size="15" font-weight="bold">{_esc(header_line(data))}</text>',
    ]
    for column in data["columns"] if len(data["columns"]) > 1 else []:
        x, y, w, h = column["box"]
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="#f8f9fa" stroke="#dee2e6"/>')
        out.append(f'<text x="{x + 8}" y="{y + 16}" font-weight="bold" fill="#495057">{_esc(column["label"])}</text>')
    for segment in data["segments"]:
        x, y, w, h = segment["box"]
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="none" stroke="#adb5bd" stroke-dasharray="5 3"/>')
        out.append(f'<text x="{x + 6}" y="{y + 12}" fill="#868e96" font-size="10">{_esc(segment.get("file") or segment["id"])}</text>')
    for edge in data["edges"]:
        out.append(f'<path d="{_path(edge["points"])}" fill="none" stroke="#adb5bd" stroke-width="1.2"/>')
    for bridge in data["collectives"]:
        color = FAMILIES["collective"]
        dash = ' stroke-dasharray="10 5"' if bridge["op"] == "allgather" else ""
        y = bridge["y"]
        out.append(f'<line x1="{bridge["x0"]}" y1="{y}" x2="{bridge["x1"]}" y2="{y}" stroke="{color}" stroke-width="8" stroke-opacity="0.35"{dash}/>')
    for node in data["nodes"]:
        out.append(_svg_node(node, data["families"]))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_node(node: dict[str, Any], families: dict[str, str]) -> str:
    x, y, w, h = node["x"] - node["w"] / 2, node["y"], node["w"], node["h"]
    color = families[node["family"]]
    stroke = ' stroke="#c92a2a" stroke-width="3"' if node["tp"] else ""
    rx = h / 2 if node["family"] in ("io", "collective") else 5
    return (
        f'<g><title>{_esc(node["op"])} {_esc(node["name"])}</title>'
        f'<rect x="{x:.1f}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{color}"{stroke}/>'
        f'<text x="{node["x"]}" y="{y + 15}" text-anchor="middle" fill="#fff" font-weight="bold">{_esc(node["op"])}</text>'
        f'<text x="{node["x"]}" y="{y + NODE_H - 9}" text-anchor="middle" fill="#fff" font-size="10">{_esc(node["label"])}</text></g>'
    )


def header_line(data: dict[str, Any]) -> str:
    """``gpt: engine, tp_size 2, float32, opset 21, 1.2 MB`` (what the picture's header says)."""
    from graphbuild.tools.common import format_bytes

    header = data["header"]
    parts = [f"{header['name']}: {header['kind']}", f"tp_size {header['tp_size']}", str(header.get("dtype", "-"))]
    if header.get("opset"):
        parts.append(f"opset {header['opset']}")
    if header.get("files"):
        parts.append(f"{len(header['files'])} files, {format_bytes(sum(f['bytes'] for f in header['files']))}")
    parts.append(f"weights {format_bytes(int(header.get('weight_bytes', 0)))}")
    return ", ".join(parts)


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(data: dict[str, Any]) -> str:
    """Graphviz source of the picture (``dot -Tsvg graph.dot``)."""
    lines = [f"digraph {_dot_id(data['header']['name'])} {{", "  rankdir=TB; node [shape=box style=\"rounded,filled\" fontname=Helvetica fontcolor=white];"]
    in_segment = {n: s["id"] for s in data["segments"] for n in s["nodes"]}
    bridged = {n for c in data["collectives"] for n in c["nodes"]}
    clusters: dict[Any, dict[Any, list[str]]] = {}
    for node in data["nodes"]:
        if node["id"] in bridged:
            continue
        label = f"{node['op']}\n{node['name']}"
        extra = ' penwidth=3 color="#c92a2a"' if node["tp"] else ""
        line = f"{_dot_id(node['id'])} [label={_dot_id(label)} fillcolor={_dot_id(data['families'][node['family']])}{extra}];"
        clusters.setdefault(node["column"], {}).setdefault(in_segment.get(node["id"]), []).append(line)
    for column, groups in clusters.items():
        many = len(data["columns"]) > 1
        if many:
            lines.append(f"  subgraph {_dot_id(f'cluster_rank{column}')} {{ label={_dot_id(data['columns'][column]['label'])};")
        for segment, members in groups.items():
            if segment is not None:
                lines.append(f"    subgraph {_dot_id(f'cluster_{segment}')} {{ label={_dot_id(segment)}; style=dashed;")
            lines += [f"      {m}" for m in members]
            if segment is not None:
                lines.append("    }")
        if many:
            lines.append("  }")
    merged = {}
    for bridge in data["collectives"]:
        style = "dashed" if bridge["op"] == "allgather" else "bold"
        label = f"{bridge['label']}\n{bridge['name']}\nranks {bridge['group']}"
        lines.append(f"  {_dot_id(bridge['id'])} [label={_dot_id(label)} shape=hexagon fillcolor={_dot_id(FAMILIES['collective'])} style=\"filled,{style}\"];")
        merged.update({n: bridge["id"] for n in bridge["nodes"]})
    for edge in data["edges"]:
        source, target = merged.get(edge["source"], edge["source"]), merged.get(edge["target"], edge["target"])
        lines.append(f"  {_dot_id(source)} -> {_dot_id(target)} [label={_dot_id(edge['tensor'])} fontsize=9];")
    lines.append("}")
    return "\n".join(lines) + "\n"
