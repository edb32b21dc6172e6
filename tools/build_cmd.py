"""``graphbuild build``: call a network function and compile its network into an engine directory.

    graphbuild build examples/embedding_tp.py:make_network -o out/emb --tp-size 2 --set sharding_dim=1

With ``-v`` every compiler phase is logged with its time as it ends (the times ``compile_engine``
measures); on a terminal a progress bar follows the writing of the weights. ``--json`` prints the
summary as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from graphbuild.tools.common import CLIError, format_bytes, printable
from graphbuild.tools.loader import as_networks, call_with_kwargs, convert_settings, describe_signature, loaded_function, parse_settings

logger = logging.getLogger("graphbuild.build")

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "build",
        parents=parents,
        help="build an engine from a Python function that returns a network",
        description=(
            "Calls FUNCTION_SPEC (FILE.py:FUNCTION or MODULE:FUNCTION; FUNCTION defaults to make_network) "
            "with --tp-size and --set as keyword arguments, and compiles the network it returns "
            "(a gb.Network, or a list of rank-local networks) into an engine directory."
        ),
    )
    parser.add_argument("function", metavar="FUNCTION_SPEC", help="e.g. examples/embedding_tp.py:make_network")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="engine directory to create")
    parser.add_argument("--tp-size", type=int, metavar="N", help="passed to the function as tp_size=N (it must take tp_size)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="keyword argument for the function, converted to the type its annotation names "
        "(int, float, bool, str, Optional, Literal; unannotated: a guess); repeatable",
    )
    parser.add_argument("--no-plugin", action="store_true", help="lower embeddings to standard ONNX ops instead of the TPEmbedding custom op")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing engine at DIR")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset of the segments (default 21; 17 up to the newest the installed ONNX Runtime loads)")
    parser.add_argument("--verify-each-pass", action="store_true", help="run the IR verifier after every pass")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run_build)


class PhaseLog(dict):
    """``compile_engine``'s ``timings`` dict: each phase is logged when the compiler records its time."""

    def __setitem__(self, phase: str, seconds: float) -> None:
        logger.info("%-20s %9.1f ms", phase, 1000 * (seconds - self.get(phase, 0.0)))
        super().__setitem__(phase, seconds)


class _Progress(list):
    """The exports of a compiled engine; iterating them (as the writer does, one file after another)
    advances a progress bar by each file's weight bytes."""

    def __init__(self, exports: list[tuple[str, Any]], bar: Any) -> None:
        super().__init__(exports)
        self.bar = bar

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for relpath, exported in super().__iter__():
            started = time.perf_counter()
            yield relpath, exported
            size = sum(int(array.nbytes) for array in exported.external.values())
            logger.debug("wrote %s (%s of weights) in %.1f ms", relpath, format_bytes(size), 1000 * (time.perf_counter() - started))
            self.bar.update(size)


def _progress_bar(total: int) -> Any:
    """A tqdm bar on stderr when it is a terminal and the log level shows info; else a no-op bar."""
    from tqdm import tqdm

    quiet = logging.getLogger("graphbuild").getEffectiveLevel() > logging.WARNING
    return tqdm(total=total, desc="writing weights", unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr, disable=quiet or not sys.stderr.isatty())


def run_build(args: argparse.Namespace) -> int:
    import graphbuild as gb
    from graphbuild.build import CompiledEngine, compile_engine, write_compiled

    settings = parse_settings(args.settings)
    if args.tp_size is not None:
        if args.tp_size < 1:
            raise CLIError(f"--tp-size must be at least 1, got {args.tp_size}")
        if "tp_size" in settings:
            raise CLIError("tp_size is given both with --tp-size and --set; use one")

    start = time.perf_counter()
    with loaded_function(args.function) as func:
        kwargs: dict[str, Any] = convert_settings(func, settings)
        if args.tp_size is not None:
            kwargs["tp_size"] = args.tp_size
        where = f"{args.function} ({describe_signature(func)})"
        logger.info("calling %s with %s", args.function, kwargs or "no arguments")
        networks = as_networks(call_with_kwargs(func, kwargs), where)
        defined = time.perf_counter()
        logger.info("%-20s %9.1f ms", "network", 1000 * (defined - start))
        options: dict[str, Any] = {"use_plugin": not args.no_plugin, "verify_each_pass": args.verify_each_pass}
        if args.opset is not None:
            options["opset"] = args.opset
        timings = PhaseLog()
        compiled = compile_engine(networks, timings=timings, **options)
        total = sum(int(a.nbytes) for _, exported in compiled.exports for a in exported.external.values())
        written = time.perf_counter()
        with _progress_bar(total) as bar:
            path = write_compiled(CompiledEngine(compiled.manifest, _Progress(compiled.exports, bar)), args.output, overwrite=args.overwrite)
        timings["write"] = time.perf_counter() - written
        loading = time.perf_counter()
        engine = gb.Engine.load(path, verify=False)
        timings["load"] = time.perf_counter() - loading
    done = time.perf_counter()
    if args.json:
        print(json.dumps(summary_json(engine.manifest, str(engine.path), defined - start, done - defined, dict(timings)), indent=2))
    else:
        print(summarize(engine.manifest, str(engine.path), defined - start, done - defined))
    return 0


def _counts(manifest: Manifest) -> tuple[int, int, int]:
    first = manifest.ranks[0]
    return len(first.segments), len(first.collectives), sum(entry.size for entry in manifest.files.values())


def summarize(manifest: Manifest, path: str, define_s: float, build_s: float) -> str:
    """The lines ``graphbuild build`` prints about a new engine."""
    segments, collectives, total = _counts(manifest)
    custom = ", ".join(f"{op.domain}::{op.op_type}" for op in manifest.custom_ops) or "none (standard ONNX only)"
    rows = [
        ("engine", printable(path)),
        ("tp_size", f"{manifest.tp_size} (ranks {list(manifest.tp_group)})"),
        ("per rank", f"{segments} segment(s), {collectives} collective(s)"),
        ("custom ops", printable(custom)),
        ("files", f"{len(manifest.files)}, {format_bytes(total)}"),
        ("time", f"network {define_s * 1000:.0f} ms, build {build_s * 1000:.0f} ms"),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join([f"built engine '{printable(manifest.name)}'"] + [f"  {key.ljust(width)}  {value}" for key, value in rows])


def summary_json(manifest: Manifest, path: str, define_s: float, build_s: float, phases: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """What ``graphbuild build --json`` prints: the engine, its shape, and the seconds each phase took."""
    segments, collectives, total = _counts(manifest)
    return {
        "engine": str(Path(path)),
        "name": manifest.name,
        "tp_size": manifest.tp_size,
        "tp_group": list(manifest.tp_group),
        "segments_per_rank": segments,
        "collectives_per_rank": collectives,
        "custom_ops": [f"{op.domain}::{op.op_type}" for op in manifest.custom_ops],
        "opset": manifest.opset,
        "files": len(manifest.files),
        "bytes": total,
        "seconds": {"network": define_s, "build": build_s, **(phases or {})},
    }
