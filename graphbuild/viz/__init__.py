"""``graphbuild viz``: pictures of networks and engines.

``visualize`` draws a logical network, the rank networks the partition pass makes from it, an
engine directory, or one segment ``.onnx``, as a self-contained HTML viewer, a static SVG, Graphviz
DOT, or the JSON data model the others are drawn from. The layout is computed here, in Python
(``graphbuild.viz.layout``); the viewer (``viewer.js``, ``viewer.css``) only draws it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from graphbuild.errors import GraphBuildError
from graphbuild.ir import Network

if TYPE_CHECKING:  # the modules below import networkx: loaded on first use, not with graphbuild
    from graphbuild.viz.model import GraphModel

FORMATS = ("html", "svg", "dot", "json")
_SUFFIXES = {".html": "html", ".htm": "html", ".svg": "svg", ".dot": "dot", ".gv": "dot", ".json": "json"}


class VisualizationError(GraphBuildError):
    """What was asked to be drawn, or the format, is not something ``graphbuild viz`` can draw."""


def _ranks_model(nets: Sequence[Network]) -> "GraphModel":
    """The rank networks ``gb.build`` would compile, cut into segments (without exporting them)."""
    from graphbuild.build import rank_networks
    from graphbuild.passes import check_same_schedule, segment
    from graphbuild.viz.model import from_ranks

    ranks = rank_networks(list(nets), verify_each_pass=False)
    schedules = [segment(net) for net in ranks]
    check_same_schedule(schedules)
    return from_ranks(ranks, schedules, nets[0].name)


def build_model(target: Any, *, logical: bool = False) -> "GraphModel":
    """The laid-out picture of ``target`` (see ``visualize``)."""
    from graphbuild.engine import Engine
    from graphbuild.viz.layout import layout
    from graphbuild.viz.model import from_network
    from graphbuild.viz.onnx_source import from_engine_dir, from_segment_file

    if isinstance(target, Engine):
        target = target.path
    if isinstance(target, Network) or (isinstance(target, (list, tuple)) and target and all(isinstance(n, Network) for n in target)):
        nets = [target] if isinstance(target, Network) else list(target)
        model = from_network(nets) if logical else _ranks_model(nets)
    elif isinstance(target, (str, os.PathLike)):
        path = Path(target)
        if path.is_dir():
            model = from_engine_dir(path)
        elif path.is_file() and path.suffix == ".onnx":
            model = from_segment_file(path)
        else:
            raise VisualizationError(f"'{path}' is neither an engine directory nor a segment .onnx file; give one of those, or a gb.Network")
    else:
        raise VisualizationError(f"cannot visualize a {type(target).__name__}: give a gb.Network (or a list of rank-local ones), a gb.Engine, an engine directory or a segment .onnx")
    layout(model)
    return model


def format_for(path: Union[str, os.PathLike], fmt: Optional[str] = None) -> str:
    """The output format: ``fmt`` if given, else from the file suffix (``.html``, ``.svg``, ``.dot``/``.gv``, ``.json``)."""
    if fmt is None:
        fmt = _SUFFIXES.get(Path(path).suffix.lower())
        if fmt is None:
            raise VisualizationError(f"cannot tell the format of '{path}' from its suffix; name it .html, .svg, .dot or .json, or pass format=")
    if fmt not in FORMATS:
        raise VisualizationError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def render_text(data: dict[str, Any], fmt: str) -> str:
    """The text of the picture in format ``fmt`` from its JSON data model."""
    from graphbuild.viz.render import to_dot, to_html, to_svg

    if fmt == "json":
        return json.dumps(data, indent=1) + "\n"
    return {"html": to_html, "svg": to_svg, "dot": to_dot}[fmt](data)


def visualize(net_or_engine: Any, path: Union[str, os.PathLike], format: Optional[str] = None, *, logical: bool = False) -> Path:  # noqa: A002 - the documented keyword
    """Draws a network or an engine into ``path``.

    Args:
        net_or_engine: a ``gb.Network`` (or a list of rank-local networks), a ``gb.Engine``, an
            engine directory, or one segment ``.onnx`` file.
        path: the file to write.
        format: ``html`` (an offline, interactive viewer), ``svg``, ``dot`` or ``json``; by default
            taken from the suffix of ``path``.
        logical: draw a network as written instead of as the ranks the partition pass makes.

    Returns:
        ``path``.

    Raises:
        VisualizationError: the target or the format is not one ``visualize`` knows.
        GraphBuildError: the network cannot be partitioned, or the engine cannot be read.
    """
    from graphbuild.viz.render import to_json

    fmt = format_for(path, format)
    data = to_json(build_model(net_or_engine, logical=logical))
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True)
    out.write_text(render_text(data, fmt), encoding="utf-8")
    return out


__all__ = ["FORMATS", "VisualizationError", "build_model", "format_for", "render_text", "visualize"]
