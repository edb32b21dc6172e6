"""The index of a safetensors checkpoint: ``read_header`` checks one file's header, and
``ParameterStore`` indexes a file, a directory of files, or a Hugging Face
``*.safetensors.index.json``, and reads tensors through memory maps of their byte ranges.

Reading through the header's byte offsets (rather than the ``safetensors`` package's numpy API)
treats every dtype alike, bfloat16 included (as ``ml_dtypes.bfloat16``, which plain numpy lacks),
and copies nothing until a rank takes its slice.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence, Union

import ml_dtypes
import numpy as np

from graphbuild.errors import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]

# safetensors dtype codes -> numpy dtypes (little-endian, as the format stores them).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
_FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_HEADER_LIMIT = 100 << 20  # the format caps the JSON header at 100 MB
INDEX_SUFFIX = ".safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """Where one checkpoint tensor lives.

    Attributes:
        name: the tensor's name in the checkpoint.
        dtype: its safetensors dtype code (``"F32"``, ``"BF16"``, ...).
        shape: its shape.
        file: the ``.safetensors`` file holding it.
        begin: absolute byte offset of its data in ``file``.
        end: end of its data (exclusive).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int
    end: int

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_CODES

    def describe(self) -> str:
        return f"'{self.name}' ({self.dtype} {list(self.shape)}) in {self.file}"


def _header_error(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}; the file is truncated or not a safetensors file")


