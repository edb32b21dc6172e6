"""One rank's plan in the MPI executor: its buffers, bindings and collectives for one set of shapes.

A ``RankPlan`` is the MPI counterpart of the local executor's ``Plan`` for the single rank this
process runs. Making it runs the rank once: segments through ``SegmentRun`` (the local executor's,
so errors and range checks read the same), collectives after a header exchange
(``mpi_collectives.exchange_headers``) that agrees on shapes and catches mismatches. Later calls
reuse every buffer and binding and send payload only.

Neither making nor running a plan raises: an error is returned, and the executor agrees on it with
the other ranks. A rank that failed keeps taking part in every later collective (on making, with
a header that says it failed, so its peers skip the payload; on later calls, with the stale
contents of its fixed-size buffers), so no peer is ever left waiting for it.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes
from graphbuild.errors import InputError
from graphbuild.runtime.collectives import HostCopy, SessionCache
from graphbuild.runtime.plan import SegmentRun, workspace_view
from graphbuild.runtime.mpi_collectives import agreed_shape, exchange_headers, host_collective
from graphbuild.runtime.mpi_env import Watchdog, abort
from graphbuild.runtime.nccl_collectives import device_collective
from graphbuild.runtime.ortvalues import allocate, host_view, write_into
from graphbuild.runtime.schedule import CollectiveStep, RankSchedule, SegmentStep


class GroupComm:
    """A collective group as this rank sees it: MPI communicator, members, and NCCL state (CUDA)."""

    def __init__(self, comm: Any, members: Sequence[int], nccl_state: Optional[tuple[Any, Any, Any]] = None) -> None:
        self.comm = comm
        self.members = tuple(members)
        self.nccl_state = nccl_state


class CollectiveRunner:
    """A plan's collective: this rank's input, the result buffer, and the transport that fills it."""

    def __init__(self, step: CollectiveStep, transport: Any, mpi: Any, rank: int) -> None:
        self.step, self.transport, self.mpi, self.rank = step, transport, mpi, rank

    def run(self) -> None:
        try:
            self.transport.run()
        except Exception as exc:  # mpi4py's MPI.Exception, NCCL errors: the ranks can no longer agree
            sys.stderr.write(f"graphbuild: error: rank {self.rank}: {self.step.describe()} failed in MPI/NCCL: {exc}; aborting the job\n")
            abort(self.mpi, 1)


def _reader(device: str, value: ort.OrtValue, sessions: SessionCache) -> Any:
    if device == "cpu":
        view = host_view(value)
        return lambda out: np.copyto(out, view) if out is not None else view.copy()
    copier = HostCopy(value, sessions)
    return lambda out: copier.run(out) if out is None or out.flags.c_contiguous else np.copyto(out, copier.run())


class RankPlan:
    """Buffers, bindings and collectives of one rank for one set of input shapes.

    Use ``RankPlan.make``; it runs the rank once.

    Args:
        rank: this rank's schedule.
        segment_sessions: file -> ONNX Runtime session of this rank's segments.
        groups: ``CollectiveStep.group`` -> this rank's ``GroupComm``.
        device: ``"cpu"`` or ``"cuda"``.
        sessions: helper sessions (host copies, NCCL's sum and concat models).
        mpi: the ``mpi4py.MPI`` module.
        watchdog: bounds every wait.
    """

    def __init__(self, rank: RankSchedule, segment_sessions: Mapping[str, ort.InferenceSession], groups: Mapping[tuple[int, ...], GroupComm], device: str, sessions: SessionCache, mpi: Any, watchdog: Watchdog) -> None:
        self.rank = rank
        self.segment_sessions = segment_sessions
        self.groups = groups
        self.device = device
        self.sessions = sessions
        self.mpi = mpi
        self.watchdog = watchdog
        self.feed_buffers: list[tuple[str, ort.OrtValue]] = []
        self.runs: list[Any] = []
        self.workspaces: list[tuple[str, ort.OrtValue]] = []
        self.outputs: list[tuple[str, ort.OrtValue]] = []
        self._readers: dict[int, Any] = {}

    @classmethod
    def make(cls, feeds: Mapping[str, np.ndarray], *args: Any) -> tuple[Optional["RankPlan"], Optional[BaseException]]:
        """A plan for the shapes of ``feeds`` after running it once, or ``(None, error)``."""
        plan = cls(*args)
        error = plan._build(feeds)
        return (None, error) if error is not None else (plan, None)

    def _build(self, feeds: Mapping[str, np.ndarray]) -> Optional[BaseException]:
        error: Optional[BaseException] = None
        values: dict[str, ort.OrtValue] = {}
        try:
            read = {name for step in self.rank.segments for name in step.inputs} | {s.input for s in self.rank.steps if isinstance(s, CollectiveStep)}
            read |= {tensor for _, tensor in self.rank.outputs}
            self.feed_buffers = [(name, allocate(array.shape, dtypes.as_dtype(array.dtype), self.device)) for name, array in feeds.items() if name in read]
            self.load_feeds(feeds)
            values.update(self.feed_buffers)
        except Exception as exc:  # out of memory, mostly
            error = exc
        for step in self.rank.steps:
            if isinstance(step, SegmentStep):
                if error is None:
                    try:
                        self.runs.append(SegmentRun(step, self.segment_sessions[step.file], values, self.device))
                    except Exception as exc:
                        error = exc
                continue
            try:
                self._add_collective(step, None if error is not None else values.get(step.input), values)
            except Exception as exc:  # PeerFailed, a mismatch (MPIError), out of memory
                error = error or exc
        if error is None:
            try:
                self.outputs = [(name, values[tensor]) for name, tensor in self.rank.outputs]
                self.copy_workspaces(feeds)
            except Exception as exc:
                error = exc
        return error

    def _add_collective(self, step: CollectiveStep, source: Optional[ort.OrtValue], values: dict[str, ort.OrtValue]) -> None:
        group = self.groups[step.group]
        dtype = dtypes.from_onnx(source.element_type()) if source is not None else None
        local = (dtype.name, tuple(source.shape())) if source is not None and dtype is not None else None
        shapes = exchange_headers(group.comm, step, group.members, local, self.watchdog)
        assert source is not None and dtype is not None  # exchange_headers raised PeerFailed otherwise
        target = allocate(agreed_shape(step, group.members, shapes), dtype, self.device)
        if self.device == "cpu":
            transport = host_collective(group.comm, self.mpi, step, host_view(source), host_view(target), shapes)
        else:
            transport = device_collective(group.comm, self.mpi, group.nccl_state, step, source, target, shapes, self.sessions)
        runner = CollectiveRunner(step, transport, self.mpi, self.rank.rank)
        with self.watchdog.waiting(f"{step.describe()} (instance {step.instance_id})"):
            runner.run()
        self.runs.append(runner)
        values[step.output] = target
        if step.workspace:
            self.workspaces.append((step.workspace, target))

    def load_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Copies the feeds into their buffers (to the device, with CUDA)."""
        for name, buffer in self.feed_buffers:
            write_into(buffer, np.ascontiguousarray(feeds[name]))

    def run(self, feeds: Mapping[str, np.ndarray]) -> Optional[BaseException]:
        """Runs the rank's steps; returns the first error (the rank still runs every collective)."""
        error: Optional[BaseException] = None
        try:
            self.load_feeds(feeds)
        except Exception as exc:
            error = exc
        for step in self.runs:
            if isinstance(step, SegmentRun):
                if error is None:
                    try:
                        step.run()
                    except Exception as exc:
                        error = exc
            else:
                with self.watchdog.waiting(f"{step.step.describe()} (instance {step.step.instance_id})"):
                    step.run()
        if error is None:
            try:
                self.copy_workspaces(feeds)
            except Exception as exc:
                error = exc
        return error

    def copy_workspaces(self, feeds: Mapping[str, np.ndarray]) -> None:
        """A ``workspace`` feed large enough (same dtype, contiguous) receives its collective's result."""
        for name, result in self.workspaces:
            target = workspace_view(feeds.get(name), result)
            if target is not None and target.flags.writeable:
                self.read(result, target)

    def read(self, value: ort.OrtValue, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The value's contents on the host: in ``out``, or in a fresh array."""
        reader = self._readers.get(id(value))
        if reader is None:
            reader = self._readers[id(value)] = _reader(self.device, value, self.sessions)
        result = reader(out)
        return out if out is not None else result

    def results(self, out: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """This rank's outputs as fresh host arrays (or in the ``out`` arrays of their names)."""
        copies: dict[int, np.ndarray] = {}
        result: dict[str, np.ndarray] = {}
        for name, value in self.outputs:
            target = out.get(name) if out else None
            if target is not None:
                shape, dtype = tuple(value.shape()), dtypes.from_onnx(value.element_type())
                if not isinstance(target, np.ndarray) or target.shape != shape or target.dtype != dtype.numpy or not target.flags.writeable:
                    got = f"{target.dtype}{target.shape}" if isinstance(target, np.ndarray) else type(target).__name__
                    raise InputError(f"out['{name}'] must be a writable numpy array of {dtype}{shape}, got {got}")
                result[name] = copies[id(value)] = self.read(value, target)
            elif id(value) in copies:
                result[name] = copies[id(value)].copy()  # two outputs of one tensor stay distinct arrays
            else:
                result[name] = copies[id(value)] = self.read(value)
        return result
