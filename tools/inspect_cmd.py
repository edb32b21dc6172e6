"""``graphbuild inspect``: describe an engine directory and verify its files.

Prints the engine's name, format, tp_size, inputs and outputs, a per-rank table (segments,
collectives, ONNX nodes, weight bytes, graphbuild ops by count), each rank's ordered steps (ranks
whose steps are the same up to their rank index are listed once), the custom ops it needs, and
every file with its checksum status. Exits non-zero, naming the bad files, when any file is
missing, truncated or tampered with. Nothing is loaded into ONNX Runtime. Given one segment
``.onnx``, it describes that model instead. ``--viz FILE`` also draws it (see ``graphbuild viz``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from graphbuild.tools.common import CLIError, format_bytes, format_counts, format_shape, format_table


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


def _specs_table(specs: list[dict[str, Any]]) -> str:
    return format_table(["name", "dtype", "shape"], [(s["name"], s["dtype"], format_shape(s["shape"])) for s in specs])


def _rank_rows(manifest: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for rank in manifest["ranks"]:
        steps = rank["steps"]
        collectives = Counter(step["op"] for step in steps if step["kind"] == "collective")
        rows.append(
            (
                rank.get("rank", "?"),
                sum(1 for s in steps if s["kind"] == "segment"),
                format_counts(collectives),
                sum(int(s.get("onnx_nodes", 0)) for s in steps if s["kind"] == "segment"),
                format_bytes(int(rank.get("weight_bytes", 0))),
                format_counts(rank.get("ops", {})),
            )
        )
    return rows


def _step_lines(rank: dict[str, Any]) -> list[str]:
    rows = []
    for position, step in enumerate(rank["steps"]):
        if step["kind"] == "segment":
            detail = f"{step['file']}  {step.get('onnx_nodes', '?')} ONNX node(s)  ops {format_counts(step.get('ops', {}))}"
            flow = f"{', '.join(step.get('inputs', [])) or '-'} -> {', '.join(step.get('outputs', [])) or '-'}"
            rows.append((position, "segment", detail, flow))
        else:
            detail = f"'{step.get('name', '?')}' instance {step.get('instance_id', '?')} group {step.get('group', '?')}"
            rows.append((position, step["op"], detail, f"{step.get('input', '?')} -> {step.get('output', '?')}"))
    return format_table(["step", "kind", "what", "values"], rows, indent="    ").splitlines()


def describe(manifest: dict[str, Any], path: str, checks: list[tuple[str, str]]) -> str:
    """The text ``graphbuild inspect`` prints."""
    custom = ", ".join(f"{op['domain']}::{op['op_type']} (since version {op.get('since_version', '?')})" for op in manifest["custom_ops"])
    lines = [
        f"engine '{manifest['name']}' at {path}",
        f"  format      {manifest['format']} v{manifest['format_version']} (graphbuild {manifest.get('graphbuild_version', '?')}), opset {manifest.get('opset', '?')}",
        f"  tp_size     {manifest['tp_size']}, tp_group {manifest.get('tp_group', '?')}",
        f"  custom ops  {custom or 'none (standard ONNX only)'}",
        "",
        "inputs",
        _specs_table(manifest["inputs"]),
        "outputs",
        _specs_table(manifest["outputs"]),
        "",
        "ranks",
        format_table(["rank", "segments", "collectives", "onnx nodes", "weight bytes", "nodes by op"], _rank_rows(manifest)),
    ]
    for ranks, rank in _same_steps(manifest["ranks"]):
        title = f"rank {ranks[0]} steps" if len(ranks) == 1 else f"ranks {_rank_list(ranks)} steps (the same up to the rank index; rank {ranks[0]}'s shown)"
        lines += ["", title] + _step_lines(rank)
    files = manifest["files"]
    total = sum(int(entry.get("bytes", 0)) for entry in files.values())
    status = dict(checks)
    rows = []
    for relpath, entry in files.items():
        state = status.get(relpath, "not checked")
        rows.append((relpath, format_bytes(int(entry.get("bytes", 0))), str(entry.get("sha256", ""))[:16], state if state == "ok" else state.upper()))
    bad = sum(1 for _, state in checks if state != "ok")
    verdict = f"all {len(checks)} files OK" if not bad else f"{bad} of {len(checks)} files FAILED"
    lines += ["", f"files ({len(files)}, {format_bytes(total)})", format_table(["file", "size", "sha256", "check"], rows), f"checksums: {verdict}"]
    return "\n".join(lines)


def _same_steps(ranks: list[dict[str, Any]]) -> list[tuple[list[Any], dict[str, Any]]]:
    """Ranks grouped by their steps with the rank index taken out (file paths, collective ``rank``)."""
    groups: dict[str, tuple[list[Any], dict[str, Any]]] = {}
    for position, rank in enumerate(ranks):
        index = rank.get("rank", position)
        steps = []
        for step in rank["steps"]:
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
    from graphbuild.engine import read_manifest, verify_files

    if args.engine.endswith(".onnx"):
        if args.json:
            raise CLIError("--json describes an engine's manifest; a segment .onnx has none (drop --json, or give the engine directory)")
        print(describe_segment(args.engine))
        _write_picture(args)
        return 0
    manifest = read_manifest(args.engine)
    checks = verify_files(args.engine, manifest)
    if args.json:
        report = {"path": args.engine, "manifest": manifest, "files": {rel: state for rel, state in checks}}
        print(json.dumps(report, indent=2))
    else:
        print(describe(manifest, args.engine, checks))
    _write_picture(args)
    bad = [f"{rel} ({state})" for rel, state in checks if state != "ok"]
    if bad:
        raise CLIError(f"engine '{args.engine}' failed verification: {', '.join(bad)}; rebuild it")
    return 0


def _write_picture(args: argparse.Namespace) -> None:
    if args.viz:
        from graphbuild.viz import visualize

        path = visualize(args.engine, args.viz)
        print(f"picture: {path}", file=sys.stderr if args.json else sys.stdout)
