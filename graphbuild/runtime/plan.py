"""A plan: every buffer and binding one set of input shapes needs, made once, then run call after call.

Made by the first call with those shapes (which it runs): one buffer per feed, per segment output
and per collective result, all ``OrtValue``s on the engine's device, and one IO binding per step
with its inputs and outputs bound to those buffers. Everything a call does is precomputed here
(host views of the buffers, which outputs are written where), so a call is a short loop.

Output-buffer policy: intermediate tensors live in the plan's buffers and are overwritten by the
next call; what a call returns is never one of them. Each output the caller gets is its own array
(two output names of one tensor, or one tensor on two ranks, give distinct arrays):

- small outputs are copied out of the plan's buffer into a fresh array (or the caller's ``out=``);
- outputs of ``DIRECT_MIN_BYTES`` or more come from a ``BufferPool``: memory returned by arrays
  the caller has dropped, so a call does not fault in fresh pages. On CPU such an output, when no
  later step reads it, is not copied at all: its segment writes straight into the pooled block (or
  into the caller's ``out=`` array when nothing that runs after it can fail);
- on any error, the caller's ``out=`` arrays are left as they were.

A ``workspace`` input of a collective receives a copy of the collective's result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes
from graphbuild.errors import ExecutionError, GraphBuildError, InputError, OutOfRangeIdError
from graphbuild.plugin import format_out_of_range, parse_out_of_range
from graphbuild.runtime.collectives import CollectiveRun, HostCopy, SessionCache
from graphbuild.runtime.ort_check import detached_outputs
from graphbuild.runtime.ortvalues import allocate, host_view, to_ortvalue, write_into
from graphbuild.runtime.pool import Block, BufferPool
from graphbuild.runtime.schedule import CollectiveStep, Schedule, SegmentStep
from graphbuild.runtime.session import binding_runner

#: Outputs at least this large come from a ``BufferPool`` and, on CPU, are written straight into
#: the returned arrays; smaller ones are copied into fresh arrays, which costs less (the pool's
#: bookkeeping, about a microsecond, is what copying some 64 KiB costs).
DIRECT_MIN_BYTES = 64 << 10


def translate_ort_error(exc: Exception, step: SegmentStep) -> GraphBuildError:
    """The ``GraphBuildError`` for ONNX Runtime's failure to run ``step``: the plugin's out-of-range
    status becomes an ``OutOfRangeIdError`` in the user-facing wording, anything else an
    ``ExecutionError`` naming the rank and file."""
    text = str(exc)
    found = parse_out_of_range(text)
    if found:
        return OutOfRangeIdError(format_out_of_range(*found))
    detail = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return ExecutionError(f"{step.describe()}: ONNX Runtime failed: {detail}")


class SegmentRun:
    """A segment bound to a plan's buffers; the first ``run`` lets ONNX Runtime size the outputs.

    Args:
        spec: the segment.
        session: its ONNX Runtime session.
        values: the rank's tensors so far (name -> OrtValue); gets this segment's outputs.
        device: where outputs are allocated (check tensors always go to host memory).
    """

    def __init__(self, spec: SegmentStep, session: ort.InferenceSession, values: dict[str, ort.OrtValue], device: str) -> None:
        self.spec = spec
        self.session = session
        self.binding = session.io_binding()
        self.inputs = [values[name] for name in spec.inputs]
        for name, value in zip(spec.inputs, self.inputs):
            self.binding.bind_ortvalue_input(name, value)
        check_names = [check.tensor for check in spec.checks]
        for name in spec.outputs:
            self.binding.bind_output(name, device)
        for name in check_names:
            self.binding.bind_output(name, "cpu")  # three int64s read on the host after each run
        self._call = binding_runner(session, self.binding)
        self.checks: list[tuple[Any, np.ndarray]] = []  # read once this first run has made them
        self.run()
        produced = detached_outputs(self.binding)
        self.binding.clear_binding_outputs()
        for name, value in zip(list(spec.outputs) + check_names, produced):
            self.binding.bind_ortvalue_output(name, value)  # later runs write into the same buffers
        values.update(zip(spec.outputs, produced))
        self.outputs = list(produced[: len(spec.outputs)])
        self.checks = [(check, host_view(value)) for check, value in zip(spec.checks, produced[len(spec.outputs) :])]
        self._bound: dict[int, Any] = {}  # output index -> what it is bound to now, when not the plan's buffer
        self._check()

    def _check(self) -> None:
        for check, view in self.checks:
            position, bad_id, size = view.tolist()
            if position < size:
                raise OutOfRangeIdError(format_out_of_range(check.node, bad_id, position, check.vocab_size))

    def run(self) -> None:
        try:
            self._call()
        except Exception as exc:  # onnxruntime's exception classes derive from Exception only
            raise translate_ort_error(exc, self.spec) from None
        if self.checks:
            self._check()

    def bind_block(self, index: int, block: Block) -> None:
        """Binds output ``index`` to a pooled block for the next runs (no work when it already is)."""
        if self._bound.get(index) is not block:
            self.binding.bind_ortvalue_output(self.spec.outputs[index], block.ortvalue)
            self._bound[index] = block

    def bind_array(self, index: int, target: np.ndarray) -> None:
        """Binds output ``index`` to ``target``'s memory (CPU, contiguous) for the next runs; the
        OrtValue (which keeps ``target`` alive) stays until the output is bound to something else."""
        self.binding.bind_ortvalue_output(self.spec.outputs[index], to_ortvalue(target))
        self._bound[index] = target


@dataclasses.dataclass
class OutputSlot:
    """One output of one rank, with everything a call needs to hand it over.

    Attributes:
        rank, name: whose output.
        value: the plan's buffer that holds it (when not written directly).
        dtype, shape: the output's.
        view: a host view of ``value`` (CPU) or None (device).
        pool: pooled memory for the arrays handed out (large outputs) or None.
        producer: ``(segment run, output index)`` when the segment writes it directly (CPU).
        out_safe: a caller's ``out=`` array may be written directly (nothing after its producer
            can fail, so an error never leaves it half written).
    """

    rank: int
    name: str
    value: ort.OrtValue
    dtype: dtypes.DType
    shape: tuple[int, ...]
    view: Optional[np.ndarray]
    pool: Optional[BufferPool]
    producer: Optional[tuple[SegmentRun, int]] = None
    out_safe: bool = False

    def check_out(self, target: Any) -> np.ndarray:
        """``target`` if it can receive this output.

        Raises:
            InputError: saying what is wrong with it (type, dtype, shape, read-only).
        """
        if isinstance(target, np.ndarray) and target.dtype == self.dtype.numpy and target.shape == self.shape and target.flags.writeable:
            return target
        wanted = f"{self.dtype}{self.shape}"
        if isinstance(target, np.ndarray) and target.dtype == self.dtype.numpy and target.shape == self.shape:
            raise InputError(f"out['{self.name}'] is read-only (its flags.writeable is False); pass a writable numpy array of {wanted}")
        got = f"{target.dtype}{target.shape}" if isinstance(target, np.ndarray) else type(target).__name__
        raise InputError(f"out['{self.name}'] must be a writable numpy array of {wanted}, got {got}")


class Plan:
    """Buffers and bindings for one set of input shapes; creating it runs the engine once.

    Args:
        schedule: the engine's steps, every rank.
        segment_sessions: file -> the segment's ONNX Runtime session.
        feeds: validated feeds (name -> array).
        device: ``"cpu"`` or ``"cuda"``.
        sessions: the helper sessions of the engine.
    """

    def __init__(self, schedule: Schedule, segment_sessions: Mapping[str, ort.InferenceSession], feeds: Mapping[str, np.ndarray], device: str, sessions: SessionCache) -> None:
        steps = [rank.steps for rank in schedule.ranks]
        read = {name for rank in steps for s in rank if isinstance(s, SegmentStep) for name in s.inputs}
        read |= {tensor for rank in schedule.ranks for _, tensor in rank.outputs}
        self.feed_buffers = [(name, allocate(array.shape, dtypes.as_dtype(array.dtype), device)) for name, array in feeds.items() if name in read]
        self._feed_views = [(name, host_view(buffer)) for name, buffer in self.feed_buffers] if device == "cpu" else None
        self.load_feeds(feeds)
        values: list[dict[str, ort.OrtValue]] = [dict(self.feed_buffers) for _ in steps]
        self.runs: list[Any] = []
        self.workspaces: list[tuple[str, ort.OrtValue]] = []
        for position in range(len(steps[0]) if steps else 0):
            first = steps[0][position]
            if isinstance(first, CollectiveStep):
                specs = [rank[position] for rank in steps]
                collective = CollectiveRun(first, [v[s.input] for s, v in zip(specs, values)], sessions, device)
                collective.run()
                self.runs.append(collective)
                for s, v in zip(specs, values):
                    v[s.output] = collective.output
                if first.workspace:
                    self.workspaces.append((first.workspace, collective.output))
            else:
                for rank_steps, v in zip(steps, values):
                    step = rank_steps[position]
                    self.runs.append(SegmentRun(step, segment_sessions[step.file], v, device))
        self._to_host = _host_reader(device, sessions)
        self.copy_workspaces(feeds)
        self.slots = [[self._slot(rank.rank, name, v[tensor], device) for name, tensor in rank.outputs] for rank, v in zip(schedule.ranks, values)]
        self.direct = self._find_direct(schedule, feeds) if device == "cpu" else []
        self._handovers = [(slot.name, *self._handover(slot)) for slot in self.slots[0]] if self.slots else []

    def _handover(self, slot: OutputSlot) -> tuple[Optional[np.ndarray], Optional[Callable[[dict[int, Any]], np.ndarray]]]:
        """How ``run_default`` hands rank 0's output ``slot`` to the caller, chosen once (the
        branch of ``results`` for a call without ``out=``): ``(view, None)`` to return a copy of the
        plan's host buffer (the common small output), else ``(None, handover)`` with
        ``handover(written)`` returning the caller's array."""
        pool = slot.pool
        if any(slot is direct for direct in self.direct):
            return None, lambda written: pool.hand_out(written.pop(id(slot)))  # type: ignore[union-attr]
        if pool is not None:

            def copy_into_block(written: dict[int, Any]) -> np.ndarray:
                block = pool.take()
                self._copy(slot, block.array)
                return pool.hand_out(block)

            return None, copy_into_block
        if slot.view is not None:
            return slot.view, None
        return None, lambda written: self._copy(slot, None)

    def _slot(self, rank: int, name: str, value: ort.OrtValue, device: str) -> OutputSlot:
        dtype = dtypes.from_onnx(value.element_type())
        shape = tuple(value.shape())
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.numpy.itemsize
        pool = BufferPool(shape, dtype) if nbytes >= DIRECT_MIN_BYTES else None
        return OutputSlot(rank, name, value, dtype, shape, host_view(value) if device == "cpu" else None, pool)

    def _find_direct(self, schedule: Schedule, feeds: Mapping[str, np.ndarray]) -> list[OutputSlot]:
        """Pooled outputs that only the caller reads: later calls let their segment write them
        straight into the returned arrays instead of into a plan buffer that is then copied."""
        segment_runs = iter(run for run in self.runs if isinstance(run, SegmentRun))
        producer: list[dict[str, tuple[SegmentRun, int]]] = [{} for _ in schedule.ranks]
        read: list[set[str]] = [set(feeds) for _ in schedule.ranks]
        for position in range(len(schedule.ranks[0].steps) if schedule.ranks else 0):
            for rank in schedule.ranks:
                spec = rank.steps[position]
                if isinstance(spec, CollectiveStep):
                    read[rank.rank].add(spec.input)
                    continue
                run = next(segment_runs)
                read[rank.rank].update(spec.inputs)
                producer[rank.rank].update({tensor: (run, i) for i, tensor in enumerate(spec.outputs)})
        direct = []
        for rank, slots in zip(schedule.ranks, self.slots):
            tensors = [tensor for _, tensor in rank.outputs]
            for slot, tensor in zip(slots, tensors):
                if slot.pool is None or tensor in read[rank.rank] or tensor not in producer[rank.rank] or tensors.count(tensor) > 1:
                    continue
                slot.producer = producer[rank.rank][tensor]
                slot.out_safe = slot.producer[0] is self.runs[-1] and not slot.producer[0].checks
                direct.append(slot)
        return direct

    def load_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Copies the feeds into their buffers (to the device, with CUDA)."""
        if self._feed_views is not None:
            for name, view in self._feed_views:
                view[...] = feeds[name]  # the dtypes are checked: the same copy as np.copyto, cheaper to call
            return
        for name, buffer in self.feed_buffers:
            write_into(buffer, np.ascontiguousarray(feeds[name]))

    def run_default(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``run(feeds, None, (0,))[0]``, the call users make, with the handover of each output
        chosen when the plan was made: a small call spends about two microseconds in Python."""
        self.load_feeds(feeds)
        written: dict[int, Any] = {}
        try:
            if self.direct:
                self._bind_direct({}, written)
            for step in self.runs:
                step.run()
            if self.workspaces:
                self.copy_workspaces(feeds)
            result = {}
            for name, view, handover in self._handovers:
                result[name] = view.copy() if handover is None else handover(written)
            return result
        finally:
            if written:
                self._put_back(written)

    def _bind_direct(self, wanted: Mapping[str, np.ndarray], written: dict[int, Any]) -> None:
        """Binds every direct output anew (no array handed out stays bound): to the caller's
        ``out=`` array where that is safe, else to a block taken from its pool; records each in
        ``written`` (``id(slot)`` -> the block or array)."""
        for slot in self.direct:
            target = wanted.get(slot.name) if wanted and slot.rank == 0 else None
            run, index = slot.producer  # type: ignore[misc]
            if target is not None and slot.out_safe and target.flags.c_contiguous:
                run.bind_array(index, target)
                written[id(slot)] = target
                continue
            block = written[id(slot)] = slot.pool.take()  # type: ignore[union-attr]
            run.bind_block(index, block)

    def _put_back(self, written: dict[int, Any]) -> None:
        """Gives back the blocks taken for a call that were not handed to the caller (an error,
        or ranks not asked for)."""
        for slot in self.direct:
            block = written.get(id(slot))
            if isinstance(block, Block):
                slot.pool.put(block)  # type: ignore[union-attr]

    def run(self, feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]], ranks: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Runs the steps; returns the outputs of ``ranks`` (rank 0's into ``out`` where given)."""
        wanted = self.check_out(out) if out else {}
        self.load_feeds(feeds)
        written: dict[int, Any] = {}  # id(slot) -> the Block or out= array its segment writes into
        try:
            self._bind_direct(wanted, written)
            for step in self.runs:
                step.run()
            if self.workspaces:
                self.copy_workspaces(feeds)
            return self.results(wanted, ranks, written)
        finally:
            if written:
                self._put_back(written)

    def check_out(self, out: Optional[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The caller's ``out=`` arrays after checking each against rank 0's output of its name."""
        if not out:
            return {}
        return {slot.name: slot.check_out(out[slot.name]) for slot in self.slots[0] if slot.name in out}

    def results(self, wanted: Mapping[str, np.ndarray], ranks: Sequence[int], written: Optional[dict[int, Any]] = None) -> list[dict[str, np.ndarray]]:
        """The outputs of ``ranks`` as arrays the caller owns: each (rank, name) its own array.

        ``written`` maps ``id(slot)`` to where the slot's segment wrote this call (a pooled block or
        an ``out=`` array); a block handed to the caller is removed from it.
        """
        per_rank = []
        for rank in ranks:
            result = {}
            for slot in self.slots[rank]:
                target = wanted.get(slot.name) if wanted and rank == 0 else None
                where = written.get(id(slot)) if written else None
                if where is None and target is None and slot.pool is None and slot.view is not None:
                    result[slot.name] = slot.view.copy()  # the common small output, first
                elif where is not None and where is target:
                    result[slot.name] = target  # its segment wrote there
                elif where is not None:  # written by its segment into a pooled block
                    if target is None:
                        result[slot.name] = slot.pool.hand_out(written.pop(id(slot)))  # type: ignore[union-attr]
                    else:
                        np.copyto(target, where.array)
                        result[slot.name] = target
                elif target is not None:
                    result[slot.name] = self._copy(slot, target)
                elif slot.pool is not None:
                    block = slot.pool.take()
                    self._copy(slot, block.array)
                    result[slot.name] = slot.pool.hand_out(block)
                else:
                    result[slot.name] = self._copy(slot, None)
            per_rank.append(result)
        return per_rank

    def _copy(self, slot: OutputSlot, target: Optional[np.ndarray]) -> np.ndarray:
        if slot.view is None:
            return self._to_host(slot.value, target)
        if target is None:
            return slot.view.copy()
        np.copyto(target, slot.view)
        return target

    def copy_workspaces(self, feeds: Mapping[str, np.ndarray]) -> None:
        for name, result in self.workspaces:
            target = workspace_view(feeds.get(name), result)
            if target is not None:
                self._to_host(result, target)

    def close(self) -> None:
        """Releases the pools' free memory (the plan is being dropped)."""
        for slots in self.slots:
            for slot in slots:
                if slot.pool is not None:
                    slot.pool.close()


def workspace_view(workspace: Optional[np.ndarray], result: ort.OrtValue) -> Optional[np.ndarray]:
    """The part of a ``workspace`` feed that receives a collective's ``result``, shaped like it;
    None when there is no such feed or it cannot take the result in place (the workspace is
    optional): another dtype, too small, not contiguous."""
    dtype = dtypes.from_onnx(result.element_type()).numpy
    size = int(np.prod(result.shape(), dtype=np.int64))
    if workspace is None or workspace.dtype != dtype or workspace.size < size or not workspace.flags.c_contiguous:
        return None
    return workspace.reshape(-1)[:size].reshape(tuple(result.shape()))


def _host_reader(device: str, sessions: SessionCache) -> Callable[[ort.OrtValue, Optional[np.ndarray]], np.ndarray]:
    """``read(value, out)``: the value's contents in ``out`` (or a fresh array)."""
    if device == "cpu":

        def read(value: ort.OrtValue, out: Optional[np.ndarray]) -> np.ndarray:
            view = host_view(value)
            if out is None:
                return view.copy()
            np.copyto(out, view)
            return out

        return read

    copiers: dict[int, tuple[ort.OrtValue, HostCopy]] = {}

    def read_device(value: ort.OrtValue, out: Optional[np.ndarray]) -> np.ndarray:
        # CUDA: device-to-host copy through an Identity model bound to host memory.
        entry = copiers.get(id(value))
        if entry is None:
            entry = copiers[id(value)] = (value, HostCopy(value, sessions))
        if out is not None and not out.flags.c_contiguous:
            np.copyto(out, entry[1].run())
            return out
        return entry[1].run(out)

    return read_device
