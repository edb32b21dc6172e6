"""Locates graphbuild's ONNX Runtime custom-op library inside the installed package.

The library is built from ``plugins/`` by CMake and installed as ``graphbuild/lib/``. Engines never
name native code: the runtime always loads the library that shipped with this package.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple, Optional

from graphbuild.errors import PluginNotFoundError

#: Domain and op type of graphbuild's custom operators in exported ONNX models.
DOMAIN = "graphbuild"
DOMAIN_VERSION = 1
TP_EMBEDDING = "TPEmbedding"

_LIB_STEM = "graphbuild_ortops"


# ---------------------------------------------------------------- the out-of-range error contract
# The plugin's kernels report an id outside the vocabulary as an INVALID_ARGUMENT status whose text
# is ``format_out_of_range(...)`` with ``op=TP_EMBEDDING`` (written by OutOfRangeStatus in
# plugins/src/tp_embedding_common.cc); the runtime reads it back with ``parse_out_of_range`` and
# re-raises it in the user-facing wording (``op="embedding"``), which the reference interpreter and
# the standard-op lowering use directly. Both directions live here, next to each other.


class OutOfRange(NamedTuple):
    """An out-of-range id as the plugin reports it."""

    node: str
    bad_id: int
    position: int
    vocab_size: int


_OUT_OF_RANGE = re.compile(
    r"(?P<op>\w+) '(?P<node>[^']*)': id (?P<id>-?\d+) at flat position (?P<pos>\d+) is outside the vocabulary \[0, (?P<vocab>\d+)\)"
)


def format_out_of_range(node: str, bad_id: int, position: int, vocab_size: int, *, op: str = "embedding") -> str:
    """The one wording of the out-of-range error.

    Args:
        node: the embedding node's name.
        bad_id: the offending id.
        position: its flat position in the ids tensor.
        vocab_size: the vocabulary size; valid ids are ``[0, vocab_size)``.
        op: ``"embedding"`` for the user-facing message, ``TP_EMBEDDING`` for the plugin's status text.
    """
    return f"{op} '{node}': id {bad_id} at flat position {position} is outside the vocabulary [0, {vocab_size})"


def parse_out_of_range(text: str, *, op: str = TP_EMBEDDING) -> Optional[OutOfRange]:
    """Finds ``format_out_of_range(..., op=op)`` in ``text`` (an ONNX Runtime error); None if absent."""
    for found in _OUT_OF_RANGE.finditer(text):
        if found["op"] == op:
            return OutOfRange(found["node"], int(found["id"]), int(found["pos"]), int(found["vocab"]))
    return None


def _library_filename() -> str:
    if sys.platform == "darwin":
        return f"lib{_LIB_STEM}.dylib"
    if sys.platform == "win32":
        return f"{_LIB_STEM}.dll"
    return f"lib{_LIB_STEM}.so"


def _candidate_dirs() -> list[Path]:
    import graphbuild

    dirs = [Path(p) / "lib" for p in getattr(graphbuild, "__path__", [])]
    dirs.append(Path(__file__).resolve().parent / "lib")
    return dirs


def library_path() -> Path:
    """Returns the path of the installed custom-op library, for registering it with ONNX Runtime.

    The installed ONNX Runtime is checked first (see ``graphbuild.runtime.ort_check``).

    Raises:
        PluginNotFoundError: the package was installed without its plugin library.
        RuntimeVersionError: the installed ONNX Runtime is older than graphbuild supports.
    """
    from graphbuild.runtime.ort_check import check_runtime  # imports onnxruntime: only when needed

    check_runtime()
    return _find_library()


@functools.cache
def _find_library() -> Path:
    name = _library_filename()
    for directory in _candidate_dirs():
        path = directory / name
        if path.is_file():
            return path
    searched = ", ".join(str(d) for d in _candidate_dirs())
    raise PluginNotFoundError(
        f"graphbuild's custom-op library {name} was not found (searched {searched}); "
        "reinstall the package with 'pip install .' so CMake builds plugins/, "
        "or build the engine with use_plugin=False to use standard ONNX ops only"
    )


@functools.cache
def plugin_info() -> dict:
    """Build facts recorded by CMake next to the library (for example whether CUDA kernels are in)."""
    info_path = _find_library().parent / "plugin_info.json"
    if not info_path.is_file():
        return {"cuda": False}
    return json.loads(info_path.read_text())
