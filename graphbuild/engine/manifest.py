"""The engine directory's manifest (``config.json``) as typed dataclasses, and its validation.

An engine is a directory::

    config.json            the manifest (format, version, ranks, steps, checksums)
    rank0/segment0.onnx    rank 0's first segment
    rank0/segment0.onnx.data   its external data (weights over 1 MiB)
    rank1/...

``Manifest.from_json`` checks every field of the parsed JSON (types, required keys, references
between steps, ranks and files) and raises ``EngineError`` naming the field's path, e.g.
``config.json: ranks[1].steps[0]: missing 'input'``; ``to_json`` gives back plain JSON data. The
build produces a ``Manifest``; the executors, ``graphbuild inspect`` and the CLI read it through
these classes, never by string key. Reading the file safely is ``graphbuild.engine.files``' job.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath
from typing import Any, Callable, Optional, TypeVar, Union

from graphbuild import dtypes
from graphbuild.errors import EngineError
from graphbuild.ir.value import Shape, format_shape

MANIFEST = "config.json"
FORMAT = "graphbuild-engine"
FORMAT_VERSION = 1
#: Collective ops an engine may name; anything else is refused at load.
COLLECTIVE_OPS = ("allreduce", "allgather")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_T = TypeVar("_T")


class _Where:
    """A position inside the manifest (``ranks[1].steps[0]``) for error messages."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source = source
        self.path = path

    def __truediv__(self, part: Union[str, int]) -> "_Where":
        step = f"[{part}]" if isinstance(part, int) else (f".{part}" if self.path else part)
        return _Where(self.source, self.path + step)

    def fail(self, message: str) -> EngineError:
        where = f"{self.source}: {self.path}: " if self.path else f"{self.source}: "
        return EngineError(f"{where}{message}; the engine is corrupt or was written by another tool - rebuild it")


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _obj(value: Any, where: _Where) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.fail(f"expected an object, got {_type_name(value)}")
    return value


