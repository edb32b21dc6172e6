"""The per-rank schedule of an engine: which steps each rank runs, in order, with their tensors.

The manifest records, per rank, a list of steps: *segments* (an ONNX file run by ONNX Runtime,
with the tensor names it reads and writes and the range checks it exposes) and *collectives*
(``allreduce`` or ``allgather`` over ``group``, matched across ranks by ``instance_id``). This
module parses them once into plain dataclasses that every executor shares: the local executor runs
all ranks of a ``Schedule`` in one process, the MPI executor runs one ``RankSchedule`` per process.

The collective semantics the runtime implements (whatever the executor) are fixed here:

- ``allreduce``: elementwise sum over the ranks of ``group``, accumulated in group order,
  ``((x0 + x1) + x2) + ...``; float16 and bfloat16 are added in float32 and rounded back after
  every addition, bool is a logical or;
- ``allgather``: concatenation of the ranks' tensors in group order along ``axis`` (negative
  counts from the end); ``sizes``, when given, is each rank's extent along that axis.

``combine_host`` computes both on host arrays with numpy (the reference semantics the ONNX models
of ``graphbuild.runtime.collectives`` reproduce bit for bit).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from graphbuild.errors import EngineError, ExecutionError

if TYPE_CHECKING:
    from graphbuild.engine.manifest import Manifest, RangeCheck, RankPlan

#: Collectives the runtime implements.
COLLECTIVES = ("allreduce", "allgather")


@dataclasses.dataclass(frozen=True)
class SegmentStep:
    """One ONNX file of one rank: the tensors it reads and writes, and its range checks (the
    manifest's own ``RangeCheck`` entries)."""

    rank: int
    index: int
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    checks: tuple[RangeCheck, ...] = ()

    def describe(self) -> str:
        return f"rank {self.rank}, {self.file}"


@dataclasses.dataclass(frozen=True)
class CollectiveStep:
    """One rank's part in a collective: it contributes ``input`` and receives ``output``.

    ``workspace`` names an optional feed that receives a copy of the result; ``axis`` and ``sizes``
    apply to ``allgather`` only.
    """

    op: str
    name: str
    instance_id: Any
    group: tuple[int, ...]
    input: str
    output: str
    workspace: Optional[str] = None
    axis: int = -1
    sizes: Optional[tuple[int, ...]] = None

    def describe(self) -> str:
        return f"{self.op} '{self.name}'"

    @property
    def signature(self) -> tuple[Any, ...]:
        """What every rank of the group must agree on for the collective to match."""
        return (self.op, self.instance_id, self.group, self.axis, self.sizes)


Step = Union[SegmentStep, CollectiveStep]


@dataclasses.dataclass(frozen=True)
class RankSchedule:
    """The steps one rank runs, in order, and which tensor each of its outputs is."""

    rank: int
    steps: tuple[Step, ...]
    outputs: tuple[tuple[str, str], ...]  # (output name, tensor name), in the manifest's order

    @property
    def segments(self) -> tuple[SegmentStep, ...]:
        return tuple(step for step in self.steps if isinstance(step, SegmentStep))

    @property
    def files(self) -> tuple[str, ...]:
        """The segment files this rank opens (their external data sits beside them)."""
        return tuple(step.file for step in self.segments)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Every rank's schedule, checked to agree across ranks.

    Attributes:
        name: the engine's name.
        tp_size: number of ranks.
        needs_plugin: whether segments use graphbuild's custom-op library.
        ranks: one ``RankSchedule`` per rank, in rank order.
    """

    name: str
    tp_size: int
    needs_plugin: bool
    ranks: tuple[RankSchedule, ...]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.ranks[0].outputs) if self.ranks else ()

    @classmethod
    def from_manifest(cls, manifest: "Manifest") -> "Schedule":
        """The schedule of a manifest, which ``Manifest.from_json`` has validated (ranks listed in
        order, every rank running the same segments and collectives).

        Raises:
            EngineError: a collective this runtime does not implement.
        """
        ranks = tuple(_rank_schedule(plan, manifest.name) for plan in manifest.ranks)
        return cls(manifest.name, manifest.tp_size, bool(manifest.custom_ops), ranks)


def _rank_schedule(plan: "RankPlan", engine: str) -> RankSchedule:
    steps: list[Step] = []
    for step in plan.steps:
        if step.kind == "segment":
            steps.append(SegmentStep(plan.rank, step.index, step.file, tuple(step.inputs), tuple(step.outputs), tuple(step.checks)))
            continue
        if step.op not in COLLECTIVES:
            raise EngineError(f"engine '{engine}': rank {plan.rank} has collective '{step.op}', which this runtime does not implement (it implements {list(COLLECTIVES)})")
        sizes = step.attrs.get("sizes")
        steps.append(
            CollectiveStep(
                op=step.op,
                name=step.name,
                instance_id=step.instance_id,
                group=tuple(step.group),
                input=step.input,
                output=step.output,
                workspace=step.workspace,
                axis=step.axis,
                sizes=tuple(int(s) for s in sizes) if sizes is not None else None,
            )
        )
    return RankSchedule(plan.rank, tuple(steps), tuple(plan.outputs.items()))


def gathered_shape(what: str, shapes: Sequence[tuple[int, ...]], axis: int, sizes: Optional[Sequence[int]]) -> tuple[int, ...]:
    """The allgather result's shape, after checking the ranks' shapes fit together.

    Raises:
        ExecutionError: naming the collective and what each rank contributed.
    """
    if sizes is not None and [s[axis] for s in shapes] != list(sizes):
        raise ExecutionError(f"{what}: ranks contributed sizes {[s[axis] for s in shapes]} along axis {axis}, expected {list(sizes)}")
    others = {s[:axis] + s[axis + 1 :] for s in shapes}
    if len(others) != 1:
        raise ExecutionError(f"{what}: ranks contributed incompatible shapes {list(shapes)} (they may differ only along axis {axis})")
    first = shapes[0]
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1 :]


def result_shape(step: CollectiveStep, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The collective's result shape from each rank's input shape (in group order).

    Raises:
        ExecutionError: shapes that do not fit (naming the collective).
    """
    what = step.describe()
    if step.op == "allreduce":
        if len(set(shapes)) != 1:
            raise ExecutionError(f"{what}: ranks contributed different shapes {sorted(set(shapes))}")
        return tuple(shapes[0])
    if not shapes[0]:
        raise ExecutionError(f"{what}: cannot gather 0-d tensors")
    return gathered_shape(what, shapes, step.axis % len(shapes[0]), step.sizes)


def combine_host(step: CollectiveStep, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The collective's result on host arrays (each rank's input, in group order), with numpy.

    Raises:
        ExecutionError: shapes that do not fit (naming the collective).
    """
    shape = result_shape(step, [a.shape for a in arrays])
    if step.op == "allgather":
        return np.concatenate(arrays, axis=step.axis % arrays[0].ndim)
    result = np.array(arrays[0], copy=True).reshape(shape)
    for array in arrays[1:]:
        if result.dtype == np.bool_:
            np.logical_or(result, array, out=result)
        else:
            np.add(result, array, out=result)  # float16/bfloat16: computed in float32, rounded back
    return result
