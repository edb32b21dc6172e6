"""``graphbuild build``: call a network function and compile its network into an engine directory.

    graphbuild build examples/embedding_tp.py:make_network -o out/emb --tp-size 2 --set sharding_dim=1
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from graphbuild.tools.common import CLIError, format_bytes
from graphbuild.tools.loader import as_networks, call_with_kwargs, describe_signature, loaded_function, parse_settings

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "build",
        parents=parents,
        help="build an engine from a Python function that returns a network",
        description=(
            "Calls FUNCTION_SPEC (FILE.py:FUNCTION or MODULE:FUNCTION; FUNCTION defaults to make_network) "
            "with the keyword arguments it accepts, and compiles the network it returns "
            "(a gb.Network, or a list of rank-local networks) into an engine directory."
        ),
    )
    parser.add_argument("function", metavar="FUNCTION_SPEC", help="e.g. examples/embedding_tp.py:make_network")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="engine directory to create")
    parser.add_argument("--tp-size", type=int, metavar="N", help="passed to the function as tp_size=N")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="extra keyword argument for the function (int, float, true/false, none or string); repeatable",
    )
    parser.add_argument("--no-plugin", action="store_true", help="lower embeddings to standard ONNX ops instead of the TPEmbedding custom op")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing engine at DIR")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset of the segments (default 21)")
    parser.add_argument("--verify-each-pass", action="store_true", help="run the IR verifier after every pass")
    parser.set_defaults(handler=run_build)


def run_build(args: argparse.Namespace) -> int:
    import graphbuild as gb

    kwargs: dict[str, Any] = parse_settings(args.settings)
    if args.tp_size is not None:
        if args.tp_size < 1:
            raise CLIError(f"--tp-size must be at least 1, got {args.tp_size}")
        if "tp_size" in kwargs:
            raise CLIError("tp_size is given both with --tp-size and --set; use one")
        kwargs["tp_size"] = args.tp_size

    start = time.perf_counter()
    with loaded_function(args.function) as func:
        where = f"{args.function} ({describe_signature(func)})"
        networks = as_networks(call_with_kwargs(func, kwargs), where)
        defined = time.perf_counter()
        build_options: dict[str, Any] = {"use_plugin": not args.no_plugin, "overwrite": args.overwrite, "verify_each_pass": args.verify_each_pass}
        if args.opset is not None:
            build_options["opset"] = args.opset
        engine = gb.build(networks, args.output, **build_options)
    done = time.perf_counter()
    print(summarize(engine.manifest, str(engine.path), defined - start, done - defined))
    return 0


def summarize(manifest: Manifest, path: str, define_s: float, build_s: float) -> str:
    """The lines ``graphbuild build`` prints about a new engine."""
    first = manifest.ranks[0]
    segments, collectives = len(first.segments), len(first.collectives)
    total = sum(entry.size for entry in manifest.files.values())
    custom = ", ".join(f"{op.domain}::{op.op_type}" for op in manifest.custom_ops) or "none (standard ONNX only)"
    rows = [
        ("engine", path),
        ("tp_size", f"{manifest.tp_size} (ranks {list(manifest.tp_group)})"),
        ("per rank", f"{segments} segment(s), {collectives} collective(s)"),
        ("custom ops", custom),
        ("files", f"{len(manifest.files)}, {format_bytes(total)}"),
        ("time", f"network {define_s * 1000:.0f} ms, build {build_s * 1000:.0f} ms"),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join([f"built engine '{manifest.name}'"] + [f"  {key.ljust(width)}  {value}" for key, value in rows])
