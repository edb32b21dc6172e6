"""ONNX Runtime sessions for engine segments: providers, threads, the plugin library, logging.

The CUDA execution provider is used when onnxruntime offers it *and* a CUDA device is present;
otherwise the CPU provider. The custom-op library is always the one installed with graphbuild.

Settings are checked when they are used, each with a ``ConfigurationError`` naming the setting and
the values it accepts (never at import, so a bad environment variable cannot break ``import
graphbuild``):

- ``GRAPHBUILD_PROVIDERS``: comma-separated provider names, overriding the default choice;
- ``GRAPHBUILD_ORT_LOG_SEVERITY``: ONNX Runtime's log level, 0-4 or verbose, info, warning,
  error, fatal (default fatal: graphbuild reports failures itself);
- ``providers=`` and ``intra_op_threads=`` of ``Engine.load`` (``check_providers``,
  ``check_threads``).
"""

from __future__ import annotations

import ctypes
import functools
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import onnxruntime as ort

from graphbuild import plugin
from graphbuild.errors import ConfigurationError, EngineError, GraphBuildError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

#: ONNX Runtime's log severities by name (``GRAPHBUILD_ORT_LOG_SEVERITY`` takes either).
SEVERITIES = {"verbose": 0, "info": 1, "warning": 2, "error": 3, "fatal": 4}

#: Most intra-op threads per session, as a multiple of the CPUs this process may use.
MAX_THREADS_PER_CPU = 4


def ort_log_severity() -> int:
    """ONNX Runtime's log severity from ``GRAPHBUILD_ORT_LOG_SEVERITY`` (default 4, fatal only).

    ONNX Runtime logs on stderr what graphbuild handles itself: warnings, and every failed kernel
    call, which also comes back as a status that graphbuild turns into a ``GraphBuildError``.

    Raises:
        ConfigurationError: the variable is set to something else than 0-4 or a severity name.
    """
    raw = os.environ.get("GRAPHBUILD_ORT_LOG_SEVERITY", "4")
    value = raw.strip().lower()
    if value in SEVERITIES:
        return SEVERITIES[value]
    if value in {str(level) for level in SEVERITIES.values()}:
        return int(value)
    raise ConfigurationError(f"GRAPHBUILD_ORT_LOG_SEVERITY is {raw!r}; use 0-4 or {', '.join(SEVERITIES)} (0 logs the most)")


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


def _check_names(names: Sequence[Any], what: str) -> list[str]:
    """``names`` as a list of provider names this onnxruntime has (CUDA only with a device)."""
    available = ort.get_available_providers()
    for name in names:
        if name not in available:
            raise ConfigurationError(f"{what} names {name!r}, which this onnxruntime does not have (it has {', '.join(available)})")
    if CUDA in names and cuda_device_count() == 0:
        raise ConfigurationError(f"{what} names {CUDA}, but no CUDA device is present; use {CPU} (or leave it out to choose automatically)")
    return list(names)


def default_providers() -> list[str]:
    """``[CUDA, CPU]`` when a CUDA device and onnxruntime's CUDA provider are both there, else ``[CPU]``.

    ``GRAPHBUILD_PROVIDERS`` (comma-separated) overrides the choice.

    Raises:
        ConfigurationError: ``GRAPHBUILD_PROVIDERS`` is empty, names a provider this onnxruntime
            lacks, or names CUDA without a CUDA device.
    """
    override = os.environ.get("GRAPHBUILD_PROVIDERS")
    if override is not None:
        names = [p.strip() for p in override.split(",") if p.strip()]
        if not names:
            raise ConfigurationError(f"GRAPHBUILD_PROVIDERS is {override!r}; give provider names separated by commas, e.g. {CPU}, or unset it")
        return _check_names(names, "GRAPHBUILD_PROVIDERS")
    if CUDA in ort.get_available_providers() and cuda_device_count() > 0:
        return [CUDA, CPU]
    return [CPU]


def check_providers(providers: Optional[Sequence[str]]) -> list[str]:
    """The execution providers to use: ``providers`` checked, or ``default_providers()`` for None.

    Raises:
        ConfigurationError: ``providers`` is a string (not a list), empty, holds something else
            than provider names, names one this onnxruntime lacks, or names CUDA without a device.
    """
    if providers is None:
        return default_providers()
    if isinstance(providers, (str, bytes)):
        raise ConfigurationError(f"providers must be a list of provider names such as [{CPU!r}], got the string {providers!r}")
    try:
        names = list(providers)
    except TypeError:
        raise ConfigurationError(f"providers must be a list of provider names such as [{CPU!r}], got {type(providers).__name__}") from None
    if not names:
        raise ConfigurationError(f"providers is empty; give at least one, e.g. [{CPU!r}], or None to choose automatically")
    if not all(isinstance(name, str) for name in names):
        raise ConfigurationError(f"providers must be a list of provider names such as [{CPU!r}], got {names!r}")
    return _check_names(names, "providers")


def max_threads() -> int:
    """The most ``intra_op_threads`` accepted: ``MAX_THREADS_PER_CPU`` per CPU this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return MAX_THREADS_PER_CPU * max(1, cpus)


def check_threads(intra_op_threads: Any) -> Optional[int]:
    """``intra_op_threads`` as an int (None stays None: ONNX Runtime's own choice).

    Raises:
        ConfigurationError: not an integer (bools and floats included) or outside 1..``max_threads()``.
    """
    if intra_op_threads is None:
        return None
    limit = max_threads()
    if isinstance(intra_op_threads, numbers.Integral) and not isinstance(intra_op_threads, bool) and 1 <= int(intra_op_threads) <= limit:
        return int(intra_op_threads)
    raise ConfigurationError(
        f"intra_op_threads must be None or an integer from 1 to {limit} ({MAX_THREADS_PER_CPU} per CPU this process may use), got {intra_op_threads!r}"
    )


def session_options(*, needs_plugin: bool, intra_op_threads: Optional[int] = None) -> ort.SessionOptions:
    """Options for a graphbuild session: the log severity, threads and (when asked) the plugin library.

    Raises:
        ConfigurationError: a bad ``GRAPHBUILD_ORT_LOG_SEVERITY``.
    """
    severity = ort_log_severity()
    ort.set_default_logger_severity(severity)
    options = ort.SessionOptions()
    options.log_severity_level = severity
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
        ConfigurationError: bad providers or ``GRAPHBUILD_ORT_LOG_SEVERITY``.
    """
    providers = check_providers(providers)
    try:
        options = session_options(needs_plugin=needs_plugin, intra_op_threads=intra_op_threads)
        return ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=providers)
    except GraphBuildError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception classes (not RuntimeError)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"{model_path}: ONNX Runtime cannot load this segment: {message}") from exc


def binding_runner(session: ort.InferenceSession, binding: ort.IOBinding) -> Callable[[], None]:
    """``run()``: runs ``session`` on ``binding`` as ``session.run_with_iobinding(binding)`` does,
    for less per call (about 1.5 us of 2.5 on a one-node model): the session's C++ entry point
    directly, skipping the Python wrapper's WebGPU graph-capture checks that never apply here, and
    run options made once, where passing none makes ONNX Runtime build default ones on every call.
    Falls back to the public method on an onnxruntime without that entry point.
    """
    options = ort.RunOptions()
    native_session, native_binding = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
    if native_binding is not None and callable(getattr(native_session, "run_with_iobinding", None)):
        return functools.partial(native_session.run_with_iobinding, native_binding, options)
    return functools.partial(session.run_with_iobinding, binding, options)
