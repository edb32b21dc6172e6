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
import onnx

from graphbuild.engine.manifest import MANIFEST, TensorSpec, check_files, read_manifest, resolve_inside
from graphbuild.errors import EngineError, InputError
from graphbuild.plugin import DOMAIN, TP_EMBEDDING
from graphbuild.runtime.feeds import validate_feeds
from graphbuild.runtime.protocol import Executor, ExecutorFactory, ExecutorRequest
from graphbuild.runtime.schedule import Schedule

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


def _rank_files(manifest: Mapping[str, Any], schedule: Schedule, ranks: Sequence[int]) -> dict[str, Any]:
    """The manifest's ``files`` entries that ``ranks`` read: their segments and the files beside them."""
    folders = {str(Path(file).parent) for r in ranks for file in schedule.ranks[r].files}
    return {relpath: entry for relpath, entry in manifest["files"].items() if str(Path(relpath).parent) in folders}


def _check_segment_references(root: Path, manifest: Mapping[str, Any], files: Sequence[str]) -> None:
    """Every external-data location of the segments ``files`` must be a listed file inside the engine."""
    listed = set(manifest["files"])
    for file in files:
        model_path = resolve_inside(root, file, what="segment file")
        try:
            model = onnx.load(str(model_path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise EngineError(f"{model_path}: not a readable ONNX model ({type(exc).__name__}: {exc}); the engine is corrupt - rebuild it") from None
        folder = Path(file).parent.as_posix()
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            relpath = f"{folder}/{location}" if folder not in ("", ".") else location
            resolve_inside(root, relpath, what=f"external data of '{tensor.name}'", source=model_path)
            if relpath not in listed:
                raise EngineError(f"{model_path}: initializer '{tensor.name}' refers to '{location}', which the manifest does not list")


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

    def __init__(self, path: Path, manifest: Any, executor: Executor) -> None:
        self.path = path
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.tp_size: int = manifest["tp_size"]
        self.inputs = [TensorSpec.from_json(spec) for spec in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(spec) for spec in manifest["outputs"]]
        self._executor = executor
        self._output_names = {spec.name for spec in self.outputs}

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
        """
        root = Path(path)
        manifest = read_manifest(root)
        for op in manifest["custom_ops"]:
            key = (op.get("domain"), op.get("op_type"))
            if key not in PROVIDED_CUSTOM_OPS:
                raise EngineError(f"{root / MANIFEST}: the engine needs custom op {key[0]}::{key[1]}, which this graphbuild does not provide")
        if not isinstance(executor, str):
            if not isinstance(executor, Executor):
                raise EngineError(f"Engine.load: executor must be one of {sorted(EXECUTORS)} or an Executor, got {type(executor).__name__}")
            return cls(root, manifest, executor)
        factory = EXECUTORS.get(executor)
        if factory is None:
            raise EngineError(f"Engine.load: unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}")
        schedule = Schedule.from_manifest(manifest, root)

        def check_ranks(ranks: Sequence[int]) -> None:
            files = _rank_files(manifest, schedule, ranks)
            if verify:
                check_files(root, {**manifest, "files": files})
            _check_segment_references(root, manifest, [file for r in ranks for file in schedule.ranks[r].files])

        request = ExecutorRequest(root, manifest, schedule, list(providers) if providers is not None else None, intra_op_threads, check_ranks, dict(executor_options or {}))
        return cls(root, manifest, factory(request))

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

    def _feeds(self, feeds: Any) -> dict[str, np.ndarray]:
        """Validated feeds; an executor that shares feeds between processes (MPI) does it itself."""
        share = getattr(self._executor, "share_feeds", None)
        if share is not None:
            return share(feeds)
        return validate_feeds(self.inputs, feeds, f"engine '{self.name}'")

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"<Engine '{self.name}' tp_size={self.tp_size} at {self.path}: ({ins}) -> ({outs})>"
