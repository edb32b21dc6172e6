"""Collectives across MPI processes: one rank's part of ``allreduce`` and ``allgather``.

The semantics are the schedule's (``graphbuild.runtime.schedule``), so results are bitwise what
the local executor computes:

- ``allreduce`` sums in group order, ``((x0 + x1) + x2) + ...``. With two ranks and an MPI-native
  type (float32, float64, int32, int64) this is MPI's own ``Allreduce``: ``x0 + x1`` and
  ``x1 + x0`` are the same IEEE number. Otherwise (three or more ranks, float16, bfloat16, bool,
  other integers) every member gathers all partial sums (``Allgather``) and adds them in group
  order itself, as the local executor does; MPI's reduction order for more ranks is unspecified.
- ``allgather`` concatenates along ``axis``. When each rank's block is contiguous in the result
  (every dim before ``axis`` is 1) MPI writes straight into the output (``Allgather``, or
  ``Allgatherv`` for uneven ``sizes``); otherwise it gathers into a scratch buffer allocated once
  and ``numpy.concatenate`` places the blocks.

Collectives are matched by ``instance_id``: when a plan is made (the first call with some input
shapes) the members exchange a header (instance id, op, dtype, shape, whether they failed) before
any payload. A mismatch raises the same ``MPIError`` on every member, naming the collective and
the ranks; a member that failed earlier makes the others skip the payload instead of waiting for
it. Later calls reuse the plan's buffers, whose shapes were agreed then, and send payload only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import ExecutionError
from graphbuild.runtime.mpi_env import MPIError, PeerFailed, Watchdog
from graphbuild.runtime.schedule import CollectiveStep, result_shape

#: Types MPI's ``SUM`` adds exactly like numpy (two ranks: ``a + b == b + a`` bit for bit).
NATIVE_SUM = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64))


@dataclasses.dataclass(frozen=True)
class Header:
    """What a member says about its part of a collective before sending data."""

    op: str
    instance_id: Any
    dtype: str
    shape: tuple[int, ...]
    failed: bool

    def describe(self) -> str:
        return f"{self.op} instance {self.instance_id} with {self.dtype}{list(self.shape)}"


def exchange_headers(comm: Any, step: CollectiveStep, members: Sequence[int], local: Optional[tuple[str, tuple[int, ...]]], watchdog: Watchdog) -> list[tuple[int, ...]]:
    """Every member's input shape (group order), after checking that the members agree.

    Args:
        comm: the group's communicator (member i is engine rank ``members[i]``).
        step: this rank's collective.
        members: engine ranks in group order.
        local: ``(dtype name, shape)`` of this rank's input, or None when this rank failed before.
        watchdog: bounds the wait.

    Raises:
        PeerFailed: some member failed before reaching the collective (this one included).
        MPIError: members are at different collectives, or contribute different dtypes; the
            same message on every member.
    """
    mine = Header(step.op, step.instance_id, local[0] if local else "", tuple(local[1]) if local else (), local is None)
    with watchdog.waiting(f"{step.describe()} (instance {step.instance_id})"):
        headers: list[Header] = comm.allgather(mine)
    if any(h.failed for h in headers):
        raise PeerFailed()
    what = f"{step.describe()} (instance_id {step.instance_id}, group {list(members)})"
    first = headers[0]
    for position, header in enumerate(headers[1:], start=1):
        if (header.op, header.instance_id) != (first.op, first.instance_id):
            raise MPIError(
                f"{what}: ranks reached different collectives: rank {members[0]} is at {first.op} instance {first.instance_id}, "
                f"rank {members[position]} at {header.op} instance {header.instance_id}; the ranks run different engines - load the same engine on every rank"
            )
        if header.dtype != first.dtype:
            raise MPIError(f"{what}: rank {members[0]} contributes {first.dtype}, rank {members[position]} {header.dtype}; the dtypes must match")
    return [h.shape for h in headers]


def agreed_shape(step: CollectiveStep, members: Sequence[int], shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The result's shape from the members' shapes; a mismatch names the ranks (same on every member)."""
    try:
        return result_shape(step, shapes)
    except ExecutionError as exc:
        listing = ", ".join(f"rank {rank} {list(shape)}" for rank, shape in zip(members, shapes))
        raise MPIError(f"{exc} (group {list(members)}: {listing})") from None


