"""The timed paths of ``graphbuild bench``: one embedding lookup done several ways, on CPU or CUDA.

A *path* is one way of producing ``table[ids]`` (or, for the copy ceiling, of moving the same number
of bytes): the copies (``bench_copy``), ``numpy.take``, ONNX Runtime's ``Gather``, graphbuild's
``TPEmbedding`` over the full table and over one vocab shard, whole graphbuild engines and the bare
ONNX Runtime session they are judged against (``bench_engine``), and PyTorch's ``F.embedding``.
Each path is built once per configuration with everything it needs already allocated (inputs on
the device, output buffers bound through ONNX Runtime's IO binding), so a timed call does only the
lookup. ``run(i)`` performs one call with pre-generated id set ``i``; ``result(i)`` runs once more
and returns the output on the host, for the correctness check made before timing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphbuild import dtypes
from graphbuild.plugin import DOMAIN, DOMAIN_VERSION, TP_EMBEDDING
from graphbuild.runtime.ortvalues import aligned_empty
from graphbuild.runtime.session import CPU, CUDA, cuda_device_count, session_options
from graphbuild.tools import bench_copy, bench_engine
from graphbuild.tools.common import CLIError

#: Below this many bytes per thread a multi-threaded copy is done by the calling thread alone
#: (handing work to a pool costs more than it saves).
PARALLEL_COPY_MIN_BYTES = 1 << 20
_OPSET = 21
_ORT_LABELS = {"ort_gather": "ORT Gather", "tp_embedding": "TPEmbedding full table", "tp_embedding_shard": "TPEmbedding shard 1 of 2"}


@dataclasses.dataclass
class TimedPath:
    """One way of doing the lookup (or the copy), ready to be timed.

    Attributes:
        key: stable identifier used in the JSON output (``ort_gather``, ``tp_embedding``, ...).
        label: what the table prints.
        run: performs one call with id set ``i`` (blocking until the result is complete).
        result: runs with id set ``i`` and returns the output as a host ``[tokens, D]`` array, or
            None for paths with nothing to check (the copy).
        expects: ``"full"`` (``table[ids]``), ``"shard"`` (rows of shard 0, zeros elsewhere) or None.
    """

    key: str
    label: str
    run: Callable[[int], Any]
    result: Callable[[int], Optional[np.ndarray]]
    expects: Optional[str]


def storage_dtype(dtype: dtypes.DType) -> np.dtype:
    """The numpy dtype whose bytes ONNX Runtime is handed (bfloat16 travels as its uint16 bits)."""
    return np.dtype(np.uint16) if dtype == dtypes.bfloat16 else dtype.numpy


def lookup_model(op: str, rows: int, hidden: int, dtype: dtypes.DType, **attrs: int) -> bytes:
    """A one-node ONNX model ``out = op(ids, table)``: ``Gather``, ``TPEmbedding`` or ``Identity``.

    ``Identity`` (the device copy ceiling) has one input ``table`` and copies it to ``out``.
    """
    table = helper.make_tensor_value_info("table", dtype.onnx, [rows, hidden])
    if op == "Identity":
        node = helper.make_node("Identity", ["table"], ["out"])
        inputs = [table]
        out = helper.make_tensor_value_info("out", dtype.onnx, [rows, hidden])
    else:
        ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["tokens"])
        inputs = [ids, table]
        out = helper.make_tensor_value_info("out", dtype.onnx, ["tokens", hidden])
        if op == "Gather":
            node = helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)
        else:
            node = helper.make_node(TP_EMBEDDING, ["ids", "table"], ["out"], domain=DOMAIN, **attrs)
    opsets = [helper.make_opsetid("", _OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    graph = helper.make_graph([node], f"bench_{op}", inputs, [out])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def check_device(device: str) -> None:
    """Raises CLIError, saying what is missing, when ``device`` cannot be benchmarked here."""
    if device == "cpu":
        return
    available = ort.get_available_providers()
    if CUDA not in available:
        raise CLIError(
            f"--device cuda needs onnxruntime's CUDAExecutionProvider, but this onnxruntime "
            f"({ort.__version__}) offers only {available}; install onnxruntime-gpu"
        )
    if cuda_device_count() == 0:
        raise CLIError("--device cuda: onnxruntime has the CUDAExecutionProvider, but no CUDA device is present (the driver reports none)")


class Buffer:
    """A ``[rows, cols]`` array of ``dtype`` on the host or on CUDA device 0, with its address."""

    def __init__(self, array: np.ndarray, dtype: dtypes.DType, device: str) -> None:
        host = np.ascontiguousarray(array).view(storage_dtype(dtype)) if array.dtype == dtype.numpy else np.ascontiguousarray(array)
        self.dtype = dtype
        self.shape = tuple(host.shape)
        self.device = device
        if device == "cpu":
            self.host = host
            self.ptr = host.ctypes.data
            self.value = None
        else:
            self.host = None
            self.value = ort.OrtValue.ortvalue_from_numpy(host, "cuda", 0)  # a device copy
            self.ptr = self.value.data_ptr()

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: dtypes.DType, device: str) -> "Buffer":
        buffer = cls.__new__(cls)
        buffer.dtype, buffer.shape, buffer.device = dtype, tuple(shape), device
        if device == "cpu":
            buffer.host = aligned_zeros(shape, storage_dtype(dtype))
            buffer.ptr = buffer.host.ctypes.data
            buffer.value = None
        else:
            buffer.host = None
            buffer.value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), storage_dtype(dtype).type, "cuda", 0)
            buffer.ptr = buffer.value.data_ptr()
        return buffer

    def prefix(self, rows: int) -> "Buffer":
        """The first ``rows`` rows, sharing this buffer's memory (a contiguous prefix of it)."""
        view = Buffer.__new__(Buffer)
        view.__dict__.update(self.__dict__)
        view.shape = (rows,) + self.shape[1:]
        view.host = None if self.host is None else self.host[:rows]
        view.owner = self  # keeps the device allocation alive
        return view

    def to_host(self) -> np.ndarray:
        """A host copy in the logical dtype (bfloat16 as ``ml_dtypes.bfloat16``)."""
        data = np.array(self.host) if self.value is None else self.value.numpy()
        return data.view(self.dtype.numpy) if data.dtype != self.dtype.numpy else data


