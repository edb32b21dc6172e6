"""``Engine``: a built engine directory, loaded and ready to run, and the executors that run it.

``EXECUTORS`` maps an executor's name to its factory (``factory(ExecutorRequest) -> Executor``):
``"local"`` (every rank in this process, the default) and ``"mpi"`` (one rank per MPI process,
imported only when asked for). Registering another is one entry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from graphbuild.engine.consistency import check_segments
from graphbuild.engine.files import PinnedEngineDir, check_files, load_pinned, read_manifest
from graphbuild.engine.manifest import MANIFEST, Manifest
from graphbuild.engine.path_limits import check_path_limits
from graphbuild.errors import EngineError, InputError
from graphbuild.plugin import DOMAIN, TP_EMBEDDING
from graphbuild.runtime.feeds import FeedValidator
from graphbuild.runtime.ort_check import check_runtime
from graphbuild.runtime.protocol import Executor, ExecutorFactory, ExecutorRequest
from graphbuild.runtime.schedule import Schedule
from graphbuild.runtime.session import check_providers, check_threads

#: Custom ops this graphbuild's plugin library provides, as (domain, op_type).
PROVIDED_CUSTOM_OPS = {(DOMAIN, TP_EMBEDDING)}


def _lazy(target: str) -> ExecutorFactory:
    """A factory that imports ``module:attribute`` on first use (so mpi4py loads only for MPI)."""

    def factory(request: ExecutorRequest) -> Executor:
        module, attributes = target.split(":")
        found: Any = importlib.import_module(module)
        for attribute in attributes.split("."):
            found = getattr(found, attribute)
        return found(request)

    return factory


#: Executor name -> factory. ``Engine.load(executor=NAME)`` picks one.
EXECUTORS: dict[str, ExecutorFactory] = {
    "local": _lazy("graphbuild.runtime.executor:LocalExecutor.open"),
    "mpi": _lazy("graphbuild.runtime.mpi_executor:MPIExecutor.open"),
}


def _rank_files(manifest: Manifest, ranks: Sequence[int]) -> dict[str, Any]:
    """The manifest's ``files`` entries that ``ranks`` read: their segments and the files beside them."""
    folders = {str(Path(step.file).parent) for r in ranks for step in manifest.ranks[r].segments}
    return {relpath: entry for relpath, entry in manifest.files.items() if str(Path(relpath).parent) in folders}


