"""``graphbuild inspect``: describe an engine directory and verify its files.

Prints the engine's name, format, tp_size, inputs and outputs, a per-rank table (segments,
collectives, ONNX nodes, weight bytes, graphbuild ops by count), each rank's ordered steps (ranks
whose steps are the same up to their rank index are listed once), the custom ops it needs, and
every file with its checksum status. Exits non-zero, naming the bad files, when any file is
missing, truncated or tampered with, or naming the field when the manifest is malformed or
disagrees with its ONNX files. Nothing is loaded into ONNX Runtime. Given one segment
``.onnx``, it describes that model instead. ``--viz FILE`` also draws it (see ``graphbuild viz``).
Names from the manifest are printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from graphbuild.tools.common import CLIError, format_bytes, format_counts, format_shape, format_table, printable

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest, RankPlan, TensorSpec


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        parents=parents,
        help="describe an engine and verify its files' checksums",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("engine", metavar="ENGINE", help="engine directory written by 'graphbuild build', or one segment .onnx of it")
    parser.add_argument("--json", action="store_true", help="print the manifest and the file check as JSON instead")
    parser.add_argument("--viz", metavar="FILE", help="also write a picture of it (.html, .svg, .dot or .json; see 'graphbuild viz')")
    parser.set_defaults(handler=run_inspect)


def _specs_table(specs: Sequence[TensorSpec]) -> str:
    return format_table(["name", "dtype", "shape"], [(s.name, s.dtype.name, format_shape(list(s.shape))) for s in specs])


def _rank_rows(manifest: Manifest) -> list[tuple[Any, ...]]:
    rows = []
    for rank in manifest.ranks:
        collectives = Counter(step.op for step in rank.collectives)
        rows.append(
            (
                rank.rank,
                len(rank.segments),
                format_counts(collectives),
                sum(step.onnx_nodes for step in rank.segments),
                format_bytes(rank.weight_bytes),
                format_counts(rank.ops),
            )
        )
    return rows


def _step_lines(rank: RankPlan) -> list[str]:
    rows = []
    for position, step in enumerate(rank.steps):
        if step.kind == "segment":
            detail = f"{step.file}  {step.onnx_nodes} ONNX node(s)  ops {format_counts(step.ops)}"
            flow = f"{', '.join(step.inputs) or '-'} -> {', '.join(step.outputs) or '-'}"
            rows.append((position, "segment", detail, flow))
        else:
            detail = f"'{step.name}' instance {step.instance_id} group {list(step.group)}"
            rows.append((position, step.op, detail, f"{step.input} -> {step.output}"))
    return format_table(["step", "kind", "what", "values"], rows, indent="    ").splitlines()


def describe(manifest: Manifest, path: str, checks: list[tuple[str, str]]) -> str:
    """The text ``graphbuild inspect`` prints."""
    custom = printable(", ".join(f"{op.domain}::{op.op_type} (since version {op.since_version})" for op in manifest.custom_ops))
    lines = [
        f"engine '{printable(manifest.name)}' at {printable(path)}",
        f"  format      {printable(manifest.format)} v{manifest.format_version} (graphbuild {printable(manifest.graphbuild_version)}), opset {manifest.opset if manifest.opset is not None else '?'}",
        f"  tp_size     {manifest.tp_size}, tp_group {list(manifest.tp_group)}",
        f"  custom ops  {custom or 'none (standard ONNX only)'}",
        "",
        "inputs",
        _specs_table(manifest.inputs),
        "outputs",
        _specs_table(manifest.outputs),
        "",
        "ranks",
        format_table(["rank", "segments", "collectives", "onnx nodes", "weight bytes", "nodes by op"], _rank_rows(manifest)),
    ]
    for ranks, rank in _same_steps(manifest.ranks):
        title = f"rank {ranks[0]} steps" if len(ranks) == 1 else f"ranks {_rank_list(ranks)} steps (the same up to the rank index; rank {ranks[0]}'s shown)"
        lines += ["", printable(title)] + _step_lines(rank)
    files = manifest.files
    total = sum(entry.size for entry in files.values())
    status = dict(checks)
    rows = []
    for relpath, entry in files.items():
        state = status.get(relpath, "not checked")
        rows.append((relpath, format_bytes(entry.size), entry.sha256[:16], state if state == "ok" else state.upper()))
    bad = sum(1 for _, state in checks if state != "ok")
    verdict = f"all {len(checks)} files OK" if not bad else f"{bad} of {len(checks)} files FAILED"
    lines += ["", f"files ({len(files)}, {format_bytes(total)})", format_table(["file", "size", "sha256", "check"], rows), f"checksums: {verdict}"]
    return "\n".join(lines)


def _same_steps(ranks: Sequence[RankPlan]) -> list[tuple[list[Any], RankPlan]]:
    """Ranks grouped by their steps with the rank index taken out (file paths, collective ``rank``)."""
    groups: dict[str, tuple[list[Any], RankPlan]] = {}
    for rank in ranks:
        index = rank.rank
        steps = []
        for step in rank.to_json()["steps"]:
            step = dict(step, attrs={k: v for k, v in (step.get("attrs") or {}).items() if k not in ("rank", "tp_position")})
            if "file" in step:
                step["file"] = str(step["file"]).replace(f"rank{index}/", "rank{R}/", 1)
            steps.append(step)
        groups.setdefault(json.dumps(steps, sort_keys=True, default=str), ([], rank))[0].append(index)
    return list(groups.values())


def _rank_list(ranks: list[Any]) -> str:
    """``0-3`` for a run of three or more consecutive ranks, else ``0, 1, 3``."""
    if len(ranks) > 2 and all(isinstance(r, int) for r in ranks) and ranks == list(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(str(r) for r in ranks)


def describe_segment(path: str) -> str:
    """The text ``graphbuild inspect`` prints for one segment ``.onnx`` (weights are not loaded)."""
    from pathlib import Path

    from graphbuild.viz.onnx_source import initializer_bytes, load_model, tensor_types

    model = load_model(Path(path))
    graph = model.graph
    types = tensor_types(model)
    inits = {t.name for t in graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})

    def specs(values: Any) -> str:
        rows = [(v.name, types.get(v.name, ("?", []))[0], format_shape(types.get(v.name, ("?", ["?"]))[1])) for v in values if v.name not in inits]
        return format_table(["name", "dtype", "shape"], rows)

    weights = sum(initializer_bytes(t) for t in graph.initializer)
    lines = [
        f"segment '{graph.name}' at {path}",
        f"  opsets      {opsets}, ir_version {model.ir_version}, producer {model.producer_name} {model.producer_version}".rstrip(),
        f"  custom ops  {', '.join(custom) or 'none (standard ONNX only)'}",
        f"  nodes       {len(graph.node)}: {format_counts(Counter(n.op_type for n in graph.node))}",
        f"  weights     {len(graph.initializer)} initializer(s), {format_bytes(weights)}",
        "",
        "inputs",
        specs(graph.input),
        "outputs",
        specs(graph.output),
    ]
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from graphbuild.engine import PinnedEngineDir, read_manifest, verify_files
    from graphbuild.engine.consistency import check_segments
    from graphbuild.errors import EngineError

    if args.engine.endswith(".onnx"):
        if args.json:
            raise CLIError("--json describes an engine's manifest; a segment .onnx has none (drop --json, or give the engine directory)")
        print(describe_segment(args.engine))
        _write_picture(args)
        return 0
    with PinnedEngineDir(args.engine) as pin:  # one engine, even if a build replaces it meanwhile
        manifest = read_manifest(pin)
        checks = verify_files(pin, manifest)
        mismatch = None
        if all(state == "ok" for _, state in checks):
            try:
                check_segments(pin, manifest)
            except EngineError as exc:
                mismatch = str(exc)
    if args.json:
        report = {"path": args.engine, "manifest": manifest.to_json(), "files": {rel: state for rel, state in checks}}
        print(json.dumps(report, indent=2))
    else:
        print(describe(manifest, args.engine, checks))
    _write_picture(args)
    bad = [f"{rel} ({state})" for rel, state in checks if state != "ok"]
    if bad:
        raise CLIError(f"engine '{printable(args.engine)}' failed verification: {printable(', '.join(bad))}; rebuild it")
    if mismatch:
        raise CLIError(mismatch)
    return 0


def _write_picture(args: argparse.Namespace) -> None:
    if args.viz:
        from graphbuild.viz import visualize

        path = visualize(args.engine, args.viz)
        print(f"picture: {path}", file=sys.stderr if args.json else sys.stdout)
