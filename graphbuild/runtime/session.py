"""ONNX Runtime sessions for engine segments: providers, the plugin library, logging.

The CUDA execution provider is used when onnxruntime offers it *and* a CUDA device is present;
otherwise the CPU provider. The custom-op library is always the one installed with graphbuild.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Optional, Sequence

import onnxruntime as ort

from graphbuild import plugin
from graphbuild.errors import EngineError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# ONNX Runtime logs on stderr what graphbuild handles itself: warnings, and every failed kernel call,
# which also comes back as a status that graphbuild turns into a GraphBuildError naming op and node.
# Keep only fatal messages; GRAPHBUILD_ORT_LOG_SEVERITY (0 verbose .. 4 fatal) shows more.
ORT_LOG_SEVERITY = int(os.environ.get("GRAPHBUILD_ORT_LOG_SEVERITY", "4"))
ort.set_default_logger_severity(ORT_LOG_SEVERITY)


@functools.cache
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or GPU)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def default_providers() -> list[str]:
    """``[CUDA, CPU]`` when a CUDA device and onnxruntime's CUDA provider are both there, else ``[CPU]``.

    ``GRAPHBUILD_PROVIDERS`` (comma-separated) overrides the choice.
    """
    override = os.environ.get("GRAPHBUILD_PROVIDERS")
    if override:
        return [p.strip() for p in override.split(",") if p.strip()]
    if CUDA in ort.get_available_providers() and cuda_device_count() > 0:
        return [CUDA, CPU]
    return [CPU]


def session_options(*, needs_plugin: bool, intra_op_threads: Optional[int] = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_SEVERITY
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if needs_plugin:
        options.register_custom_ops_library(str(plugin.library_path()))
    return options


def create_session(
    model_path: Path,
    *,
    needs_plugin: bool,
    providers: Optional[Sequence[str]] = None,
    intra_op_threads: Optional[int] = None,
) -> ort.InferenceSession:
    """An inference session for one segment file.

    Raises:
        EngineError: ONNX Runtime cannot load the model; the message names the file.
    """
    providers = list(providers) if providers is not None else default_providers()
    unknown = [p for p in providers if p not in ort.get_available_providers()]
    if unknown:
        raise EngineError(f"execution providers {unknown} are not available in this onnxruntime (available: {ort.get_available_providers()})")
    try:
        options = session_options(needs_plugin=needs_plugin, intra_op_threads=intra_op_threads)
        return ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=providers)
    except EngineError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception classes (not RuntimeError)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"{model_path}: ONNX Runtime cannot load this segment: {message}") from exc
