"""The CPU copy ceiling of ``graphbuild bench``, and the CPU kernel's strategy as the plugin reports it.

The ceiling is the fastest of several ways to move the same bytes, each timed as its own path in
the same interleaved rounds as the lookups: glibc's ``memcpy`` (``numpy.copyto``), and the plugin's
vector loops with streaming (non-temporal) and with ordinary stores (``GraphBuildCopyBytes``), each
split over the thread count. Which of them is fastest depends on the CPU and the size (glibc's own
``memcpy`` switches to streaming stores above a threshold it derives from a cache size that is
wrong on some machines), so no single one is a ceiling; the best of them is.

The strategy (``GraphBuildCpuStrategy``) is the plugin's JSON description of how its CPU kernel
copies rows in this process: the CPU's vendor and model, the vector instruction set, the cache
sizes it read, and which row copy it uses below and above its size threshold, with the
calibration's times.
"""

from __future__ import annotations

import ctypes
import functools
import json
from typing import Any, Sequence

import numpy as np

from graphbuild.plugin import library_path
from graphbuild.tools.common import format_bytes

#: The ceiling's candidate copies: name -> GraphBuildCopyBytes method (memcpy via numpy.copyto).
METHODS = {"memcpy": 0, "stream": 1, "vector": 2}
_DESCRIPTIONS = {"memcpy": "memcpy", "stream": "streaming stores", "vector": "ordinary stores"}

PREFIX = "copy:"


@functools.lru_cache(maxsize=1)
def plugin_library() -> ctypes.CDLL:
    """The plugin library (the one ONNX Runtime loads: same file, same process state)."""
    library = ctypes.CDLL(str(library_path()))
    library.GraphBuildCpuStrategy.restype = ctypes.c_size_t
    library.GraphBuildCpuStrategy.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    library.GraphBuildCopyBytes.restype = ctypes.c_int
    library.GraphBuildCopyBytes.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t]
    return library


def cpu_strategy() -> dict[str, Any]:
    """The CPU kernel's strategy in this process (deciding it now if no session did yet), or
    ``{"error": why}`` when the plugin cannot say."""
    try:
        library = plugin_library()
        size = library.GraphBuildCpuStrategy(None, 0)
        buffer = ctypes.create_string_buffer(size + 1)
        library.GraphBuildCpuStrategy(buffer, size + 1)
        return json.loads(buffer.value.decode())
    except (OSError, AttributeError, ValueError) as exc:
        return {"error": f"the plugin does not describe its CPU strategy: {exc}"}


def describe_strategy(strategy: dict[str, Any]) -> str:
    """The header line: ``CPU kernel: AMD EPYC (AuthenticAMD), avx512, L1d 32 KiB, L3 32 MiB; ...``."""
    if "isa" not in strategy:
        return f"CPU kernel: {strategy.get('error', 'strategy unknown')}"
    facts = f"{strategy['cpu']} ({strategy['vendor']}), {strategy['isa']}, L1d {format_bytes(strategy['l1d_bytes'])}, L3 {format_bytes(strategy['l3_bytes'])} (from {strategy['l3_from']})"
    if strategy.get("error"):
        return f"CPU kernel: {facts}; {strategy['error']}"
    if strategy["chosen_by"] == "GRAPHBUILD_CPU_STRATEGY":
        return f"CPU kernel: {facts}; rows copied by {strategy['large']} at every size (GRAPHBUILD_CPU_STRATEGY)"
    large = strategy["large"]
    if large != "memcpy" and strategy.get("large_vector_bytes", strategy["vector_bytes"]) != strategy["vector_bytes"]:
        large += f" in {strategy['large_vector_bytes']}-byte vectors"
    line = f"CPU kernel: {facts}; outputs below {format_bytes(strategy['large_min_bytes'])}: {strategy['small']} rows, larger: {large}"
    calibration = strategy.get("calibration")
    if calibration:
        times = ", ".join(f"{key.removesuffix('_ms')} {value:.2f}" for key, value in calibration.items() if key.endswith("_ms") and key not in ("total_ms", "setup_ms"))
        line += f" (by {strategy['chosen_by']}: ms for {format_bytes(calibration['bytes'])}: {times})"
    return line