def read_header(path: PathLike) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parses and checks the header of one ``.safetensors`` file.

    Args:
        path: the file.

    Returns:
        ``(entries, metadata)``: every tensor by name, and the header's ``__metadata__``.

    Raises:
        CheckpointError: the file cannot be read, its header is malformed, a tensor's dtype is
            unknown, its byte range does not match its shape, or the data runs past the end of the
            file (truncated); the message names the file and the tensor.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise _header_error(path, f"{size} bytes, too short for the 8-byte header length")
            length = int.from_bytes(prefix, "little")
            if length > min(size - 8, _HEADER_LIMIT):
                raise _header_error(path, f"header length {length} runs past the end of the file ({size} bytes)")
            raw = stream.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _header_error(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _header_error(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    entries: dict[str, TensorEntry] = {}
    for name, spec in header.items():
        what = f"tensor '{name}'"
        try:
            code, shape, (begin, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise _header_error(path, f"{what} has a malformed entry {spec!r}") from None
        if code not in DTYPES:
            raise CheckpointError(f"{path}: {what} has dtype {code!r}, which graphbuild cannot read (known: {', '.join(DTYPES)})")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(isinstance(o, int) for o in (begin, end)):
            raise _header_error(path, f"{what} has a malformed shape or data_offsets {spec!r}")
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        if not 0 <= begin <= end or end - begin != nbytes:
            raise _header_error(path, f"{what} ({code} {list(shape)}, {nbytes} bytes) has data_offsets [{begin}, {end}]")
        if base + end > size:
            raise _header_error(
                path, f"{what} ({code} {list(shape)}) needs bytes [{base + begin}, {base + end}) but the file has {size} bytes"
            )
        entries[name] = TensorEntry(name, code, shape, path, base + begin, base + end)
    return entries, {str(k): str(v) for k, v in dict(metadata).items()}


def _index_entry(index: Path, name: str, filename: object) -> str:
    """The file name an index gives for tensor ``name``, checked to lie inside the index's folder.

    The check is on the name as written (absolute, or with a ``..`` component, is refused); links
    inside the folder are followed, as Hugging Face's cache links snapshot files to its blobs.
    """
    if not isinstance(filename, str) or not filename:
        raise CheckpointError(f"{index}: maps tensor '{name}' to {filename!r}, which is not a file name")
    pure = PurePosixPath(filename.replace("\\", "/"))
    if pure.is_absolute() or PureWindowsPath(filename).drive or ".." in pure.parts:
        raise CheckpointError(
            f"{index}: maps tensor '{name}' to file '{filename}', outside the checkpoint directory "
            f"{index.parent}; an index may only name files in its own directory (or below it)"
        )
    return filename


class ParameterStore:
    """An index of the tensors of a safetensors checkpoint, read on demand through memory maps.

    Args:
        source: a ``.safetensors`` file; a ``*.safetensors.index.json`` (Hugging Face sharded
            checkpoint: ``{"weight_map": {tensor name: file name}}``); or a directory holding
            exactly one such index, or else one or more ``.safetensors`` files.

    Attributes:
        source: the path given.
        files: the ``.safetensors`` files indexed.
        metadata: the ``__metadata__`` of every file, merged.
        reads: how many tensors were read so far (each ``read`` counts one).

    Raises:
        CheckpointError: the source does not exist, holds no checkpoint, a file is unreadable or
            truncated, a tensor appears in two files, or the index names a tensor its file lacks.
    """

    def __init__(self, source: PathLike) -> None:
        self.source = Path(source)
        self.metadata: dict[str, str] = {}
        self.reads = 0
        self._entries: dict[str, TensorEntry] = {}
        if self.source.is_dir():
            indexes = sorted(self.source.glob("*" + INDEX_SUFFIX))
            if len(indexes) > 1:
                names = ", ".join(p.name for p in indexes)
                raise CheckpointError(f"{self.source}: holds several checkpoint indexes ({names}); pass the one to load")
            if indexes:
                self._index_json(indexes[0])
            else:
                files = sorted(self.source.glob("*.safetensors"))
                if not files:
                    raise CheckpointError(f"{self.source}: no .safetensors files or {INDEX_SUFFIX} in this directory")
                self._index_files(files)
        elif self.source.name.endswith(".json"):
            self._index_json(self.source)
        elif self.source.exists():
            self._index_files([self.source])
        else:
            raise CheckpointError(f"{self.source}: checkpoint not found (no such file or directory)")
        self.files: tuple[Path, ...] = tuple(dict.fromkeys(e.file for e in self._entries.values()))

    def _index_files(self, files: Sequence[Path]) -> None:
        for path in files:
            entries, metadata = read_header(path)
            for name, entry in entries.items():
                if name in self._entries:
                    raise CheckpointError(f"tensor '{name}' is in both {self._entries[name].file} and {path}")
                self._entries[name] = entry
            self.metadata.update(metadata)

    def _index_json(self, index: Path) -> None:
        try:
            content = json.loads(index.read_text(encoding="utf-8"))
            weight_map = content["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except OSError as exc:
            raise CheckpointError(f"{index}: cannot read checkpoint index: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' object ({exc})") from None
        by_file: dict[str, list[str]] = {}
        for name, filename in weight_map.items():
            by_file.setdefault(_index_entry(index, name, filename), []).append(name)
        for filename, names in by_file.items():
            path = index.parent / filename
            if not path.is_file():
                raise CheckpointError(f"{index}: names file '{filename}' for tensor '{names[0]}', but {path} does not exist")
            entries, metadata = read_header(path)
            for name in names:
                if name not in entries:
                    raise CheckpointError(f"{index}: maps tensor '{name}' to {path}, which has no such tensor")
                self._entries[name] = entries[name]
            self.metadata.update(metadata)

    # ------------------------------------------------------------------------- lookup
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def keys(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._entries)

    def entry(self, name: str) -> TensorEntry:
        """Where tensor ``name`` lives.

        Raises:
            CheckpointError: no such tensor; the message suggests close names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"tensor '{name}' not found in {self.describe()}{self.suggest(name)}") from None

    def describe(self) -> str:
        """The checkpoint in words: its path, and its file count when sharded."""
        return str(self.source) if len(self.files) <= 1 else f"{self.source} ({len(self.files)} files)"

    def suggest(self, name: str) -> str:
        """``"; did you mean 'x'?"`` for the closest tensor names, or ``""``."""
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.75)
        return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close else ""

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a read-only array backed by a memory map of its file.

        Nothing is copied until the array is used; ``np.array(...)`` of a slice copies that slice.

        Raises:
            CheckpointError: no such tensor, or the file cannot be mapped (it changed since it was
                indexed, or is unreadable).
        """
        entry = self.entry(name)
        dtype = DTYPES[entry.dtype]
        self.reads += 1
        if entry.end == entry.begin:
            return np.zeros(entry.shape, dtype=dtype)
        try:
            data = np.memmap(entry.file, dtype=np.uint8, mode="r", offset=entry.begin, shape=(entry.end - entry.begin,))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{entry.file}: cannot read tensor '{name}' (bytes [{entry.begin}, {entry.end})): {exc}") from None
        return data.view(dtype).reshape(entry.shape)

    def __repr__(self) -> str:
        return f"ParameterStore({str(self.source)!r}, tensors={len(self)}, files={len(self.files)})"
