"""The engine directory's manifest (``config.json``): reading, validating, and checking files.

An engine is a directory::

    config.json            the manifest (format, version, ranks, steps, checksums)
    rank0/segment0.onnx    rank 0's first segment
    rank0/segment0.onnx.data   its external data (weights over 1 MiB)
    rank1/...

Everything the manifest names must be a relative path inside the engine directory; loading never
reads outside it and never loads native code named by the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

from graphbuild import dtypes
from graphbuild.errors import EngineError
from graphbuild.ir.value import Shape, format_shape

MANIFEST = "config.json"
FORMAT = "graphbuild-engine"
FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """An engine input or output: name, dtype and (possibly symbolic) shape."""

    name: str
    dtype: dtypes.DType
    shape: Shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], dtypes.as_dtype(data["dtype"]), tuple(data["shape"]))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{format_shape(self.shape)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_inside(root: Path, relpath: str, *, what: str, source: Optional[Path] = None) -> Path:
    """``root / relpath`` after checking it is a plain relative path that stays inside ``root``.

    ``source`` is the file that holds the reference (the manifest unless given); errors name it.

    Raises:
        EngineError: absolute paths, ``..`` components, or symlinks leading outside ``root``.
    """
    source = source or root / MANIFEST
    pure = PurePosixPath(relpath)
    if not relpath or pure.is_absolute() or "\\" in relpath or any(part in ("..", "") for part in pure.parts):
        raise EngineError(f"{source}: {what} '{relpath}' is not a relative path inside the engine directory")
    path = root.joinpath(*pure.parts)
    real_root = root.resolve()
    try:
        path.resolve().relative_to(real_root)
    except ValueError:
        raise EngineError(f"{source}: {what} '{relpath}' leads outside the engine directory") from None
    return path


def _require(condition: bool, manifest_path: Path, message: str) -> None:
    if not condition:
        raise EngineError(f"{manifest_path}: {message}; the engine is corrupt or was written by another tool - rebuild it")


def validate_manifest(data: Any, manifest_path: Path) -> dict[str, Any]:
    """Checks the manifest's structure (not the files); returns it."""
    _require(isinstance(data, dict), manifest_path, "the manifest is not a JSON object")
    _require(data.get("format") == FORMAT, manifest_path, f"format is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineError(
            f"{manifest_path}: engine format version {version!r} is not supported by graphbuild "
            f"(this version reads format {FORMAT_VERSION}); rebuild the engine with this graphbuild"
        )
    for key, kind in (("name", str), ("tp_size", int), ("inputs", list), ("outputs", list), ("ranks", list), ("files", dict), ("custom_ops", list)):
        _require(isinstance(data.get(key), kind), manifest_path, f"'{key}' is missing or not a {kind.__name__}")
    _require(len(data["ranks"]) >= 1, manifest_path, "it lists no ranks")
    for spec in data["inputs"] + data["outputs"]:
        _require(isinstance(spec, dict) and {"name", "dtype", "shape"} <= spec.keys(), manifest_path, f"bad tensor spec {spec!r}")
    for rank in data["ranks"]:
        _require(isinstance(rank, dict) and isinstance(rank.get("steps"), list) and isinstance(rank.get("outputs"), dict), manifest_path, "a rank entry lacks 'steps' or 'outputs'")
        for step in rank["steps"]:
            kind = step.get("kind") if isinstance(step, dict) else None
            _require(kind in ("segment", "collective"), manifest_path, f"step {step!r} has an unknown kind")
            if kind == "segment":
                _require(isinstance(step.get("file"), str) and step["file"] in data["files"], manifest_path, f"segment file {step.get('file')!r} is not listed in 'files'")
    for relpath, entry in data["files"].items():
        _require(isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int), manifest_path, f"file entry for '{relpath}' lacks sha256/bytes")
    return data


def read_manifest(path: Union[str, Path]) -> dict[str, Any]:
    """Reads and validates ``config.json`` of the engine at ``path``.

    Raises:
        EngineError: the directory or manifest is missing, unreadable, not JSON, of another format
            version, or structurally wrong; the message names the file.
    """
    root = Path(path)
    if not root.is_dir():
        raise EngineError(f"engine directory '{root}' does not exist (build one with gb.build or 'graphbuild build')")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise EngineError(f"{manifest_path}: missing; '{root}' is not a graphbuild engine (or its build was interrupted)")
    try:
        text = manifest_path.read_text(encoding="utf-8")
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineError(f"{manifest_path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the engine is corrupt - rebuild it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"{manifest_path}: cannot be read: {exc}") from None
    validate_manifest(data, manifest_path)
    for relpath in data["files"]:
        resolve_inside(root, relpath, what="file")
    return data


def verify_files(path: Union[str, Path], manifest: Optional[dict[str, Any]] = None) -> list[tuple[str, str]]:
    """Checks every file the manifest lists; never raises for bad files.

    Returns:
        ``(relpath, status)`` pairs, status one of ``"ok"``, ``"missing"``, ``"size mismatch"``,
        ``"checksum mismatch"``, ``"outside engine"``.
    """
    root = Path(path)
    manifest = manifest if manifest is not None else read_manifest(root)
    report = []
    for relpath, entry in manifest["files"].items():
        try:
            file_path = resolve_inside(root, relpath, what="file")
        except EngineError:
            report.append((relpath, "outside engine"))
            continue
        if not file_path.is_file():
            status = "missing"
        elif file_path.stat().st_size != entry["bytes"]:
            status = "size mismatch"
        elif sha256_file(file_path) != entry["sha256"]:
            status = "checksum mismatch"
        else:
            status = "ok"
        report.append((relpath, status))
    return report


def check_files(path: Union[str, Path], manifest: dict[str, Any]) -> None:
    """Raises ``EngineError`` naming the first file that is missing, truncated or tampered with."""
    root = Path(path)
    for relpath, status in verify_files(root, manifest):
        if status != "ok":
            raise EngineError(f"{root / relpath}: {status} (the manifest records its size and sha256); the engine is corrupt - rebuild it")
