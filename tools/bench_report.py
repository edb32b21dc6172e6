"""What ``graphbuild bench`` prints and writes: the machine description, the results table, the
kernel's performance targets, and the ``--json`` document.

A result is a plain dict (one timed path in one configuration); the keys are the JSON fields:
``vocab, hidden, dtype, tokens, threads, device, path, label, ms, ms_min, samples, bytes,
gb_per_s, vs_copy, vs_gather, check``; TPEmbedding's at 1-16 tokens also ``vs_gather_paired``,
``gather_control_paired``, ``tp_control_paired`` and ``paired_calls``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort

import graphbuild
from graphbuild.tools import bench_copy
from graphbuild.tools.common import format_bytes, write_atomically

# The widest A/A spread the 1-16-token target allows for: a control reading further apart means a
# run too noisy to judge a few-percent difference, and the bar stops falling there.
MAX_CONTROL_SPREAD = 0.02
# engine.run is judged against a bare session.run at these token counts, and may add at most this
# much per call at 1 token.
ENGINE_TOKENS = (1, 16, 4096, 16384)
MAX_ENGINE_OVERHEAD_US = 5.0

LEGEND = """\
ms        median wall time of one call after warm-up (ids rotated over {rotations} pre-generated sets);
          paths run in interleaved rounds, so machine noise hits them alike