class CopyCeiling:
    """The ceiling's candidate copies for one table and thread count.

    Args:
        table: the ``[V, D]`` host table; each call copies a window of it (moving from call to call,
            like the ids) into a preallocated target.
        threads: copies of more than ``parallel_min_bytes`` per thread are split over this many.
        pool: a thread pool of ``threads - 1`` workers (None for one thread).
        parallel_min_bytes: see ``bench_paths.PARALLEL_COPY_MIN_BYTES``.
    """

    def __init__(self, table: np.ndarray, threads: int, pool: Any, parallel_min_bytes: int) -> None:
        self.table = table
        self.threads = threads
        self.pool = pool
        self.parallel_min_bytes = parallel_min_bytes
        strategy = cpu_strategy()
        width = strategy.get("vector_bytes", 0) if not strategy.get("error") else 0
        # The vector copies run in the kernel's width and, where that is 64 bytes, in 32 as well: the
        # widest is not always the fastest (on AMD Zen 4, which splits a 64-byte store in two, a
        # 32-byte streaming copy moved 41 GB/s where a 64-byte one moved 38).
        self.widths: tuple[int, ...] = (width, 32) if width == 64 else (width,) if width else ()

    def paths(self, tokens: int, rotations: int, target: np.ndarray, path_type: Any) -> list[Any]:
        """One ``path_type`` (``bench_paths.TimedPath``) per candidate, keyed ``copy:<method>``."""
        vocab = len(self.table)
        if tokens <= vocab:
            starts = _windows(vocab, tokens, rotations)
            sources = [self.table[start : start + tokens] for start in starts]
        else:
            sources = [np.resize(self.table, target.shape)]
        chunks = row_chunks(tokens, self.threads, target.nbytes, self.parallel_min_bytes)
        split = f", {len(chunks)} threads" if len(chunks) > 1 else ""
        candidates = [("memcpy", _numpy_copy, "memcpy")]
        for width in self.widths:
            kernel_width = width == self.widths[0]
            for name in ("stream", "vector") if kernel_width else ("stream",):  # a narrower copy: streaming only
                key, description = (name, _DESCRIPTIONS[name]) if kernel_width else (f"{name}-{width}", f"{_DESCRIPTIONS[name]} with {width}-byte vectors")
                candidates.append((key, functools.partial(_plugin_copy, METHODS[name], width), description))
        found = []
        for key, copy_rows, description in candidates:
            run = functools.partial(self._copy, copy_rows, sources, target, chunks)
            found.append(path_type(PREFIX + key, f"copy, {description}{split}", run, lambda i: None, None))
        return found

    def _copy(self, copy_rows: Any, sources: Sequence[np.ndarray], target: np.ndarray, chunks: Sequence[tuple[int, int]], i: int) -> None:
        source = sources[i % len(sources)]
        if len(chunks) == 1:
            copy_rows(target, source)
            return
        futures = [self.pool.submit(copy_rows, target[a:b], source[a:b]) for a, b in chunks[1:]]
        a, b = chunks[0]
        copy_rows(target[a:b], source[a:b])
        for future in futures:
            future.result()


def _numpy_copy(target: np.ndarray, source: np.ndarray) -> None:
    np.copyto(target, source)


def _plugin_copy(method: int, width: int, target: np.ndarray, source: np.ndarray) -> None:
    # ctypes releases the GIL for the call, so the pool's copies run in parallel.
    plugin_library().GraphBuildCopyBytes(target.ctypes.data, source.ctypes.data, target.nbytes, method, width)


def best_of(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replaces the candidate copies' results in one group by a single ``copy`` result, the
    fastest of them (by median), which keeps every candidate's median in ``copy_candidates``."""
    candidates = [r for r in group if r["path"].startswith(PREFIX)]
    if not candidates:
        return group
    best = dict(min(candidates, key=lambda r: r["ms"]))
    method = best["path"][len(PREFIX):]
    best["path"] = "copy"
    best["label"] = f"copy ceiling ({method}" + (f", {best['label'].rsplit(', ', 1)[1]})" if "threads" in best["label"] else ")")
    best["copy_method"] = method
    best["copy_candidates"] = {r["path"][len(PREFIX):]: r["ms"] for r in candidates}
    rest = [r for r in group if not r["path"].startswith(PREFIX)]
    return [best, *rest]


def _windows(rows: int, size: int, count: int) -> list[int]:
    """Start rows of ``count`` windows of ``size`` rows spread over ``rows`` rows."""
    span = rows - size
    return sorted({span * k // max(1, count - 1) for k in range(count)}) if count > 1 else [0]


def row_chunks(rows: int, threads: int, nbytes: int, parallel_min_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of a copy split over ``threads`` (one range when the copy is small)."""
    parts = max(1, min(threads, rows, nbytes // parallel_min_bytes))
    bounds = [rows * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]
