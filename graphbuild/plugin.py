"""Locates graphbuild's ONNX Runtime custom-op library inside the installed package.

The library is built from ``plugins/`` by CMake and installed as ``graphbuild/lib/``. Engines never
name native code: the runtime always loads the library that shipped with this package.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from graphbuild.errors import PluginNotFoundError

#: Domain and op type of graphbuild's custom operators in exported ONNX models.
DOMAIN = "graphbuild"
DOMAIN_VERSION = 1
TP_EMBEDDING = "TPEmbedding"

_LIB_STEM = "graphbuild_ortops"


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