def _bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def ordered_sum(parts: np.ndarray, out: np.ndarray) -> None:
    """``out = ((parts[0] + parts[1]) + parts[2]) + ...`` (logical or for bool), rounding like numpy."""
    combine = np.logical_or if parts.dtype == np.bool_ else np.add
    if len(parts) == 1:
        np.copyto(out, parts[0])
        return
    combine(parts[0], parts[1], out=out)
    for part in parts[2:]:
        combine(out, part, out=out)


class HostAllreduce:
    """One rank's ``allreduce`` on host arrays over the group communicator ``comm``.

    Args:
        comm: the group's communicator (rank order = group order).
        mpi: the ``mpi4py.MPI`` module.
        source: this rank's input (C-contiguous).
        target: the result, same shape and dtype (C-contiguous, not ``source``).
    """

    def __init__(self, comm: Any, mpi: Any, source: np.ndarray, target: np.ndarray) -> None:
        self.comm, self.mpi, self.source, self.target = comm, mpi, source, target
        size = comm.Get_size()
        self.native = size == 2 and source.dtype in NATIVE_SUM
        self.single = size == 1
        self.scratch = None if size == 1 or self.native else np.empty((size,) + source.shape, source.dtype)
        # mpi4py buffer specifications, made once: a call only hands them over
        self.send = [_bytes(source), mpi.BYTE]
        self.receive = [_bytes(self.scratch), mpi.BYTE] if self.scratch is not None else None

    def run(self) -> None:
        if self.single:
            np.copyto(self.target, self.source)
        elif self.native:
            self.comm.Allreduce(self.source, self.target, op=self.mpi.SUM)
        else:
            self.comm.Allgather(self.send, self.receive)
            ordered_sum(self.scratch, self.target)


class HostAllgather:
    """One rank's ``allgather`` on host arrays over the group communicator ``comm``.

    Args:
        comm: the group's communicator (rank order = group order).
        mpi: the ``mpi4py.MPI`` module.
        source: this rank's input (C-contiguous).
        target: the result (C-contiguous).
        shapes: every member's input shape, in group order.
        axis: the gathered axis (non-negative).
    """

    def __init__(self, comm: Any, mpi: Any, source: np.ndarray, target: np.ndarray, shapes: Sequence[tuple[int, ...]], axis: int) -> None:
        self.comm, self.mpi, self.source, self.target, self.axis = comm, mpi, source, target, axis
        itemsize = source.dtype.itemsize
        self.counts = [int(np.prod(shape, dtype=np.int64)) * itemsize for shape in shapes]
        self.displacements = [int(d) for d in np.cumsum([0] + self.counts[:-1])]
        self.even = len(set(self.counts)) == 1
        self.direct = int(np.prod(target.shape[:axis], dtype=np.int64)) == 1
        if self.direct:
            self.scratch = None
            self.blocks: list[np.ndarray] = []
        else:
            self.scratch = np.empty(sum(self.counts), np.uint8)
            self.blocks = [self.scratch[d : d + c].view(source.dtype).reshape(shape) for d, c, shape in zip(self.displacements, self.counts, shapes)]
        receive = _bytes(target) if self.direct else self.scratch
        # mpi4py buffer specifications, made once: a call only hands them over
        self.send = [_bytes(source), mpi.BYTE]
        self.receive = [receive, mpi.BYTE] if self.even else [receive, self.counts, self.displacements, mpi.BYTE]

    def run(self) -> None:
        if self.even:
            self.comm.Allgather(self.send, self.receive)
        else:
            self.comm.Allgatherv(self.send, self.receive)
        if not self.direct:
            np.concatenate(self.blocks, axis=self.axis, out=self.target)


def host_collective(comm: Any, mpi: Any, step: CollectiveStep, source: np.ndarray, target: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> Any:
    """The ``HostAllreduce`` or ``HostAllgather`` for ``step``."""
    if step.op == "allreduce":
        return HostAllreduce(comm, mpi, source, target)
    if step.op == "allgather":
        return HostAllgather(comm, mpi, source, target, shapes, step.axis % len(shapes[0]))
    raise ExecutionError(f"{step.describe()}: the MPI executor does not implement collective '{step.op}'")


def dtype_name(array_or_dtype: Any) -> str:
    """The graphbuild dtype name of a numpy array or dtype (headers carry names, not numpy objects)."""
    dtype = array_or_dtype.dtype if hasattr(array_or_dtype, "dtype") else array_or_dtype
    return dtypes.as_dtype(dtype).name
