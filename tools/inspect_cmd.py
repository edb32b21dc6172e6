"""``graphbuild inspect``: describe an engine directory and verify its files.

Prints the engine's name, format, tp_size, inputs and outputs, a per-rank table (segments,
collectives, ONNX nodes, weight bytes, graphbuild ops by count), each rank's ordered steps, the
custom ops it needs, and every file with its checksum status. Exits non-zero, naming the bad files,
when any file is missing, truncated or tampered with, or naming the field when the manifest is
malformed or disagrees with its ONNX files. Nothing is loaded into ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from graphbuild.tools.common import CLIError, format_bytes, format_counts, format_shape, format_table

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest, RankPlan, TensorSpec


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        parents=parents,
        help="describe an engine and verify its files' checksums",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("engine", metavar="ENGINE", help="engine directory written by 'graphbuild build'")
    parser.add_argument("--json", action="store_true", help="print the manifest and the file check as JSON instead")
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
    custom = ", ".join(f"{op.domain}::{op.op_type} (since version {op.since_version})" for op in manifest.custom_ops)
    lines = [
        f"engine '{manifest.name}' at {path}",
        f"  format      {manifest.format} v{manifest.format_version} (graphbuild {manifest.graphbuild_version}), opset {manifest.opset if manifest.opset is not None else '?'}",
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
    for rank in manifest.ranks:
        lines += ["", f"rank {rank.rank} steps"] + _step_lines(rank)
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


def run_inspect(args: argparse.Namespace) -> int:
    from graphbuild.engine import PinnedEngineDir, read_manifest, verify_files
    from graphbuild.engine.consistency import check_segments
    from graphbuild.errors import EngineError

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
    bad = [f"{rel} ({state})" for rel, state in checks if state != "ok"]
    if bad:
        raise CLIError(f"engine '{args.engine}' failed verification: {', '.join(bad)}; rebuild it")
    if mismatch:
        raise CLIError(mismatch)
    return 0
