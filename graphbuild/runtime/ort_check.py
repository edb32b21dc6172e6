"""Which ONNX Runtime graphbuild runs on: the supported range, the check made before an engine
loads or the custom-op library is registered, and the one behaviour of supported releases that
differs and is bridged here.

- ``check_runtime`` raises ``RuntimeVersionError`` when the imported ``onnxruntime`` is older than
  ``MIN_ORT_VERSION``, and warns once per process when more than one installed distribution
  provides the ``onnxruntime`` module (``onnxruntime`` beside ``onnxruntime-gpu``: they write the
  same files, and whichever was installed last silently wins, usually the CPU-only one).
- ``detached_outputs`` reads an IO binding's outputs as values of their own. Before ONNX Runtime
  1.30, ``IOBinding.get_outputs()`` returns views into the binding's own output list, which
  ``clear_binding_outputs()`` frees: reading them afterwards gives garbage or a crash.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import warnings
from typing import Optional

import onnxruntime as ort

from graphbuild.errors import RuntimeVersionError

#: The oldest ONNX Runtime release graphbuild supports (both ``onnxruntime`` and
#: ``onnxruntime-gpu``); pyproject.toml's dependency floor says the same.
MIN_ORT_VERSION = (1, 20, 0)

_MODULE_FILE = "onnxruntime/__init__.py"


class RuntimeInstallWarning(UserWarning):
    """More than one installed distribution provides the ``onnxruntime`` module."""


def parse_version(text: str) -> Optional[tuple[int, int, int]]:
    """``(major, minor, patch)`` from a version string such as ``1.23.2`` or ``1.31.1+cu130``.

    Returns:
        None when the text does not start with ``MAJOR.MINOR``.
    """
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def format_version(version: tuple[int, ...]) -> str:
    """``1.18`` for ``(1, 18, 0)``, ``1.18.1`` for ``(1, 18, 1)``."""
    shown = version[:2] if len(version) < 3 or version[2] == 0 else version[:3]
    return ".".join(str(part) for part in shown)


def installed_version() -> str:
    """The version of the ``onnxruntime`` module this process imported."""
    return str(getattr(ort, "__version__", "unknown"))


@functools.cache
def runtime_distributions() -> tuple[tuple[str, str], ...]:
    """``(name, version)`` of every installed distribution that provides the ``onnxruntime`` module,
    sorted by name: normally exactly one, ``onnxruntime-gpu`` or ``onnxruntime``."""
    found: dict[str, tuple[str, str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        key = re.sub(r"[-_.]+", "-", name).lower()
        if not key.startswith(("onnxruntime", "ort-nightly")):
            continue
        files = dist.files
        if files is not None and not any(str(path).replace("\\", "/") == _MODULE_FILE for path in files):
            continue  # onnxruntime-extensions, onnxruntime-genai, ...: other modules
        found.setdefault(key, (name, dist.version))
    return tuple(sorted(found.values()))


def side_by_side_message(distributions: tuple[tuple[str, str], ...]) -> Optional[str]:
    """The warning for two or more distributions sharing the ``onnxruntime`` module, else None."""
    if len(distributions) < 2:
        return None
    listed = " and ".join(f"{name} {version}" for name, version in distributions)
    names = {name.lower() for name, _ in distributions}
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in names else distributions[-1][0]
    remove = " ".join(name for name, _ in distributions if name.lower() != keep)
    return (
        f"{listed} are installed side by side; they share the 'onnxruntime' module, so the files of "
        f"whichever was installed last are used (now onnxruntime {installed_version()}, providers "
        f"{ort.get_available_providers()}); keep one: pip uninstall -y {remove} && "
        f"pip install --force-reinstall --no-deps {keep}"
    )


def version_error(version: str) -> Optional[str]:
    """The one-line message for an installed version below ``MIN_ORT_VERSION``, else None."""
    parsed = parse_version(version)
    if parsed is None or parsed >= MIN_ORT_VERSION:
        return None
    need = format_version(MIN_ORT_VERSION)
    return (
        f"onnxruntime {version} is installed, but graphbuild needs ONNX Runtime {need} or newer; "
        f"upgrade it: pip install -U 'onnxruntime-gpu>={need}' (or 'onnxruntime>={need}' on "
        f"platforms without the GPU build)"
    )


_warned_side_by_side = False


def check_runtime() -> None:
    """Checks the installed ONNX Runtime before graphbuild runs anything on it.

    Raises:
        RuntimeVersionError: the imported ``onnxruntime`` is older than ``MIN_ORT_VERSION``.

    Warns:
        RuntimeInstallWarning: (once per process) two distributions provide the module.
    """
    global _warned_side_by_side
    message = version_error(installed_version())
    if message is not None:
        raise RuntimeVersionError(message)
    if not _warned_side_by_side:
        _warned_side_by_side = True
        side_by_side = side_by_side_message(runtime_distributions())
        if side_by_side is not None:
            warnings.warn(side_by_side, RuntimeInstallWarning, stacklevel=3)


def detached_outputs(binding: ort.IOBinding) -> list[ort.OrtValue]:
    """``binding.get_outputs()`` as values that stay valid after the binding's outputs are cleared
    or rebound (they share the tensors, nothing is copied).

    Before ONNX Runtime 1.30 each value refers to a slot of the binding's own output vector;
    copying the values into a vector of our own gives each one a reference to its tensor that the
    binding cannot free. Done on every release (it costs one small vector per segment and plan),
    so the same code runs on the floor and the newest; a binding without the vector type (a future
    release) already returns values of their own.
    """
    produced = binding.get_outputs()
    vector_type = getattr(ort.capi.onnxruntime_pybind11_state, "OrtValueVector", None)
    if vector_type is None or not all(hasattr(value, "_ortvalue") for value in produced):
        return produced
    owned = vector_type()
    for value in produced:
        owned.push_back(value._ortvalue)
    return [ort.OrtValue(value) for value in owned]
