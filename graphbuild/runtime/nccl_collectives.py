"""Collectives on CUDA tensors for the MPI executor: NCCL through CuPy, or staging through the host.

With the CUDA execution provider the executor's tensors are ``OrtValue``s in device memory.

- **NCCL** (``cupy.cuda.nccl``, CuPy's binding of NVIDIA's library, when importable and
  ``GRAPHBUILD_NCCL`` is not ``0``): one NCCL
  communicator per MPI group communicator, made once per engine; the NCCL unique id is created by
  the group's first member and broadcast over MPI. The payload never leaves the GPU:

  - ``allreduce`` with two ranks of float32/float64/int32/int64 is ``ncclAllReduce`` (two addends
    commute exactly); otherwise every member receives every part (one ``ncclBroadcast`` per member,
    grouped) into buffers allocated once, and the group-order sum runs as the local executor's own
    ONNX model (``runtime.collectives.allreduce_model``) on the CUDA provider, so results are bitwise
    the local executor's;
  - ``allgather`` writes straight into the output when each block is contiguous there
    (``ncclAllGather``, or grouped broadcasts at the blocks' offsets for uneven sizes), else into
    per-member buffers joined by the local executor's ``Concat`` model.

  Work is queued on one CuPy stream and synchronized before ONNX Runtime runs the next segment
  (ONNX Runtime's IO-binding runs return with their outputs complete).
- **Staged** (no NCCL binding): the input is copied to host memory, the MPI host collective runs,
  and the result is copied back into the device buffer; a warning says so once per process.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes
from graphbuild.runtime.collectives import HostCopy, SessionCache, allgather_model, allreduce_model
from graphbuild.runtime.mpi_collectives import host_collective
from graphbuild.runtime.ortvalues import allocate, write_into
from graphbuild.runtime.schedule import CollectiveStep

_warned = False


def import_nccl() -> Optional[Any]:
    """``cupy.cuda.nccl`` when CuPy with NCCL support is installed (and ``GRAPHBUILD_NCCL`` is not
    ``0``), else None."""
    if os.environ.get("GRAPHBUILD_NCCL", "1") == "0":
        return None
    try:
        from cupy.cuda import nccl
    except Exception:  # ImportError, or CuPy failing to find its CUDA libraries
        return None
    return nccl if getattr(nccl, "available", True) else None


def usable_nccl(nccl: Optional[Any], comm: Any) -> Optional[Any]:
    """``nccl`` if every rank of ``comm`` has it and a GPU of its own, else None (on every rank).

    Each process uses CUDA device 0 of the devices it sees. NCCL refuses two ranks on one GPU, so
    the ranks compare (host, PCI bus id) of their device first; ranks sharing one, or a rank
    without NCCL, make every rank stage collectives through host memory (with a warning).
    Collective over ``comm``.
    """
    place = None
    if nccl is not None:
        try:
            import cupy

            cupy.cuda.Device(0).use()
            place = (socket.gethostname(), cupy.cuda.Device(0).pci_bus_id)
        except Exception:  # CuPy without a usable device: stage instead
            place = None
    places = comm.allgather(place)
    if all(p is not None for p in places) and len(set(places)) == len(places):
        return nccl
    if nccl is not None and all(p is not None for p in places):
        warnings.warn(
            "graphbuild: ranks share a GPU and NCCL needs one GPU per rank; give each rank its own device "
            "(CUDA_VISIBLE_DEVICES) to use NCCL",
            RuntimeWarning,
            stacklevel=2,
        )
    return None


def nccl_communicator(nccl: Any, comm: Any) -> Any:
    """An NCCL communicator over the members of MPI communicator ``comm`` (collective over ``comm``)."""
    unique_id = nccl.get_unique_id() if comm.Get_rank() == 0 else None
    unique_id = comm.bcast(unique_id, root=0)
    return nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())


_NCCL_SUM_TYPES = {np.dtype(np.float32): "NCCL_FLOAT32", np.dtype(np.float64): "NCCL_FLOAT64", np.dtype(np.int32): "NCCL_INT32", np.dtype(np.int64): "NCCL_INT64"}


class NcclCollective:
    """One rank's ``allreduce`` or ``allgather`` on device buffers through NCCL.

    Args:
        nccl: the ``cupy.cuda.nccl`` module.
        communicator: the group's NCCL communicator (rank order = group order).
        stream: the CuPy stream collectives are queued on.
        step: the collective.
        source: this rank's input (CUDA OrtValue).
        target: the result (CUDA OrtValue, allocated by the caller).
        shapes: every member's input shape, in group order.
        sessions: helper sessions on the CUDA provider (the sum and concat models).
    """

    def __init__(self, nccl: Any, communicator: Any, stream: Any, step: CollectiveStep, source: ort.OrtValue, target: ort.OrtValue, shapes: Sequence[tuple[int, ...]], sessions: SessionCache) -> None:
        self.nccl, self.comm, self.stream = nccl, communicator, stream
        self.source, self.target = source, target
        self.me = communicator.rank_id()
        dtype = dtypes.from_onnx(source.element_type())
        size = len(shapes)
        self.counts = [int(np.prod(shape, dtype=np.int64)) * dtype.numpy.itemsize for shape in shapes]
        self.native: Optional[Any] = None
        self.parts: list[ort.OrtValue] = []
        self.binding: Optional[Any] = None
        self.offsets: Optional[list[int]] = None
        if step.op == "allreduce" and size == 2 and dtype.numpy in _NCCL_SUM_TYPES:
            self.native = getattr(nccl, _NCCL_SUM_TYPES[dtype.numpy])
            return
        axis = step.axis % len(shapes[0]) if step.op == "allgather" else 0
        if step.op == "allgather" and int(np.prod(tuple(target.shape())[:axis], dtype=np.int64)) == 1:
            self.offsets = [int(d) for d in np.cumsum([0] + self.counts[:-1])]  # blocks land in the output itself
            return
        self.parts = [source if i == self.me else allocate(shape, dtype, "cuda") for i, shape in enumerate(shapes)]
        model = allreduce_model(dtype, size, len(shapes[0])) if step.op == "allreduce" else allgather_model(dtype, size, len(shapes[0]), axis)
        self.session = sessions.get(model)
        self.binding = self.session.io_binding()
        for i, part in enumerate(self.parts):
            self.binding.bind_ortvalue_input(f"x{i}", part)
        self.binding.bind_ortvalue_output("y", target)

    def _broadcasts(self, destinations: Sequence[int]) -> None:
        nccl = self.nccl
        nccl.groupStart()
        try:
            for root, (destination, count) in enumerate(zip(destinations, self.counts)):
                sending = self.source.data_ptr() if root == self.me else destination
                self.comm.broadcast(sending, destination, count, nccl.NCCL_UINT8, root, self.stream.ptr)
        finally:
            nccl.groupEnd()

    def run(self) -> None:
        nccl = self.nccl
        if self.native is not None:
            count = int(np.prod(self.source.shape(), dtype=np.int64))
            self.comm.allReduce(self.source.data_ptr(), self.target.data_ptr(), count, self.native, nccl.NCCL_SUM, self.stream.ptr)
        elif self.offsets is not None:
            base = self.target.data_ptr()
            if len(set(self.counts)) == 1:
                self.comm.allGather(self.source.data_ptr(), base, self.counts[0], nccl.NCCL_UINT8, self.stream.ptr)
            else:
                self._broadcasts([base + offset for offset in self.offsets])
        else:
            self._broadcasts([part.data_ptr() for part in self.parts])
        self.stream.synchronize()
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)


class StagedCollective:
    """A collective on device buffers done by the MPI host collective, through host copies.

    Args:
        comm: the group's MPI communicator.
        mpi: the ``mpi4py.MPI`` module.
        step: the collective.
        source: this rank's input (device OrtValue).
        target: the result (device OrtValue).
        shapes: every member's input shape, in group order.
        sessions: helper sessions (the device-to-host copy model).
    """

    def __init__(self, comm: Any, mpi: Any, step: CollectiveStep, source: ort.OrtValue, target: ort.OrtValue, shapes: Sequence[tuple[int, ...]], sessions: SessionCache) -> None:
        global _warned
        if not _warned:
            warnings.warn(
                "graphbuild: no NCCL binding (cupy-cuda13x) is installed; the MPI executor copies CUDA tensors to host memory for every collective",
                RuntimeWarning,
                stacklevel=2,
            )
            _warned = True
        dtype = dtypes.from_onnx(source.element_type()).numpy
        self.reader = HostCopy(source, sessions)
        self.host_source = np.empty(tuple(source.shape()), dtype)
        self.host_target = np.empty(tuple(target.shape()), dtype)
        self.target = target
        self.collective = host_collective(comm, mpi, step, self.host_source, self.host_target, shapes)

    def run(self) -> None:
        self.reader.run(self.host_source)
        self.collective.run()
        write_into(self.target, self.host_target)


def device_collective(comm: Any, mpi: Any, nccl_state: Optional[tuple[Any, Any, Any]], step: CollectiveStep, source: ort.OrtValue, target: ort.OrtValue, shapes: Sequence[tuple[int, ...]], sessions: SessionCache) -> Any:
    """``NcclCollective`` when ``nccl_state`` (module, communicator, stream) is given, else ``StagedCollective``."""
    if nccl_state is not None:
        nccl, communicator, stream = nccl_state
        return NcclCollective(nccl, communicator, stream, step, source, target, shapes, sessions)
    return StagedCollective(comm, mpi, step, source, target, shapes, sessions)


__all__ = ["NcclCollective", "StagedCollective", "device_collective", "import_nccl", "nccl_communicator"]
