"""The local executor: runs every rank of an engine in one process.

Everything an engine run touches is made once and reused:

- per engine (at load): one ONNX Runtime session per segment file, the collectives' helper
  sessions (``graphbuild.runtime.collectives``) on the same provider;
- per input-shape signature (a ``Plan``, made by the first call with those shapes, at most
  ``max_plans`` kept, least recently used dropped): one buffer per feed, per segment output and per
  collective result, all ``OrtValue``s on the engine's device, and one IO binding per step with
  its inputs and outputs bound to those buffers.

A call then copies the feeds into their buffers, runs the steps in order (rank 0's step, rank 1's
step, ...; collectives once for all ranks) and copies the outputs out. With the CUDA provider the
buffers live on the GPU: intermediates never leave it, collectives run there, and only the
outputs the caller gets back are copied to the host.

Output-buffer policy: intermediate tensors live in the plan's buffers and are overwritten by the
next call; what a call returns is never one of them. Outputs are copied into fresh arrays, or into
the caller's arrays (``out=``), so a returned array stays valid after later calls. On CPU, a large
output (``DIRECT_MIN_BYTES``) that no later step reads skips the copy: its segment writes straight
into the array the call returns (the caller's ``out=`` array, or a fresh 64-byte-aligned one). A ``workspace``
input of a collective receives a copy of the collective's result.

An executor runs one call at a time (a lock serializes calls from several threads).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import onnxruntime as ort

from graphbuild import dtypes
from graphbuild.errors import EngineError, ExecutionError, GraphBuildError, InputError, OutOfRangeIdError
from graphbuild.ops.embedding import out_of_range_message
from graphbuild.ops.registry import get_op
from graphbuild.runtime.collectives import MODELLED_COLLECTIVES, CollectiveRun, HostCollectiveRun, HostCopy, SessionCache
from graphbuild.runtime.ort_check import detached_outputs
from graphbuild.runtime.ortvalues import aligned_empty, allocate, device_of, host_view, to_ortvalue, write_into
from graphbuild.runtime.session import create_session, default_providers

_PLUGIN_RANGE_ERROR = re.compile(r"TPEmbedding '(?P<node>[^']*)': id (?P<id>-?\d+) at flat position (?P<pos>\d+) is outside the vocabulary \[0, (?P<vocab>\d+)\)")

#: Plans (buffers and bindings for one set of input shapes) an executor keeps by default.
MAX_PLANS = 8

#: Outputs at least this large are written straight into the returned arrays (CPU); smaller ones
#: are copied out of the plan's buffer, which costs less than binding a new array on every call.
DIRECT_MIN_BYTES = 1 << 20


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
class SegmentSpec:
    """One segment of one rank: its session and the tensor names it reads and writes."""

    rank: int
    file: str
    session: ort.InferenceSession
    inputs: list[str]
    outputs: list[str]
    checks: list[dict[str, Any]]


def _translate_ort_error(exc: Exception, rank: int, file: str) -> GraphBuildError:
    text = str(exc)
    found = _PLUGIN_RANGE_ERROR.search(text)
    if found:
        return OutOfRangeIdError(out_of_range_message(found["node"], int(found["id"]), int(found["pos"]), int(found["vocab"])))
    detail = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return ExecutionError(f"rank {rank}, {file}: ONNX Runtime failed: {detail}")


class SegmentRun:
    """A segment bound to a plan's buffers; the first ``run`` lets ONNX Runtime size the outputs.

    Args:
        spec: the segment.
        values: the rank's tensors so far (name -> OrtValue); gets this segment's outputs.
        device: where outputs are allocated (check tensors always go to host memory).
    """

    def __init__(self, spec: SegmentSpec, values: dict[str, ort.OrtValue], device: str) -> None:
        self.spec = spec
        self.binding = spec.session.io_binding()
        self.inputs = [values[name] for name in spec.inputs]
        for name, value in zip(spec.inputs, self.inputs):
            self.binding.bind_ortvalue_input(name, value)
        check_names = [check["tensor"] for check in spec.checks]
        for name in spec.outputs:
            self.binding.bind_output(name, device)
        for name in check_names:
            self.binding.bind_output(name, "cpu")  # three int64s read on the host after each run
        self._execute()
        produced = detached_outputs(self.binding)
        self.binding.clear_binding_outputs()
        for name, value in zip(spec.outputs + check_names, produced):
            self.binding.bind_ortvalue_output(name, value)  # later runs write into the same buffers
        values.update(zip(spec.outputs, produced))
        self.outputs = list(produced[: len(spec.outputs)])
        self.checks = [(check, host_view(value)) for check, value in zip(spec.checks, produced[len(spec.outputs) :])]
        self._check()

    def _execute(self) -> None:
        try:
            self.spec.session.run_with_iobinding(self.binding)
        except Exception as exc:  # onnxruntime's exception classes derive from Exception only
            raise _translate_ort_error(exc, self.spec.rank, self.spec.file) from None

    def _check(self) -> None:
        for check, view in self.checks:
            position, bad_id, size = view.tolist()
            if position < size:
                raise OutOfRangeIdError(out_of_range_message(check["node"], bad_id, position, check["vocab_size"]))

    def run(self) -> None:
        self._execute()
        if self.checks:
            self._check()

    def bind_host_output(self, index: int, target: np.ndarray) -> ort.OrtValue:
        """Binds output ``index`` to ``target``'s memory (CPU) for the next runs; returns the value,
        which the caller keeps alive as long as it stays bound."""
        value = to_ortvalue(target)
        self.binding.bind_ortvalue_output(self.spec.outputs[index], value)
        return value


@dataclasses.dataclass
class DirectOutput:
    """An output that a segment writes straight into the array the caller gets (CPU only)."""

    rank: int
    name: str
    run: SegmentRun
    index: int
    shape: tuple[int, ...]
    dtype: dtypes.DType


class Plan:
    """Buffers and bindings for one set of input shapes; creating it runs the engine once.

    Args:
        steps: per rank, the ordered ``SegmentSpec``s and ``CollectiveSpec``s.
        outputs: per rank, output name -> tensor name.
        feeds: validated feeds (name -> array).
        device: ``"cpu"`` or ``"cuda"``.
        sessions: the helper sessions of the engine.
    """

    def __init__(self, steps: list[list[Any]], outputs: list[dict[str, str]], feeds: Mapping[str, np.ndarray], device: str, sessions: SessionCache) -> None:
        read = {name for rank in steps for s in rank if isinstance(s, SegmentSpec) for name in s.inputs}
        read |= {name for rank in outputs for name in rank.values()}
        self.feed_buffers = [(name, allocate(array.shape, dtypes.as_dtype(array.dtype), device)) for name, array in feeds.items() if name in read]
        self.load_feeds(feeds)
        shared = dict(self.feed_buffers)
        values: list[dict[str, ort.OrtValue]] = [dict(shared) for _ in steps]
        self.runs: list[Any] = []
        self.workspaces: list[tuple[str, ort.OrtValue]] = []
        for position in range(len(steps[0]) if steps else 0):
            first = steps[0][position]
            if isinstance(first, CollectiveSpec):
                specs = [rank[position] for rank in steps]
                kind = CollectiveRun if first.op in MODELLED_COLLECTIVES else HostCollectiveRun
                collective = kind(first, [v[s.input] for s, v in zip(specs, values)], sessions, device)
                collective.run()
                self.runs.append(collective)
                for s, v in zip(specs, values):
                    v[s.output] = collective.output
                if first.workspace:
                    self.workspaces.append((first.workspace, collective.output))
            else:
                for rank, v in zip(steps, values):
                    self.runs.append(SegmentRun(rank[position], v, device))
        self.outputs = [[(name, v[tensor]) for name, tensor in rank.items()] for rank, v in zip(outputs, values)]
        self._to_host = _host_reader(device, sessions)
        self.copy_workspaces(feeds)
        self.direct = self._direct_outputs(steps, outputs, feeds) if device == "cpu" else []
        self._bound: list[ort.OrtValue] = []

    def _direct_outputs(self, steps: list[list[Any]], outputs: list[dict[str, str]], feeds: Mapping[str, np.ndarray]) -> list[DirectOutput]:
        """Outputs that only the caller reads: later calls let their segment write them straight
        into the returned arrays instead of into a plan buffer that is then copied."""
        segment_runs = iter(run for run in self.runs if isinstance(run, SegmentRun))
        producer: list[dict[str, tuple[SegmentRun, int]]] = [{} for _ in steps]
        read: list[set[str]] = [set(feeds) for _ in steps]
        for position in range(len(steps[0]) if steps else 0):
            for rank, rank_steps in enumerate(steps):
                spec = rank_steps[position]
                if isinstance(spec, CollectiveSpec):
                    read[rank].add(spec.input)
                    continue
                run = next(segment_runs)
                read[rank].update(spec.inputs)
                producer[rank].update({tensor: (run, i) for i, tensor in enumerate(spec.outputs)})
        direct = []
        for rank, rank_outputs in enumerate(outputs):
            tensors = list(rank_outputs.values())
            for name, tensor in rank_outputs.items():
                if tensor in read[rank] or tensor not in producer[rank] or tensors.count(tensor) > 1:
                    continue
                run, index = producer[rank][tensor]
                value = run.outputs[index]
                dtype = dtypes.from_onnx(value.element_type())
                if int(np.prod(value.shape(), dtype=np.int64)) * dtype.numpy.itemsize < DIRECT_MIN_BYTES:
                    continue
                direct.append(DirectOutput(rank, name, run, index, tuple(value.shape()), dtype))
        return direct

    def load_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Copies the feeds into their buffers (to the device, with CUDA)."""
        for name, buffer in self.feed_buffers:
            array = feeds[name]
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            write_into(buffer, array)

    def run(self, feeds: Mapping[str, np.ndarray], rank_outputs: Optional[Mapping[str, np.ndarray]] = None) -> dict[tuple[int, str], np.ndarray]:
        """Runs the steps; returns the outputs written straight into caller arrays, by (rank, name)."""
        self.load_feeds(feeds)
        targets = []
        for entry in self.direct:
            wanted = rank_outputs.get(entry.name) if entry.rank == 0 and rank_outputs else None
            if wanted is not None:
                _check_out_shape(entry.name, wanted, entry.dtype, entry.shape)
            direct = wanted is not None and wanted.flags.c_contiguous
            targets.append((entry, wanted, wanted if direct else aligned_empty(entry.shape, entry.dtype.numpy)))
        # Every direct output is rebound on every call, so no array returned earlier stays bound.
        bound = [entry.run.bind_host_output(entry.index, target) for entry, _, target in targets]
        self._bound = bound  # the arrays stay bound (and alive) until the next call rebinds them
        for step in self.runs:
            step.run()
        self.copy_workspaces(feeds)
        written: dict[tuple[int, str], np.ndarray] = {}
        for entry, wanted, target in targets:
            if wanted is not None and wanted is not target:
                np.copyto(wanted, target)  # a non-contiguous out= array
                target = wanted
            written[(entry.rank, entry.name)] = target
        return written

    def copy_workspaces(self, feeds: Mapping[str, np.ndarray]) -> None:
        for name, result in self.workspaces:
            workspace = feeds.get(name)
            dtype = dtypes.from_onnx(result.element_type()).numpy
            size = int(np.prod(result.shape(), dtype=np.int64))
            if workspace is None or workspace.dtype != dtype or workspace.size < size or not workspace.flags.c_contiguous:
                continue  # too small or not writable in place: the workspace is optional
            target = workspace.reshape(-1)[:size].reshape(result.shape())
            self._to_host(result, target)

    def results(self, rank_outputs: Optional[Mapping[str, np.ndarray]] = None, written: Optional[Mapping[tuple[int, str], np.ndarray]] = None) -> list[dict[str, np.ndarray]]:
        """Every rank's outputs on the host: those in ``written`` as they are, the others copied
        (rank 0's into ``rank_outputs`` where given)."""
        copies: dict[int, np.ndarray] = {}
        per_rank = []
        for rank, outputs in enumerate(self.outputs):
            result = {}
            for name, value in outputs:
                if written and (rank, name) in written:
                    result[name] = written[(rank, name)]
                    continue
                target = rank_outputs.get(name) if rank == 0 and rank_outputs else None
                if target is not None:
                    result[name] = copies[id(value)] = self._to_host(value, _check_out(name, target, value))
                    continue
                array = copies.get(id(value))
                if array is None:
                    array = copies[id(value)] = self._to_host(value, None)
                result[name] = array
            per_rank.append(result)
        return per_rank


