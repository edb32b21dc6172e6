"""``graphbuild viz``: draw an engine, one segment, or a network entry point.

    graphbuild viz out/emb -o emb.html
    graphbuild viz out/emb/rank0/segment0.onnx -o seg.svg
    graphbuild viz examples/gpt_tp.py:make_network --tp-size 2 -o gpt.html
    graphbuild viz examples/embedding_tp.py:make_network --logical -o emb.dot
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from graphbuild.tools.common import CLIError


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "viz",
        parents=parents,
        help="draw an engine, a segment or a network as an offline HTML viewer, SVG, DOT or JSON",
        description=(
            "Draws TARGET: an engine directory (every rank side by side, segments boxed, each collective "
            "a bridge across its ranks), one segment .onnx, or a network entry point FILE.py:FUNCTION "
            "(called as 'graphbuild build' calls it; drawn as the ranks the partition pass makes, or as "
            "written with --logical). The format follows --format or the output's suffix."
        ),
    )
    parser.add_argument("target", metavar="TARGET", help="engine directory, segment .onnx, or FILE.py:FUNCTION")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write (.html, .svg, .dot or .json)")
    parser.add_argument("--format", choices=("html", "svg", "dot", "json"), help="output format (default: from the suffix of FILE)")
    parser.add_argument("--logical", action="store_true", help="draw a network entry point as written, not partitioned into ranks")
    parser.add_argument("--tp-size", type=int, metavar="N", help="passed to the function as tp_size=N (entry points)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="extra keyword argument for the function (entry points); repeatable",
    )
    parser.add_argument("--screenshot", metavar="PNG", help="also write a PNG of the HTML picture as headless Chromium draws it")
    parser.add_argument("--screenshot-size", default="1600x1000", metavar="WxH", help="the screenshot's size in pixels (default 1600x1000)")
    parser.add_argument("--fit", action="store_true", help="screenshot the whole network (default: the top, at full width)")
    parser.add_argument("--select", metavar="NODE", help="open this node's details panel in the screenshot (a node name or id)")
    parser.set_defaults(handler=run_viz)


def _target(args: argparse.Namespace) -> Any:
    """The engine path, or the networks an entry point returns."""
    if os.path.isdir(args.target) or args.target.endswith(".onnx"):
        if args.tp_size is not None or args.settings or args.logical:
            raise CLIError(f"--tp-size, --set and --logical apply to network entry points, not to '{args.target}'")
        if not os.path.exists(args.target):
            raise CLIError(f"'{args.target}' does not exist")
        return args.target
    from graphbuild.tools.loader import as_networks, call_with_kwargs, convert_settings, describe_signature, loaded_function, parse_settings

    settings = parse_settings(args.settings)
    if args.tp_size is not None:
        if args.tp_size < 1:
            raise CLIError(f"--tp-size must be at least 1, got {args.tp_size}")
        if "tp_size" in settings:
            raise CLIError("tp_size is given both with --tp-size and --set; use one")
    with loaded_function(args.target) as func:
        kwargs = convert_settings(func, settings)  # typed by the function's annotations, as for build
        if args.tp_size is not None:
            kwargs["tp_size"] = args.tp_size
        return as_networks(call_with_kwargs(func, kwargs), f"{args.target} ({describe_signature(func)})")


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 100 or int(height) < 100:
        raise CLIError(f"bad --screenshot-size '{text}': expected WIDTHxHEIGHT in pixels, e.g. 1600x1000")
    return int(width), int(height)


def run_viz(args: argparse.Namespace) -> int:
    from graphbuild.viz import format_for, visualize

    fmt = format_for(args.output, args.format)
    if args.screenshot and fmt != "html":
        raise CLIError("--screenshot draws the HTML picture; write it to a .html file (or --format html)")
    if (args.fit or args.select) and not args.screenshot:
        raise CLIError("--fit and --select shape the screenshot; add --screenshot PNG")
    size = _size(args.screenshot_size) if args.screenshot else None
    path = visualize(_target(args), args.output, fmt, logical=args.logical)
    print(f"wrote {path} ({fmt}, {path.stat().st_size} bytes)")
    if args.screenshot and size:
        from graphbuild.viz.browser import screenshot

        png = screenshot(path, args.screenshot, width=size[0], height=size[1], fit_all=args.fit, select=args.select)
        print(f"wrote {png} (headless Chromium, {size[0]}x{size[1]})")
    return 0