def _get(data: dict[str, Any], key: str, kind: type, where: _Where, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise where.fail(f"missing '{key}'")
        return default
    value = data[key]
    if not _is(value, kind):
        raise (where / key).fail(f"expected {_type_name(kind())}, got {_type_name(value)} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _list(data: dict[str, Any], key: str, where: _Where, parse: Callable[[Any, _Where], _T], default: Any = ...) -> tuple[_T, ...]:
    items = _get(data, key, list, where, default)
    return tuple(parse(item, where / key / i) for i, item in enumerate(items))


def _name(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.fail(f"expected a non-empty name, got {_type_name(value)} {_short(value)}")
    return value


def _non_negative(value: Any, where: _Where) -> int:
    if not _is(value, int) or value < 0:
        raise where.fail(f"expected a non-negative integer, got {_short(value)}")
    return value


def _counts(data: dict[str, Any], key: str, where: _Where) -> dict[str, int]:
    table = _get(data, key, dict, where, {})
    return {name: _non_negative(count, where / key / name) for name, count in table.items()}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """An engine input or output: name, dtype and (possibly symbolic) shape."""

    name: str
    dtype: dtypes.DType
    shape: Shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Any, where: Optional[_Where] = None) -> "TensorSpec":
        where = where or _Where(MANIFEST)
        data = _obj(data, where)
        name = _name(_get(data, "name", str, where), where / "name")
        dtype_name = _get(data, "dtype", str, where)
        try:
            dtype = dtypes.as_dtype(dtype_name)
        except Exception:  # as_dtype's own error type; the message below names the field
            raise (where / "dtype").fail(f"unknown dtype {dtype_name!r}") from None
        shape = []
        for i, dim in enumerate(_get(data, "shape", list, where)):
            if not ((_is(dim, int) and dim >= 0) or (isinstance(dim, str) and dim)):
                raise (where / "shape" / i).fail(f"a dimension is a non-negative integer or a symbol name, got {_short(dim)}")
            shape.append(dim)
        return cls(name, dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{format_shape(self.shape)}"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """A file of the engine: its size in bytes and its sha256 (hex)."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.size}

    @classmethod
    def from_json(cls, data: Any, where: _Where) -> "FileEntry":
        data = _obj(data, where)
        digest = _get(data, "sha256", str, where)
        if not _SHA256.fullmatch(digest):
            raise (where / "sha256").fail("expected 64 lowercase hex digits")
        return cls(_non_negative(_get(data, "bytes", int, where), where / "bytes"), digest)


@dataclasses.dataclass(frozen=True)
class RangeCheck:
    """A check output of a segment: ``[first bad flat position, its id, size]`` of an id lookup."""

    tensor: str
    node: str
    vocab_size: int
    kind: str = "ids_in_vocab"

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "kind": self.kind, "node": self.node, "vocab_size": self.vocab_size}

    @classmethod
    def from_json(cls, data: Any, where: _Where) -> "RangeCheck":
        data = _obj(data, where)
        kind = _get(data, "kind", str, where, "ids_in_vocab")
        if kind != "ids_in_vocab":
            raise (where / "kind").fail(f"unknown check kind {kind!r}")
        vocab = _non_negative(_get(data, "vocab_size", int, where), where / "vocab_size")
        return cls(_name(_get(data, "tensor", str, where), where / "tensor"), _get(data, "node", str, where), vocab, kind)


@dataclasses.dataclass(frozen=True)
class SegmentStep:
    """A rank's step that runs one ONNX file: the tensors it reads and writes, its range checks."""

    index: int
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    checks: tuple[RangeCheck, ...] = ()
    onnx_nodes: int = 0
    ops: dict[str, int] = dataclasses.field(default_factory=dict)

    kind = "segment"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "file": self.file,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "checks": [check.to_json() for check in self.checks],
            "onnx_nodes": self.onnx_nodes,
            "ops": dict(self.ops),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: _Where) -> "SegmentStep":
        return cls(
            index=_non_negative(_get(data, "index", int, where), where / "index"),
            file=_get(data, "file", str, where),
            inputs=_list(data, "inputs", where, _name),
            outputs=_list(data, "outputs", where, _name),
            checks=_list(data, "checks", where, RangeCheck.from_json, []),
            onnx_nodes=_non_negative(_get(data, "onnx_nodes", int, where, 0), where / "onnx_nodes"),
            ops=_counts(data, "ops", where),
        )


@dataclasses.dataclass(frozen=True)
class CollectiveStep:
    """A rank's step that combines one tensor across ``group`` (all-reduce or all-gather)."""

    op: str
    name: str
    instance_id: int
    group: tuple[int, ...]
    input: str
    output: str
    workspace: Optional[str] = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind = "collective"

    @property
    def axis(self) -> int:
        """The gathered axis of an all-gather (may be negative)."""
        return int(self.attrs.get("axis", -1))

    def describe(self) -> str:
        return f"{self.op} '{self.name}'"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "op": self.op,
            "name": self.name,
            "instance_id": self.instance_id,
            "group": list(self.group),
            "input": self.input,
            "workspace": self.workspace,
            "output": self.output,
            "attrs": dict(self.attrs),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: _Where) -> "CollectiveStep":
        op = _get(data, "op", str, where)
        if op not in COLLECTIVE_OPS:
            raise (where / "op").fail(f"unknown collective {op!r} (known: {', '.join(COLLECTIVE_OPS)})")
        group = _list(data, "group", where, _non_negative)
        if not group or len(set(group)) != len(group):
            raise (where / "group").fail(f"expected distinct rank numbers, got {list(group)}")
        workspace = data.get("workspace")
        if workspace is not None:
            workspace = _name(workspace, where / "workspace")
        attrs = _get(data, "attrs", dict, where, {})
        if op == "allgather" and not _is(attrs.get("axis", -1), int):
            raise (where / "attrs" / "axis").fail(f"expected an integer, got {_short(attrs.get('axis'))}")
        return cls(
            op=op,
            name=_get(data, "name", str, where),
            instance_id=_get(data, "instance_id", int, where),
            group=group,
            input=_name(_get(data, "input", str, where), where / "input"),
            output=_name(_get(data, "output", str, where), where / "output"),
            workspace=workspace,
            attrs=attrs,
        )


Step = Union[SegmentStep, CollectiveStep]


def _step(data: Any, where: _Where) -> Step:
    data = _obj(data, where)
    kind = _get(data, "kind", str, where)
    if kind == "segment":
        return SegmentStep.from_json(data, where)
    if kind == "collective":
        return CollectiveStep.from_json(data, where)
    raise (where / "kind").fail(f"unknown step kind {kind!r} (expected 'segment' or 'collective')")


@dataclasses.dataclass(frozen=True)
class RankPlan:
    """What one rank runs: its ordered steps and which tensor holds each engine output."""

    rank: int
    steps: tuple[Step, ...]
    outputs: dict[str, str]
    weight_bytes: int = 0
    ops: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def segments(self) -> list[SegmentStep]:
        return [step for step in self.steps if isinstance(step, SegmentStep)]

    @property
    def collectives(self) -> list[CollectiveStep]:
        return [step for step in self.steps if isinstance(step, CollectiveStep)]

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "weight_bytes": self.weight_bytes,
            "ops": dict(self.ops),
            "steps": [step.to_json() for step in self.steps],
            "outputs": dict(self.outputs),
        }

    @classmethod
    def from_json(cls, data: Any, where: _Where) -> "RankPlan":
        data = _obj(data, where)
        outputs = _get(data, "outputs", dict, where)
        return cls(
            rank=_non_negative(_get(data, "rank", int, where), where / "rank"),
            steps=_list(data, "steps", where, _step),
            outputs={name: _name(tensor, where / "outputs" / name) for name, tensor in outputs.items()},
            weight_bytes=_non_negative(_get(data, "weight_bytes", int, where, 0), where / "weight_bytes"),
            ops=_counts(data, "ops", where),
        )