def _check_out(name: str, target: Any, value: ort.OrtValue) -> np.ndarray:
    return _check_out_shape(name, target, dtypes.from_onnx(value.element_type()), tuple(value.shape()))


def _check_out_shape(name: str, target: Any, dtype: dtypes.DType, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(target, np.ndarray) or target.dtype != dtype.numpy or target.shape != shape or not target.flags.writeable:
        got = f"{target.dtype}{target.shape}" if isinstance(target, np.ndarray) else type(target).__name__
        raise InputError(f"out['{name}'] must be a writable numpy array of {dtype}{shape}, got {got}")
    return target


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


class LocalExecutor:
    """Runs all ranks of an engine in this process, collectives in memory.

    Args:
        root: the engine directory.
        manifest: its validated manifest.
        providers: ONNX Runtime execution providers (default: CUDA when present, else CPU).
        intra_op_threads: threads per session (default: ONNX Runtime's choice).
        max_plans: how many input-shape signatures keep their buffers (least recently used dropped).
    """

    def __init__(
        self,
        root: Path,
        manifest: Mapping[str, Any],
        *,
        providers: Optional[Sequence[str]] = None,
        intra_op_threads: Optional[int] = None,
        max_plans: int = MAX_PLANS,
    ) -> None:
        ranks = manifest["ranks"]
        if len(ranks) != manifest["tp_size"]:
            raise EngineError(
                f"{root}: the local executor needs all {manifest['tp_size']} ranks but the engine holds {len(ranks)}"
            )
        providers = list(providers) if providers is not None else default_providers()
        needs_plugin = bool(manifest["custom_ops"])
        self._steps: list[list[Any]] = []
        for rank in ranks:
            steps: list[Any] = []
            for step in rank["steps"]:
                if step["kind"] == "segment":
                    session = create_session(root / step["file"], needs_plugin=needs_plugin, providers=providers, intra_op_threads=intra_op_threads)
                    steps.append(SegmentSpec(rank["rank"], step["file"], session, list(step["inputs"]), list(step["outputs"]), list(step.get("checks", []))))
                else:
                    get_op(step["op"])  # unknown collectives fail at load, not mid-run
                    steps.append(CollectiveSpec(step["op"], step["name"], dict(step.get("attrs", {})), step["input"], step["output"], step.get("workspace")))
            self._steps.append(steps)
        self._check_schedule(root)
        self._outputs = [dict(rank["outputs"]) for rank in ranks]
        self.device = device_of(providers)
        self._sessions = SessionCache(providers, intra_op_threads)
        self._plans: collections.OrderedDict[tuple[Any, ...], Plan] = collections.OrderedDict()
        self._max_plans = max(1, max_plans)
        self._lock = threading.Lock()

    def _check_schedule(self, root: Path) -> None:
        def signature(steps: list[Any]) -> list[Any]:
            return [(s.op, s.attrs.get("instance_id")) if isinstance(s, CollectiveSpec) else "segment" for s in steps]

        first = signature(self._steps[0])
        for rank, steps in enumerate(self._steps[1:], start=1):
            if signature(steps) != first:
                raise EngineError(f"{root}: rank {rank}'s schedule {signature(steps)} differs from rank 0's {first}; rebuild the engine")

    @property
    def plans(self) -> int:
        """How many input-shape signatures currently hold buffers."""
        return len(self._plans)

    def run_all_ranks(self, feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]] = None) -> list[dict[str, np.ndarray]]:
        """Runs every rank; returns each rank's outputs (feeds must already be validated).

        Args:
            feeds: input name -> array, as ``validate_feeds`` returns them.
            out: optional output name -> array that receives rank 0's output of that name.
        """
        key = tuple(array.shape for array in feeds.values())
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                plan = Plan(self._steps, self._outputs, feeds, self.device, self._sessions)  # runs once
                self._plans[key] = plan
                if len(self._plans) > self._max_plans:
                    self._plans.popitem(last=False)
                return plan.results(out)
            self._plans.move_to_end(key)
            written = plan.run(feeds, out)
            return plan.results(out, written)