class Engine:
    """A compiled engine: per-rank ONNX segments, run by ONNX Runtime.

    Build one with ``gb.build`` and reopen it with ``Engine.load``.

    Attributes:
        path: the engine directory.
        manifest: the parsed ``config.json``.
        name: the network's name.
        tp_size: number of tensor-parallel ranks.
        inputs: input specs (name, dtype, shape) in order.
        outputs: output specs in order.
    """

    def __init__(self, path: Path, manifest: Manifest, executor: Executor) -> None:
        self.path = path
        self.manifest = manifest
        self.name: str = manifest.name
        self.tp_size: int = manifest.tp_size
        self.inputs = list(manifest.inputs)
        self.outputs = list(manifest.outputs)
        self._executor = executor
        self._output_names = {spec.name for spec in self.outputs}
        # An executor that shares feeds between processes (MPI) validates them itself.
        self._feeds = getattr(executor, "share_feeds", None) or FeedValidator(self.inputs, f"engine '{self.name}'")

    @property
    def executor(self) -> Executor:
        """The executor that runs this engine's schedule."""
        return self._executor

    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        *,
        executor: Union[str, Executor] = "local",
        providers: Optional[Sequence[str]] = None,
        verify: bool = True,
        intra_op_threads: Optional[int] = None,
        executor_options: Optional[Mapping[str, Any]] = None,
    ) -> "Engine":
        """Opens an engine directory.

        Args:
            path: the directory ``gb.build`` wrote.
            executor: ``"local"`` (every rank in this process), ``"mpi"`` (this MPI process's rank;
                start the script with ``mpiexec``), another name in ``EXECUTORS``, or a ready
                ``Executor`` (then ``providers`` and ``intra_op_threads`` are its own business).
            providers: ONNX Runtime execution providers; default CUDA when present, else CPU.
            verify: check the size and sha256 of every file the executor opens first.
            intra_op_threads: threads per ONNX Runtime session (default: its own choice).
            executor_options: options of the named executor (the MPI executor's ``replicas``,
                ``world_ranks``, ``comm``: see docs/mpi.md).

        Raises:
            EngineError: missing, truncated, tampered or wrong-version engine; the message names
                the file. An unknown executor name.
            ConfigurationError: bad ``providers`` or ``intra_op_threads`` (or the environment
                variables ``GRAPHBUILD_PROVIDERS``, ``GRAPHBUILD_ORT_LOG_SEVERITY``), checked first.
        """
        check_runtime()
        check_path_limits(path)
        root = Path(path)
        providers = check_providers(providers) if isinstance(executor, str) else providers
        intra_op_threads = check_threads(intra_op_threads)
        if not isinstance(executor, str) and not isinstance(executor, Executor):
            raise EngineError(f"Engine.load: executor must be one of {sorted(EXECUTORS)} or an Executor, got {type(executor).__name__}")
        factory = EXECUTORS.get(executor) if isinstance(executor, str) else None
        if isinstance(executor, str) and factory is None:
            raise EngineError(f"Engine.load: unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}")

        def load_from(pin: PinnedEngineDir) -> "Engine":  # every file is read through the pinned directory
            manifest = read_manifest(pin)
            for op in manifest.custom_ops:
                if (op.domain, op.op_type) not in PROVIDED_CUSTOM_OPS:
                    raise EngineError(f"{root / MANIFEST}: the engine needs custom op {op.domain}::{op.op_type}, which this graphbuild does not provide")
            if factory is None:
                return cls(root, manifest, executor)  # type: ignore[arg-type]

            def check_ranks(ranks: Sequence[int]) -> None:
                check_files(pin, manifest.with_files(_rank_files(manifest, ranks)), checksums=verify)
                check_segments(pin, manifest, ranks)

            schedule = Schedule.from_manifest(manifest)
            request = ExecutorRequest(pin.root, manifest, schedule, providers, intra_op_threads, check_ranks, dict(executor_options or {}))
            return cls(root, manifest, factory(request))

        return load_pinned(root, load_from)

    def run(self, feeds: Mapping[str, Any], *, out: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Runs the engine and returns the outputs by name (rank 0's with the local executor, this
        process's rank's with the MPI executor).

        The returned arrays belong to the caller: distinct from each other and never overwritten by
        a later call (or the ``out`` arrays).

        Args:
            feeds: input name -> array (numpy arrays of the declared dtype, or lists).
            out: optional output name -> preallocated array of the output's exact shape and dtype;
                those outputs are written there (and returned) instead of into new arrays. On
                error they are left as they were.

        Raises:
            InputError: feeds (or ``out``) do not match the engine's inputs (outputs); checked
                before anything runs.
            OutOfRangeIdError: an embedding id lies outside the vocabulary.
            ExecutionError: ONNX Runtime or a collective failed.
        """
        arrays = self._feeds(feeds)
        if out is not None:
            unknown = sorted(set(out) - self._output_names)
            if unknown:
                raise InputError(f"engine '{self.name}': out names unknown output(s) {unknown}; its outputs are {[s.name for s in self.outputs]}")
        return self._executor.run(arrays, out)

    def run_all_ranks(self, feeds: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
        """Like ``run`` but returns every rank's outputs, in rank order."""
        return self._executor.run_all_ranks(self._feeds(feeds))

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"<Engine '{self.name}' tp_size={self.tp_size} at {self.path}: ({ins}) -> ({outs})>"