@dataclasses.dataclass(frozen=True)
class CustomOp:
    """A custom op an engine needs from graphbuild's plugin library."""

    domain: str
    op_type: str
    since_version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "op_type": self.op_type, "since_version": self.since_version}

    @classmethod
    def from_json(cls, data: Any, where: _Where) -> "CustomOp":
        data = _obj(data, where)
        return cls(_get(data, "domain", str, where), _get(data, "op_type", str, where), _get(data, "since_version", int, where, 1))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A whole ``config.json``.

    Attributes:
        name: the network's name.
        tp_size: number of tensor-parallel ranks (``len(ranks)``).
        tp_group: the ranks' numbers in the world.
        inputs: engine inputs, in order.
        outputs: engine outputs, in order.
        ranks: one plan per rank, in rank order.
        files: relative path -> size and checksum of every file the engine reads besides the manifest.
        custom_ops: custom ops the segments use.
        use_plugin: whether embeddings were lowered to the plugin's ``TPEmbedding``.
        opset: the standard ONNX opset of the segments.
        graphbuild_version: the graphbuild that wrote it.
        format_version: ``FORMAT_VERSION`` when read by this graphbuild.
    """

    name: str
    tp_size: int
    tp_group: tuple[int, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ranks: tuple[RankPlan, ...]
    files: dict[str, FileEntry] = dataclasses.field(default_factory=dict)
    custom_ops: tuple[CustomOp, ...] = ()
    use_plugin: bool = True
    opset: Optional[int] = None
    graphbuild_version: str = "?"
    format_version: int = FORMAT_VERSION

    @property
    def format(self) -> str:
        return FORMAT

    def with_files(self, files: dict[str, FileEntry]) -> "Manifest":
        """A copy with ``files`` as its file table (the writer adds it last)."""
        return dataclasses.replace(self, files=dict(files))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "graphbuild_version": self.graphbuild_version,
            "name": self.name,
            "tp_size": self.tp_size,
            "tp_group": list(self.tp_group),
            "use_plugin": self.use_plugin,
            "opset": self.opset,
            "custom_ops": [op.to_json() for op in self.custom_ops],
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "ranks": [rank.to_json() for rank in self.ranks],
            "files": {relpath: entry.to_json() for relpath, entry in self.files.items()},
        }

    @classmethod
    def from_json(cls, data: Any, source: str = MANIFEST) -> "Manifest":
        """Validates parsed ``config.json`` data and builds the manifest.

        Args:
            data: what ``json.loads`` gave.
            source: the file named in error messages.

        Raises:
            EngineError: another format or format version (naming both versions), a missing or
                mistyped field, or references that do not resolve; the message names the field.
        """
        where = _Where(source)
        data = _obj(data, where)
        check_format(data, source)
        files = _get(data, "files", dict, where)
        manifest = cls(
            name=_get(data, "name", str, where),
            tp_size=_get(data, "tp_size", int, where),
            tp_group=_list(data, "tp_group", where, _non_negative, None) if data.get("tp_group") is not None else (),
            inputs=_list(data, "inputs", where, TensorSpec.from_json),
            outputs=_list(data, "outputs", where, TensorSpec.from_json),
            ranks=_list(data, "ranks", where, RankPlan.from_json),
            files={_relpath(relpath, where / "files"): FileEntry.from_json(entry, where / "files" / relpath) for relpath, entry in files.items()},
            custom_ops=_list(data, "custom_ops", where, CustomOp.from_json),
            use_plugin=_get(data, "use_plugin", bool, where, True),
            opset=_get(data, "opset", int, where, None) if data.get("opset") is not None else None,
            graphbuild_version=_get(data, "graphbuild_version", str, where, "?"),
        )
        if not manifest.tp_group:
            manifest = dataclasses.replace(manifest, tp_group=tuple(range(manifest.tp_size)))
        from graphbuild.engine.schedule_check import check_references

        check_references(manifest, where)
        return manifest


def check_format(data: dict[str, Any], source: str = MANIFEST) -> None:
    """Raises ``EngineError`` unless ``data`` declares graphbuild's engine format in this version."""
    where = _Where(source)
    if data.get("format") != FORMAT:
        raise where.fail(f"format is {_short(data.get('format'))}, expected {FORMAT!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION or not _is(version, int):
        raise EngineError(
            f"{source}: engine format version {_short(version)} is not supported by this graphbuild, which "
            f"reads format version {FORMAT_VERSION}; rebuild the engine with this graphbuild"
        )


def _relpath(relpath: str, where: _Where) -> str:
    pure = PurePosixPath(relpath)
    if not relpath or pure.is_absolute() or "\\" in relpath or "\0" in relpath or any(part in ("..", ".", "") for part in relpath.split("/")):
        raise (where / relpath).fail("not a relative path inside the engine directory")
    if relpath == MANIFEST:
        raise (where / relpath).fail("the manifest cannot list itself")
    return relpath
