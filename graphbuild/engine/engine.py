"""``Engine``: a built engine directory, loaded and ready to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from graphbuild.engine.manifest import MANIFEST, TensorSpec, check_files, read_manifest, resolve_inside
from graphbuild.errors import EngineError, InputError
from graphbuild.plugin import DOMAIN, TP_EMBEDDING
from graphbuild.runtime.executor import LocalExecutor
from graphbuild.runtime.ort_check import check_runtime
from graphbuild.runtime.feeds import validate_feeds

#: Custom ops this graphbuild's plugin library provides, as (domain, op_type).
PROVIDED_CUSTOM_OPS = {(DOMAIN, TP_EMBEDDING)}


def _check_segment_references(root: Path, manifest: Mapping[str, Any]) -> None:
    """Every external-data location of every segment must be a listed file inside the engine."""
    listed = set(manifest["files"])
    for rank in manifest["ranks"]:
        for step in rank["steps"]:
            if step["kind"] != "segment":
                continue
            model_path = resolve_inside(root, step["file"], what="segment file")
            try:
                model = onnx.load(str(model_path), load_external_data=False)
            except Exception as exc:  # protobuf's DecodeError and friends
                raise EngineError(f"{model_path}: not a readable ONNX model ({type(exc).__name__}: {exc}); the engine is corrupt - rebuild it") from None
            folder = Path(step["file"]).parent.as_posix()
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

    def __init__(self, path: Path, manifest: dict[str, Any], executor: LocalExecutor) -> None:
        self.path = path
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.tp_size: int = manifest["tp_size"]
        self.inputs = [TensorSpec.from_json(spec) for spec in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(spec) for spec in manifest["outputs"]]
        self._executor = executor

    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        *,
        providers: Optional[Sequence[str]] = None,
        verify: bool = True,
        intra_op_threads: Optional[int] = None,
    ) -> "Engine":
        """Opens an engine directory.

        Args:
            path: the directory ``gb.build`` wrote.
            providers: ONNX Runtime execution providers; default CUDA when present, else CPU.
            verify: check every file's size and sha256 against the manifest first.
            intra_op_threads: threads per ONNX Runtime session (default: its own choice).

        Raises:
            EngineError: missing, truncated, tampered or wrong-version engine; the message names
                the file.
        """
        check_runtime()
        root = Path(path)
        manifest = read_manifest(root)
        if verify:
            check_files(root, manifest)
        for op in manifest["custom_ops"]:
            key = (op.get("domain"), op.get("op_type"))
            if key not in PROVIDED_CUSTOM_OPS:
                raise EngineError(f"{root / MANIFEST}: the engine needs custom op {key[0]}::{key[1]}, which this graphbuild does not provide")
        _check_segment_references(root, manifest)
        executor = LocalExecutor(root, manifest, providers=providers, intra_op_threads=intra_op_threads)
        return cls(root, manifest, executor)

    def run(self, feeds: Mapping[str, Any], *, out: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Runs every rank in this process and returns the outputs (rank 0's) by name.

        The returned arrays belong to the caller: they are fresh copies (or the ``out`` arrays), never
        buffers a later call overwrites.

        Args:
            feeds: input name -> array (numpy arrays of the declared dtype, or lists).
            out: optional output name -> preallocated array of the output's exact shape and dtype;
                those outputs are written there (and returned) instead of into new arrays.

        Raises:
            InputError: feeds (or ``out``) do not match the engine's inputs (outputs); checked
                before anything runs.
            OutOfRangeIdError: an embedding id lies outside the vocabulary.
            ExecutionError: ONNX Runtime or a collective failed.
        """
        arrays = validate_feeds(self.inputs, feeds, f"engine '{self.name}'")
        if out is not None:
            unknown = sorted(set(out) - {spec.name for spec in self.outputs})
            if unknown:
                raise InputError(f"engine '{self.name}': out names unknown output(s) {unknown}; its outputs are {[s.name for s in self.outputs]}")
        return self._executor.run_all_ranks(arrays, out)[0]

    def run_all_ranks(self, feeds: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
        """Like ``run`` but returns every rank's outputs, in rank order."""
        arrays = validate_feeds(self.inputs, feeds, f"engine '{self.name}'")
        return self._executor.run_all_ranks(arrays)

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"<Engine '{self.name}' tp_size={self.tp_size} at {self.path}: ({ins}) -> ({outs})>"