GB/s      bytes moved per second: rows read plus rows written, 2 x tokens x hidden x element size
vs copy   throughput relative to the copy ceiling at the same thread count
vs Gather ORT Gather's time / this path's time (above 1.00 = faster than ONNX Runtime's Gather)
          at 1-16 tokens also with the two ops' calls alternating one by one ("calls alternating"),
          which keeps the few-percent drift between timing blocks out of a ratio close to 1, each op
          also through a second, identical session (the A/A controls: how far equal ops read apart)
paths     copy ceiling: the fastest copy of the same bytes{copy_note}
          ORT Gather and TPEmbedding: one-node ONNX models run by ONNX Runtime, inputs and a
          preallocated output bound once (IO binding), idle pool threads sleeping (--spin: ORT's
          default spinning); "shard 1 of 2": half the table, ids of the other half give zero rows
          (one tensor-parallel rank); engine.run: a whole graphbuild engine (gb.build of
          examples/embedding_tp.py's network, vocabulary split over tp ranks), numpy in and out,
          into a preallocated array (out=) or, as users call it, into new arrays; ORT Gather,
          session.run: a bare InferenceSession.run of a Gather model holding the table, the
          reference for engine.run (the line under each group: its time / the engine's; at 1-16
          tokens also with calls alternating, and the difference per call in us);
          numpy take, torch F.embedding and session.run allocate their output on every call"""

_CPU_COPY_NOTE = (
    " from a window of the table that moves\n          every call, like the ids, timed three ways in the"
    " same rounds: memcpy (numpy.copyto),\n          streaming stores and ordinary vector stores (the plugin's"
    " copies), N threads: split\n          over a pool of N threads; the method that won is named in the row"
)
_CUDA_COPY_NOTE = ", device to device (torch, else cupy, else ONNX\n          Runtime's Identity into a preallocated output)"


def machine_info(device: str, torch_wanted: bool) -> dict[str, Any]:
    """The facts that make figures comparable: CPU, memory, library versions, GPU."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _meminfo("MemTotal"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "graphbuild": graphbuild.__version__,
        "device": device,
    }
    if device == "cpu":
        info["cpu_strategy"] = bench_copy.cpu_strategy()
    if torch_wanted:
        try:
            import torch

            info["torch"] = torch.__version__
            if device == "cuda" and torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except ImportError:
            info["torch"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo(field: str) -> Optional[int]:
    """A /proc/meminfo field in bytes (None where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int:
    """Bytes of RAM that can be allocated without swapping (MemAvailable; a generous guess elsewhere)."""
    found = _meminfo("MemAvailable")
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def header(machine: dict[str, Any], rotations: int) -> str:
    """The lines printed before the first table."""
    memory = machine.get("memory_bytes")
    where = f"{machine['cpu']}, {machine['cores']} cores" + (f", {format_bytes(memory)} RAM" if memory else "")
    if machine.get("gpu"):
        where += f"; GPU {machine['gpu']}"
    versions = f"onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}" + (f", torch {machine['torch']}" if machine.get("torch") else "")
    note = _CPU_COPY_NOTE if machine["device"] == "cpu" else _CUDA_COPY_NOTE
    lines = [f"graphbuild bench {machine['graphbuild']}: embedding lookup, device {machine['device']} ({where}; {versions})"]
    if "cpu_strategy" in machine:
        lines.append(bench_copy.describe_strategy(machine["cpu_strategy"]))
    return "\n".join([*lines, LEGEND.format(rotations=rotations, copy_note=note)])


def format_ms(ms: float) -> str:
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}"


_MIN_WIDTHS = (6, 7, 32, 9, 7, 7, 9, 5)


def format_rows(results: Sequence[dict[str, Any]]) -> str:
    """The results of one table configuration as aligned rows under a header."""
    headers = ["tokens", "threads", "what", "ms", "GB/s", "vs copy", "vs Gather", "check"]
    rows = []
    for r in results:
        rows.append(
            [
                str(r["tokens"]),
                str(r["threads"]),
                r["label"],
                format_ms(r["ms"]),
                f"{r['gb_per_s']:.2f}",
                "-" if r["vs_copy"] is None else f"{r['vs_copy']:.2f}",
                "-" if r["vs_gather"] is None else f"{r['vs_gather']:.2f}",
                r["check"],
            ]
        )
    # Fixed minimum widths keep the tables of successive groups aligned with the first header.
    widths = [max(len(h), minimum, *(len(row[i]) for row in rows)) for i, (h, minimum) in enumerate(zip(headers, _MIN_WIDTHS))]
    left = {2, 7}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(row) for row in rows])


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Fills ``vs_copy`` and ``vs_gather`` of the results of one (config, tokens, threads) group."""
    by_path = {r["path"]: r for r in results}
    copy = by_path.get("copy")
    gather = by_path.get("ort_gather")
    session = by_path.get("ort_gather_run")
    for r in results:
        r["vs_copy"] = copy["ms"] / r["ms"] if copy is not None and r["ms"] > 0 else None
        r["vs_gather"] = gather["ms"] / r["ms"] if gather is not None and r["ms"] > 0 else None
        if r["path"].startswith("engine_run") and session is not None and r["ms"] > 0:
            r["vs_session"] = session["ms"] / r["ms"]


def format_paired(group: Sequence[dict[str, Any]]) -> str:
    """The lines under a group's rows: the calls-alternating ratios and engine.run against the bare
    session.run, or "" when it has neither."""
    lines = []
    for r in group:
        if r.get("vs_gather_paired") is not None:
            line = f"{'':>17}calls alternating ({r['paired_calls']} each): TPEmbedding vs ORT Gather {r['vs_gather_paired']:.3f}"
            if r.get("gather_control_paired") is not None:
                line += f"; A/A, second session vs first: Gather {r['gather_control_paired']:.3f}, TPEmbedding {r['tp_control_paired']:.3f}"
            lines.append(line)
    engines = [r for r in group if r.get("vs_session") is not None]
    if engines:
        line = f"{'':>17}engine.run vs ORT Gather session.run: " + ", ".join(f"{r['label']} {r['vs_session']:.2f}" for r in engines)
        paired = next((r for r in engines if r.get("vs_session_paired") is not None), None)
        if paired is not None:
            line += f"; tp 1, calls alternating: {paired['vs_session_paired']:.3f}, {paired['overhead_us_paired']:+.1f} us per call"
        lines.append(line)
    return "\n".join(lines)


def _small_vs_gather(r: dict[str, Any]) -> Optional[float]:
    """The ratio the 1-16-token target is scored on: calls alternating when measured, else blocks."""
    paired = r.get("vs_gather_paired")
    return paired if paired is not None else r["vs_gather"]


def control_spread(results: Sequence[dict[str, Any]]) -> Optional[float]:
    """How far one session of an op read from a second, identical session of it (the A/A controls
    of Gather and TPEmbedding) at worst among ``results``, as a fraction either way (0.012: one
    read 1.2% slower or faster than the other); None when no control was timed."""
    controls = [r[key] for r in results for key in ("gather_control_paired", "tp_control_paired") if r.get(key)]
    return max(max(c, 1.0 / c) for c in controls) - 1.0 if controls else None


# ---------------------------------------------------------------------------------- targets
def describe_config(r: dict[str, Any]) -> str:
    """``vocab 32000 float32, 4096 tokens, 2 threads``: where a result was measured."""
    return f"vocab {r['vocab']} {r['dtype']}, {r['tokens']} tokens, {r['threads']} thread{'s' if r['threads'] > 1 else ''}"


def _rule(name: str, selected: list[dict[str, Any]], value: Any, minimum: Optional[float], *, maximum: Optional[float] = None, report: bool = False) -> Optional[dict[str, Any]]:
    """A target over ``selected``: ``value(r)`` at least ``minimum`` (or at most ``maximum``);
    ``report`` marks a line that is shown but not judged."""
    scored = [(value(r), r) for r in selected]
    scored = [(v, r) for v, r in scored if v is not None]
    if not scored:
        return None
    if maximum is not None:
        worst_value, worst = max(scored, key=lambda item: item[0])
        met = sum(1 for v, _ in scored if v <= maximum)
    else:
        worst_value, worst = min(scored, key=lambda item: item[0])
        met = sum(1 for v, _ in scored if v >= minimum)
    values = [v for v, _ in scored]
    rule = {"target": name, "minimum": minimum, "met": met, "total": len(scored), "worst": round(worst_value, 3), "worst_at": describe_config(worst), "range": [round(min(values), 3), round(max(values), 3)]}
    if maximum is not None:
        rule["maximum"] = maximum
    if report:
        rule["report"] = True
    return rule


def _small_rule(small: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """1-16 tokens, latency no worse than ORT Gather's, on the calls-alternating ratio.

    Two identical sessions of one op, timed the same way, read up to about 1% apart (which one is
    "faster" changes from configuration to configuration and run to run), so a ratio that far below
    1.00 is not evidence of a slower op. The bar is 1.00 less the widest A/A reading of the run,
    and never below ``1 / (1 + MAX_CONTROL_SPREAD)`` (0.980); without controls it is 1.00.
    """
    spread = control_spread(small)
    if spread is None:
        return _rule("1-16 tokens: latency no worse than ORT Gather's (calls alternating, ratio >= 1.00)", small, _small_vs_gather, 1.0)
    minimum = math.floor(1000.0 / (1.0 + min(spread, MAX_CONTROL_SPREAD)) + 1e-9) / 1000.0
    name = f"1-16 tokens: latency no worse than ORT Gather's (calls alternating, ratio >= {minimum:.3f}: A/A sessions read up to {spread:.1%} apart)"
    rule = _rule(name, small, _small_vs_gather, minimum)
    if rule is not None:
        rule["control_spread"] = round(spread, 4)
        rule["at_least_1"] = sum(1 for r in small if (_small_vs_gather(r) or 0.0) >= 1.0)
    return rule


def _vs_session(r: dict[str, Any]) -> Optional[float]:
    """engine.run's ratio to the bare session.run: calls alternating when measured, else blocks."""
    paired = r.get("vs_session_paired")
    return paired if paired is not None else r.get("vs_session")


def _overhead_us(by_config: dict[tuple, float]) -> Any:
    def overhead(r: dict[str, Any]) -> Optional[float]:
        if r.get("overhead_us_paired") is not None:
            return r["overhead_us_paired"]
        session = by_config.get((r["vocab"], r["dtype"], r["tokens"], r["threads"]))
        return None if session is None else (r["ms"] - session) * 1e3

    return overhead


def _engine_rules(results: Sequence[dict[str, Any]]) -> list[Optional[dict[str, Any]]]:
    """engine.run without out= against a bare session.run of ORT Gather on the same table.

    bfloat16 is left out: ``session.run`` cannot return it (numpy has no bfloat16), and the bare
    path's ``run_with_ort_values`` costs tens of microseconds more per call, no bar to judge by.
    """
    scored = [r for r in results if r["tokens"] in ENGINE_TOKENS and r["dtype"] != "bfloat16"]
    tp1 = [r for r in scored if r["path"] == "engine_run"]
    tp_n = [r for r in scored if r["path"].startswith("engine_run_tp")]
    session_ms = {(r["vocab"], r["dtype"], r["tokens"], r["threads"]): r["ms"] for r in results if r["path"] == "ort_gather_run"}
    counts = "/".join(str(t) for t in ENGINE_TOKENS)
    return [
        _rule(f"{counts} tokens (float32, float16): engine.run (tp 1, no out=) >= 1.00x a bare ORT Gather session.run", tp1, _vs_session, 1.0),
        _rule(f"{counts} tokens: engine.run at tp 2 and 4 vs the bare session.run (reported)", tp_n, lambda r: r.get("vs_session"), 1.0, report=True),
        _rule(f"1 token: engine.run (tp 1) at most {MAX_ENGINE_OVERHEAD_US:.0f} us per call more than the bare session.run", [r for r in tp1 if r["tokens"] == 1], _overhead_us(session_ms), None, maximum=MAX_ENGINE_OVERHEAD_US),
    ]


def evaluate_targets(results: Sequence[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """The targets: TPEmbedding over the full table against ORT Gather and the copy ceiling, and on
    the CPU engine.run against a bare session.run."""
    ours = [r for r in results if r["path"] == "tp_embedding"]
    large = [r for r in ours if r["tokens"] >= 4096]
    small = [r for r in ours if r["tokens"] <= 16]
    rules: list[Optional[dict[str, Any]]] = []
    if device == "cpu":
        rules.append(_rule(">= 4096 tokens: throughput >= 1.00x ORT Gather's", large, lambda r: r["vs_gather"], 1.0))
        rules.append(_rule(">= 4096 tokens: >= 85% of the copy ceiling (the best of memcpy, streaming and ordinary stores)", large, lambda r: r["vs_copy"], 0.85))
        rules.append(_small_rule(small))
        rules.extend(_engine_rules(results))
    else:
        torch_ms = {(r["vocab"], r["dtype"], r["tokens"], r["threads"]): r["ms"] for r in results if r["path"] == "torch_embedding"}

        def vs_torch(r: dict[str, Any]) -> Optional[float]:
            found = torch_ms.get((r["vocab"], r["dtype"], r["tokens"], r["threads"]))
            return None if found is None else found / r["ms"]

        big16 = [r for r in ours if r["tokens"] >= 16384 and r["dtype"] in ("float16", "bfloat16")]
        rules.append(_rule("16384 tokens fp16/bf16: >= 85% of the device copy", big16, lambda r: r["vs_copy"], 0.85))
        rules.append(_rule("16384 tokens fp16/bf16: faster than ORT CUDA Gather", big16, lambda r: r["vs_gather"], 1.0))
        rules.append(_rule("16384 tokens fp16/bf16: faster than torch F.embedding", big16, vs_torch, 1.0))
        rules.append(_small_rule(small))
        rules.append(_rule("1-16 tokens: latency no worse than torch's", small, vs_torch, 1.0))
    return [r for r in rules if r is not None]


def format_targets(targets: Sequence[dict[str, Any]], device: str) -> str:
    lines = [f"Targets ({device.upper()}; TPEmbedding over the full table, engine.run as users call it):"]
    for t in targets:
        if t.get("report"):
            low, high = t["range"]
            lines.append(f"  report {t['target']}: {t['total']} configurations, {low:.3f} to {high:.3f}; lowest at {t['worst_at']}")
            continue
        verdict = "met" if t["met"] == t["total"] else "MISSED"
        unit = " us" if t.get("maximum") is not None else ""
        line = f"  {verdict:<6} {t['target']}: {t['met']}/{t['total']} configurations; worst {t['worst']:.3f}{unit} ({t['worst_at']})"
        if "at_least_1" in t:
            line += f"; {t['at_least_1']} at 1.00 or more"
        lines.append(line)
    if not targets:
        lines.append("  (no configuration in this run is covered by a target)")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Writes the ``--json`` document atomically."""
    document = dict(document, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(document, indent=1) + "\n"
    write_atomically(Path(path), lambda handle: handle.write(text.encode()))
