"""The per-rank schedule of an engine: which steps each rank runs, in order, with their tensors.

The typed manifest (``graphbuild.engine.manifest``) records, per rank, a ``RankPlan``: its steps,
*segments* (``SegmentStep``: an ONNX file run by ONNX Runtime, the tensor names it reads and writes
and the range checks it exposes) and *collectives* (``CollectiveStep``: ``allreduce`` or
``allgather`` over ``group``, matched across ranks by ``instance_id``), and which tensor holds
each output. The manifest validates all of it when it is read (ranks in order, references that
resolve, collectives that agree across ranks). A ``Schedule`` is those plans as every executor
uses them, made once per engine: the local executor runs all ranks of it in one process, the MPI
executor one rank per process.

The collective semantics the runtime implements (whatever the executor) are fixed here:

- ``allreduce``: elementwise sum over the ranks of ``group``, accumulated in group order,
  ``((x0 + x1) + x2) + ...``; float16 and bfloat16 are added in float32 and rounded back after
  every addition, bool is a logical or;
- ``allgather``: concatenation of the ranks' tensors in group order along ``axis`` (negative
  counts from the end); ``sizes``, when given, is each rank's extent along that axis.

``combine_host`` computes both on host arrays with numpy (the reference semantics that the ONNX
models of ``graphbuild.runtime.collectives`` reproduce bit for bit).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from graphbuild.engine.manifest import COLLECTIVE_OPS, CollectiveStep, Manifest, RangeCheck, RankPlan, SegmentStep, Step
from graphbuild.errors import ExecutionError

__all__ = [
    "COLLECTIVE_OPS",
    "CollectiveStep",
    "RangeCheck",
    "RankPlan",
    "Schedule",
    "SegmentStep",
    "Step",
    "combine_host",
    "gather_sizes",
    "gathered_shape",
    "result_shape",
]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Every rank's steps, as the executors run them.

    Attributes:
        name: the engine's name.
        tp_size: number of ranks.
        tp_group: the ranks' numbers in the world.
        needs_plugin: whether segments use graphbuild's custom-op library.
        ranks: one ``RankPlan`` per rank, in rank order (``ranks[r].rank == r``).
    """

    name: str
    tp_size: int
    tp_group: tuple[int, ...]
    needs_plugin: bool
    ranks: tuple[RankPlan, ...]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "Schedule":
        """The schedule of a (validated) typed manifest."""
        return cls(manifest.name, manifest.tp_size, tuple(manifest.tp_group), bool(manifest.custom_ops), tuple(manifest.ranks))

    def files(self, rank: int) -> tuple[str, ...]:
        """The segment files rank ``rank`` opens (their external data sits beside them)."""
        return tuple(step.file for step in self.ranks[rank].segments)


def gather_sizes(step: CollectiveStep) -> Optional[tuple[int, ...]]:
    """Each rank's extent along the gathered axis of an ``allgather``, or None when all are equal."""
    sizes = step.attrs.get("sizes")
    return tuple(int(size) for size in sizes) if sizes is not None else None


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
    return gathered_shape(what, shapes, step.axis % len(shapes[0]), gather_sizes(step))


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
