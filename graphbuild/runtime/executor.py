"""The local executor: runs every rank of an engine in one process.

Ranks advance in lockstep through their steps. A segment step runs that rank's ONNX Runtime
session; a collective step gathers each rank's input and performs the collective in memory with
the op's registry ``combine`` (the same semantics the reference interpreter uses). Sessions,
output-name lists and collective descriptions are prepared once per engine, not per call.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from graphbuild.errors import EngineError, ExecutionError, GraphBuildError, OutOfRangeIdError
from graphbuild.ops.embedding import out_of_range_message
from graphbuild.ops.registry import get_op
from graphbuild.runtime.ortvalues import from_ortvalue, to_ortvalue
from graphbuild.runtime.session import create_session

_PLUGIN_RANGE_ERROR = re.compile(r"TPEmbedding '(?P<node>[^']*)': id (?P<id>-?\d+) at flat position (?P<pos>\d+) is outside the vocabulary \[0, (?P<vocab>\d+)\)")


@dataclasses.dataclass
class CollectiveSpec:
    """A collective as the manifest records it; quacks like a node for ``OpDef.combine``."""

    op: str
    name: str
    attrs: dict[str, Any]
    input: str
    output: str
    workspace: Optional[str]

    def describe(self) -> str:
        return f"{self.op} '{self.name}'"


@dataclasses.dataclass
class SegmentRun:
    """One segment of one rank, ready to run."""

    rank: int
    file: str
    session: Any
    inputs: list[str]
    outputs: list[str]
    checks: list[dict[str, Any]]
    fetch: list[str] = dataclasses.field(init=False)  # outputs, then the check tensors

    def __post_init__(self) -> None:
        self.fetch = self.outputs + [check["tensor"] for check in self.checks]

    def run(self, env: dict[str, np.ndarray]) -> None:
        feeds = {name: to_ortvalue(env[name]) for name in self.inputs}
        try:
            values = self.session.run_with_ort_values(self.fetch, feeds)
        except Exception as exc:  # onnxruntime's exception classes derive from Exception only
            raise _translate_ort_error(exc, self.rank, self.file) from None
        results = [from_ortvalue(v) for v in values]
        for check, result in zip(self.checks, results[len(self.outputs) :]):
            position, bad_id, size = (int(x) for x in result)
            if position < size:
                raise OutOfRangeIdError(out_of_range_message(check["node"], bad_id, position, check["vocab_size"]))
        env.update(zip(self.outputs, results))


def _translate_ort_error(exc: Exception, rank: int, file: str) -> GraphBuildError:
    text = str(exc)
    found = _PLUGIN_RANGE_ERROR.search(text)
    if found:
        return OutOfRangeIdError(out_of_range_message(found["node"], int(found["id"]), int(found["pos"]), int(found["vocab"])))
    detail = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return ExecutionError(f"rank {rank}, {file}: ONNX Runtime failed: {detail}")


class LocalExecutor:
    """Runs all ranks of an engine in this process, collectives in memory.

    Args:
        root: the engine directory.
        manifest: its validated manifest.
        providers: ONNX Runtime execution providers (default: CUDA when present, else CPU).
        intra_op_threads: threads per session (default: ONNX Runtime's choice).
    """

    def __init__(self, root: Path, manifest: Mapping[str, Any], *, providers: Optional[Sequence[str]] = None, intra_op_threads: Optional[int] = None) -> None:
        ranks = manifest["ranks"]
        if len(ranks) != manifest["tp_size"]:
            raise EngineError(
                f"{root}: the local executor needs all {manifest['tp_size']} ranks but the engine holds {len(ranks)}"
            )
        needs_plugin = bool(manifest["custom_ops"])
        self._steps: list[list[Any]] = []
        for rank in ranks:
            steps: list[Any] = []
            for step in rank["steps"]:
                if step["kind"] == "segment":
                    session = create_session(root / step["file"], needs_plugin=needs_plugin, providers=providers, intra_op_threads=intra_op_threads)
                    steps.append(SegmentRun(rank["rank"], step["file"], session, list(step["inputs"]), list(step["outputs"]), list(step.get("checks", []))))
                else:
                    get_op(step["op"])  # unknown collectives fail at load, not mid-run
                    steps.append(CollectiveSpec(step["op"], step["name"], dict(step.get("attrs", {})), step["input"], step["output"], step.get("workspace")))
            self._steps.append(steps)
        self._check_schedule(root)
        self._outputs = [dict(rank["outputs"]) for rank in ranks]

    def _check_schedule(self, root: Path) -> None:
        def signature(steps: list[Any]) -> list[Any]:
            return [(s.op, s.attrs.get("instance_id")) if isinstance(s, CollectiveSpec) else "segment" for s in steps]

        first = signature(self._steps[0])
        for rank, steps in enumerate(self._steps[1:], start=1):
            if signature(steps) != first:
                raise EngineError(f"{root}: rank {rank}'s schedule {signature(steps)} differs from rank 0's {first}; rebuild the engine")

    def run_all_ranks(self, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Runs every rank; returns each rank's outputs (feeds must already be validated)."""
        envs = [dict(feeds) for _ in self._steps]
        for position in range(len(self._steps[0])):
            step0 = self._steps[0][position]
            if isinstance(step0, CollectiveSpec):
                self._collective([steps[position] for steps in self._steps], envs)
            else:
                for steps, env in zip(self._steps, envs):
                    steps[position].run(env)
        return [{name: env[value] for name, value in outputs.items()} for outputs, env in zip(self._outputs, envs)]

    @staticmethod
    def _collective(specs: list[CollectiveSpec], envs: list[dict[str, np.ndarray]]) -> None:
        spec = specs[0]
        arrays = [env[s.input] for s, env in zip(specs, envs)]
        workspace = envs[0].get(spec.workspace) if spec.workspace else None
        result = get_op(spec.op).combine(spec, arrays, workspace)
        for s, env in zip(specs, envs):
            env[s.output] = result