def aligned_zeros(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """Zeros 64-byte aligned, as ONNX Runtime's CPU allocator gives its outputs. Zeros, so the
    pages are touched now, not while timing."""
    array = aligned_empty(shape, dtype)
    array[...] = 0
    return array


def _bind(binding: Any, name: str, buffer: Buffer, *, output: bool) -> None:
    device = "cpu" if buffer.device == "cpu" else "cuda"
    if output:
        binding.bind_output(name, device, 0, buffer.dtype.onnx, list(buffer.shape), buffer.ptr)
    else:
        binding.bind_input(name, device, 0, buffer.dtype.onnx, list(buffer.shape), buffer.ptr)


class LookupSetup:
    """What the paths of one (table, dtype, thread count, device) share: the table on the device,
    the ONNX Runtime sessions, the engine, and the thread pool of the copy ceiling.

    Args:
        table: the full ``[V, D]`` table on the host.
        dtype: its graphbuild dtype.
        threads: thread count of every path (ONNX Runtime ``intra_op_num_threads``, torch's, the copy's).
        device: ``"cpu"`` or ``"cuda"``.
        engine_dirs: built engines of the same table by tp size (``bench_engine.build_engine``), to
            load; empty to leave the engines and the bare session out.
        use_torch: time ``torch.nn.functional.embedding`` when torch imports.
        spin: keep ONNX Runtime's default of spinning idle pool threads (off: they sleep).
    """

    def __init__(self, table: np.ndarray, dtype: dtypes.DType, threads: int, device: str, *, engine_dirs: dict[int, Path], use_torch: bool, spin: bool = False) -> None:
        self.spin = spin
        self.table = table
        self.dtype = dtype
        self.threads = threads
        self.device = device
        self.vocab, self.hidden = table.shape
        self.shard_rows = (self.vocab + 1) // 2
        self.skipped: dict[str, str] = {}  # label -> why the path is not timed
        self.table_buffer = Buffer(table, dtype, device)
        self.shard_buffer = self.table_buffer.prefix(self.shard_rows)  # shard 0 of 2, no copy
        self.providers = [CPU] if device == "cpu" else [CUDA, CPU]
        self.sessions = {
            "ort_gather": self._session("Gather", self.vocab),
            "tp_embedding": self._session(TP_EMBEDDING, self.vocab, vocab_size=self.vocab),
            "tp_embedding_shard": self._session(TP_EMBEDDING, self.shard_rows, vocab_size=self.vocab, vocab_start=0),
        }
        self.copy_session = self._session("Identity", 0) if device != "cpu" else None
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads - 1) if device == "cpu" and threads > 1 else None
        self.ceiling = bench_copy.CopyCeiling(table, threads, self.pool, PARALLEL_COPY_MIN_BYTES) if device == "cpu" else None
        self.engines = bench_engine.load_engines(engine_dirs, self.providers, threads, self.skipped)
        self.gather_run = self._gather_run_session() if engine_dirs else None
        self.torch = self._import_torch() if use_torch else None

    # ----------------------------------------------------------------------------- set-up
    def _session(self, op: str, rows: int, **attrs: int) -> Optional[ort.InferenceSession]:
        label = {"Gather": "ORT Gather", "Identity": "device copy"}.get(op, "TPEmbedding")
        try:
            options = session_options(needs_plugin=op == TP_EMBEDDING, intra_op_threads=self.threads)
            if not self.spin:
                # Idle pool threads sleep instead of spinning: with several sessions in one process
                # a spinning pool would take a core from the path timed next.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.device != "cpu":
                # Fail rather than quietly run the node on the CPU provider.
                options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            rows_dim = rows if op != "Identity" else "rows"
            model = lookup_model(op, rows_dim, self.hidden, self.dtype, **attrs)  # type: ignore[arg-type]
            return ort.InferenceSession(model, options, providers=self.providers)
        except Exception as exc:  # onnxruntime's own exception classes
            self.skipped[label] = f"ONNX Runtime cannot create the session: {' '.join(str(exc).split())[:200]}"
            return None

    def _gather_run_session(self) -> Optional[ort.InferenceSession]:
        try:
            options = session_options(needs_plugin=False, intra_op_threads=self.threads)
            if not self.spin:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return bench_engine.gather_session(self.table, self.dtype, options, self.providers)
        except Exception as exc:  # onnxruntime's own exception classes
            self.skipped["ORT Gather, session.run"] = f"ONNX Runtime cannot create the session: {' '.join(str(exc).split())[:200]}"
            return None

    def _import_torch(self) -> Any:
        try:
            import torch
        except ImportError:
            self.skipped["torch F.embedding"] = "torch is not installed"
            return None
        if self.device != "cpu" and not torch.cuda.is_available():
            self.skipped["torch F.embedding"] = "this torch has no CUDA device"
            return None
        return torch

    def close(self) -> None:
        """Releases sessions, device buffers, the engine and the pool."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.sessions.clear()
        self.engines.clear()
        self.gather_run = self.copy_session = self.torch = None

    # ----------------------------------------------------------------------------- paths
    def paths(self, id_sets: Sequence[np.ndarray]) -> list[TimedPath]:
        """Every available path for ``len(id_sets[0])`` tokens, copy ceiling first."""
        tokens = len(id_sets[0])
        if self.ceiling is not None:
            target = aligned_zeros((tokens, self.hidden), self.table.dtype)
            found = [*self.ceiling.paths(tokens, len(id_sets), target, TimedPath), self._numpy_path(id_sets)]
        else:
            found = [self._device_copy_path((tokens, self.hidden)), self._numpy_path(id_sets)]
        for key, label in _ORT_LABELS.items():
            session = self.sessions.get(key)
            if session is not None:
                found.append(self._ort_path(key, label, session, id_sets))
        found.extend(self.paths_of_engines(id_sets))
        if self.torch is not None:
            found.append(self._torch_path(id_sets))
        return [p for p in found if p is not None]

    def _device_copy_path(self, shape: tuple[int, int]) -> Optional[TimedPath]:
        torch = self.torch
        if torch is not None:
            src = torch.empty(shape, dtype=_torch_dtype(torch, self.dtype), device="cuda")
            dst = torch.empty_like(src)

            def torch_copy(_: int) -> None:
                dst.copy_(src)
                torch.cuda.synchronize()

            return TimedPath("copy", "copy (ceiling, torch d2d)", torch_copy, lambda i: None, None)
        try:
            import cupy
        except ImportError:
            cupy = None
        if cupy is not None:
            src_c = cupy.zeros(shape, dtype=storage_dtype(self.dtype))
            dst_c = cupy.empty_like(src_c)

            def cupy_copy(_: int) -> None:
                cupy.copyto(dst_c, src_c)
                cupy.cuda.runtime.deviceSynchronize()

            return TimedPath("copy", "copy (ceiling, cupy d2d)", cupy_copy, lambda i: None, None)
        if self.copy_session is None:
            return None
        # ONNX Runtime's Identity writing into a preallocated output of its own: a device-to-device
        # cudaMemcpy of the whole tensor on every run.
        source = Buffer.empty(shape, self.dtype, self.device)
        target = Buffer.empty(shape, self.dtype, self.device)
        binding = self.copy_session.io_binding()
        _bind(binding, "table", source, output=False)
        _bind(binding, "out", target, output=True)
        session = self.copy_session
        return TimedPath("copy", "copy (ceiling, ORT Identity d2d)", lambda i: session.run_with_iobinding(binding), lambda i: None, None)

    def _numpy_path(self, id_sets: Sequence[np.ndarray]) -> Optional[TimedPath]:
        if self.device != "cpu":
            return None
        table, count = self.table, len(id_sets)
        run = lambda i: np.take(table, id_sets[i % count], axis=0)  # noqa: E731
        return TimedPath("numpy_take", "numpy take", run, run, "full")

    def alternating_paths(self, id_sets: Sequence[np.ndarray]) -> list[TimedPath]:
        """ORT Gather and TPEmbedding over the full table for timing with their calls alternating
        (see ``measure_alternating``): Gather, TPEmbedding, then each again through a second session
        of the same model (the A/A controls: how far two identical lookups read apart), or just the
        first two when a second session cannot be created. All of them write into one output
        buffer: with one buffer each, where the buffers happened to lie moved each ratio by up to 5%
        at 16 float32 rows (which of two identical sessions read faster followed its buffer).
        Empty when either op has no session."""
        keys = ("ort_gather", "tp_embedding")
        if any(self.sessions.get(key) is None for key in keys):
            return []
        for key in keys:
            if f"{key}_control" not in self.sessions:
                op, attrs = ("Gather", {}) if key == "ort_gather" else (TP_EMBEDDING, {"vocab_size": self.vocab})
                self.sessions[f"{key}_control"] = self._session(op, self.vocab, **attrs)
        names = [*keys, *(f"{key}_control" for key in keys)]
        if any(self.sessions[name] is None for name in names):
            names = list(keys)
        out = Buffer.empty((len(id_sets[0]), self.hidden), self.dtype, self.device)
        paths = []
        for name in names:
            bound = _BoundLookup(self.sessions[name], self.table_buffer, id_sets, self.hidden, self.device, out=out)
            label = _ORT_LABELS[name.removesuffix("_control")] + (", second session" if name.endswith("_control") else "")
            paths.append(TimedPath(name, label, bound.run, bound.result, "full"))
        return paths

    def alternating_engine_paths(self, id_sets: Sequence[np.ndarray]) -> list[TimedPath]:
        """The bare ``session.run`` of ORT Gather and the default ``engine.run`` at tp 1, for timing
        with their calls alternating; empty when either is missing."""
        found = {p.key: p for p in self.paths_of_engines(id_sets)}
        return [found[k] for k in ("ort_gather_run", "engine_run")] if {"ort_gather_run", "engine_run"} <= set(found) else []

    def paths_of_engines(self, id_sets: Sequence[np.ndarray]) -> list[TimedPath]:
        """The bare session's path and the engines' paths (see ``bench_engine``)."""
        found = [bench_engine.session_path(self.gather_run, id_sets, self.dtype, TimedPath)]
        found.extend(bench_engine.engine_paths(self.engines, id_sets, self.hidden, self.dtype, self.device, TimedPath))
        return [p for p in found if p is not None]

    def _ort_path(self, key: str, label: str, session: ort.InferenceSession, id_sets: Sequence[np.ndarray]) -> TimedPath:
        table = self.shard_buffer if key == "tp_embedding_shard" else self.table_buffer
        bound = _BoundLookup(session, table, id_sets, self.hidden, self.device)
        return TimedPath(key, label, bound.run, bound.result, "shard" if key == "tp_embedding_shard" else "full")

    def _torch_path(self, id_sets: Sequence[np.ndarray]) -> TimedPath:
        torch = self.torch
        functional = torch.nn.functional
        torch.set_num_threads(self.threads)
        device = "cpu" if self.device == "cpu" else "cuda"
        host = np.ascontiguousarray(self.table)
        if self.dtype == dtypes.bfloat16:
            weight = torch.from_numpy(host.view(np.int16)).view(torch.bfloat16)
        else:
            weight = torch.from_numpy(host)
        weight = weight.to(device)
        ids = [torch.from_numpy(i).to(device) for i in id_sets]
        count = len(ids)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def run(i: int) -> Any:
            out = functional.embedding(ids[i % count], weight)
            sync()
            return out

        def result(i: int) -> np.ndarray:
            out = run(i).cpu()
            if self.dtype == dtypes.bfloat16:
                return out.view(torch.int16).numpy().view(self.dtype.numpy)
            return out.numpy()

        return TimedPath("torch_embedding", "torch F.embedding", run, result, "full")


class _BoundLookup:
    """A lookup session with one IO binding per id set, all writing into one preallocated output
    (its own, or ``out`` when given).

    Bindings hold raw addresses, so this object keeps every buffer they point into alive.
    """

    def __init__(self, session: ort.InferenceSession, table: Buffer, id_sets: Sequence[np.ndarray], hidden: int, device: str, out: Optional[Buffer] = None) -> None:
        self.session = session
        self.table = table
        self.out = out if out is not None else Buffer.empty((len(id_sets[0]), hidden), table.dtype, device)
        self.ids = [Buffer(ids, dtypes.int64, device) for ids in id_sets]
        self.bindings = []
        for id_buffer in self.ids:
            binding = session.io_binding()
            _bind(binding, "ids", id_buffer, output=False)
            _bind(binding, "table", table, output=False)
            _bind(binding, "out", self.out, output=True)
            self.bindings.append(binding)

    def run(self, i: int) -> None:
        self.session.run_with_iobinding(self.bindings[i % len(self.bindings)])

    def result(self, i: int) -> np.ndarray:
        self.run(i)
        return self.out.to_host()


def _torch_dtype(torch: Any, dtype: dtypes.DType) -> Any:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype.name]


def temporary_root() -> tempfile.TemporaryDirectory:
    """Where engines are written while the benchmark runs (removed afterwards)."""
    return tempfile.TemporaryDirectory(prefix="graphbuild-bench-")
