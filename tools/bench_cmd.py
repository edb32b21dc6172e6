"""``graphbuild bench``: time graphbuild's embedding lookup side by side with what a user would pick
instead, and against the memory-bandwidth ceiling.

    graphbuild bench --quick                      # a small subset, about a minute
    graphbuild bench                              # every vocab, token count, dtype and thread count
    graphbuild bench --dtype bfloat16 --tokens 4096 16384 --threads 1 --json out/bench.json
    graphbuild bench --device cuda                # ONNX Runtime's CUDA provider, data on the device

For every table (vocab x hidden, dtype), thread count and token count it times the copy ceiling
(the best of several copies), ``numpy.take``, ONNX Runtime's ``Gather``, ``TPEmbedding`` over the
full table and over one vocab shard, whole engines (``engine.run`` with and without ``out=``, at
each ``--tp`` size) against a bare ``session.run`` of a ``Gather`` model, and
``torch.nn.functional.embedding`` when torch imports; every path's output is first compared with
``numpy.take`` (bit for bit). It prints the CPU kernel's strategy, one table per configuration and
the targets; ``--json`` keeps everything for tracking. Pieces: ``bench_paths`` (the timed paths),
``bench_copy`` (the copy ceiling, the kernel's strategy), ``bench_engine`` (the engine paths),
``bench_report`` (tables, targets, JSON).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.runtime.ortvalues import aligned_empty
from graphbuild.tools import bench_copy, bench_engine, bench_paths, bench_report
from graphbuild.tools.common import CLIError, format_bytes

VOCABS = (32000, 128256)  # LLaMA 2 and LLaMA 3
HIDDEN = 4096
TOKENS = (1, 16, 256, 4096, 16384)
DTYPES = ("float32", "float16", "bfloat16")
TP_SIZES = (1,)  # engines built per table; --tp 1 2 4 adds the tensor-parallel ones
QUICK = {"vocab": (32000,), "tokens": (1, 16, 4096), "dtype": ("float32", "bfloat16")}
ROTATIONS = 8  # id sets per token count, used in turn
ROUNDS = 12  # the paths of one configuration take turns this many times (finer turns: a shared
# machine whose memory bandwidth swings between turns moves every path alike; with 3 turns a
# 2-thread copy read 78 GB/s in one configuration where the lookups beside it read 44)
MIN_REPEATS, MAX_REPEATS = 5, 400
PAUSE_S = 0.003  # untimed pause after each path's block, so thread pools that spin go idle
BUDGET_S, QUICK_BUDGET_S = 0.3, 0.08  # timed seconds per path and configuration
# At 1 to 16 tokens TPEmbedding and ORT Gather are also timed with their calls alternating, each
# through two sessions (the second an A/A control), this many calls per session (--repeats
# overrides): see measure_alternating.
PAIRED_MAX_TOKENS = 16
ID_SHIFT_CYCLES = 16  # measure_alternating moves each path on to the next id set this often
PAIRED_CALLS, QUICK_PAIRED_CALLS = 20000, 3000
MEMORY_FRACTION = 0.85  # of the available RAM a configuration may plan to use
# Host buffers of the output's size a configuration holds at most: the copy's source and target,
# numpy's and torch's per-call outputs, three bound ORT outputs, the engines' outputs and their
# conversion, the bare session's output, the reference and the checked copy.
OUTPUT_BUFFERS = 13


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        parents=parents,
        help="benchmark the TPEmbedding kernel against a copy, numpy, ONNX Runtime's Gather and torch",
        description=(
            "Times graphbuild's TPEmbedding lookup side by side with a plain copy (the ceiling), numpy.take, "
            "ONNX Runtime's Gather, a whole engine and torch's F.embedding; checks every output against "
            "numpy.take first, then prints ms, GB/s and ratios, and the kernel targets."
        ),
        epilog=(
            f"defaults: vocab {' '.join(map(str, VOCABS))}, hidden {HIDDEN}, tokens {' '.join(map(str, TOKENS))}, "
            f"dtypes {' '.join(DTYPES)}, threads 1 and all cores. --quick: vocab {QUICK['vocab'][0]}, tokens "
            f"{' '.join(map(str, QUICK['tokens']))}, {' '.join(QUICK['dtype'])}. Filters override either. "
            "Configurations that would not fit in RAM are skipped with the reason."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a small subset with shorter timing (about a minute)")
    parser.add_argument("--vocab", type=int, nargs="+", metavar="V", help="vocabulary sizes (table rows)")
    parser.add_argument("--hidden", type=int, default=HIDDEN, metavar="D", help=f"hidden size (table columns, default {HIDDEN})")
    parser.add_argument("--tokens", type=int, nargs="+", metavar="N", help="token counts (ids per lookup)")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, metavar="DTYPE", help=f"table dtypes: {', '.join(DTYPES)}")
    parser.add_argument("--threads", nargs="+", metavar="N", help="thread counts; 'all' is every core this process may use (default: 1 all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default), or cuda: ONNX Runtime's CUDA provider with inputs and outputs on the GPU")
    parser.add_argument("--repeats", type=int, metavar="N", help="timed calls per path (default: as many as fit a time budget, at least 5)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed calls per path first (default 3)")
    parser.add_argument("--no-engine", action="store_true", help="leave out engine.run and the bare session.run it is judged against (saves writing each table to disk)")
    parser.add_argument("--tp", type=int, nargs="+", metavar="N", help="tensor-parallel sizes of the engines (default 1; each builds its own engine of the table)")
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime's idle pool threads spin (its default; off here so one session's spinning does not slow the next path)")
    parser.add_argument("--no-torch", action="store_true", help="leave out torch even when it is installed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tables and ids (default 0)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every result, the machine and the settings as JSON")
    parser.set_defaults(handler=run_bench)


def _positive(values: Sequence[int], what: str, minimum: int = 1) -> tuple[int, ...]:
    for value in values:
        if value < minimum:
            raise CLIError(f"--{what} must be at least {minimum}, got {value}")
    return tuple(dict.fromkeys(values))


def _thread_counts(values: Optional[Sequence[str]]) -> tuple[int, ...]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = []
    for text in values or ("1", "all"):
        if text == "all":
            counts.append(cores)
            continue
        try:
            counts.append(int(text))
        except ValueError:
            raise CLIError(f"--threads takes whole numbers or 'all', got '{text}'") from None
    return _positive(counts, "threads")


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's plan from the command line (the ``settings`` of the JSON document)."""
    quick = args.quick
    settings = {
        "device": args.device,
        "vocab": _positive(args.vocab or (QUICK["vocab"] if quick else VOCABS), "vocab", 2),
        "hidden": _positive([args.hidden], "hidden")[0],
        "tokens": _positive(args.tokens or (QUICK["tokens"] if quick else TOKENS), "tokens"),
        "dtype": tuple(dict.fromkeys(args.dtype or (QUICK["dtype"] if quick else DTYPES))),
        "threads": _thread_counts(args.threads),
        "repeats": None if args.repeats is None else _positive([args.repeats], "repeats")[0],
        "warmup": _positive([args.warmup], "warmup", 0)[0],
        "budget_s": QUICK_BUDGET_S if quick else BUDGET_S,
        "paired_calls": args.repeats or (QUICK_PAIRED_CALLS if quick else PAIRED_CALLS),
        "rotations": ROTATIONS,
        "engine": not args.no_engine,
        "tp": _positive(args.tp or TP_SIZES, "tp") if not args.no_engine else (),
        "torch": not args.no_torch,
        "spin": args.spin,
        "seed": args.seed,
        "quick": quick,
    }
    if args.device == "cuda" and settings["threads"] != (1,):
        settings["threads"] = (1,)  # the GPU does the work; one host thread drives it
    return settings


def run_bench(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    bench_paths.check_device(settings["device"])
    outcome = run_benchmark(settings, emit=print)
    if args.json is not None:
        bench_report.write_json(args.json, outcome)
        print(f"wrote {args.json}")
    bad = [r for r in outcome["results"] if not passed(r)] + outcome["errors"]
    if bad:
        listed = "; ".join(f"{r.get('label', r.get('path'))} ({bench_report.describe_config(r)}): {r['check']}" for r in bad[:3])
        raise CLIError(f"{len(bad)} path(s) gave wrong results: {listed}")
    return 0


# --------------------------------------------------------------------------------- planning
def make_table(vocab: int, hidden: int, dtype: dtypes.DType, rng: np.random.Generator) -> np.ndarray:
    """A ``[vocab, hidden]`` table of N(0, 1) values, filled a block of rows at a time.

    64-byte aligned, as an engine's weights are (its external data is written at 64-byte offsets,
    and ONNX Runtime maps or reads it into aligned memory); numpy's own allocation starts 16 bytes
    past a page, which splits a wide load of every other row piece across two cache lines."""
    table = aligned_empty((vocab, hidden), dtype.numpy)
    block = max(1, (32 << 20) // (4 * hidden))
    for start in range(0, vocab, block):
        stop = min(vocab, start + block)
        table[start:stop] = rng.standard_normal((stop - start, hidden), dtype=np.float32).astype(dtype.numpy)
    return table


def memory_needed(vocab: int, hidden: int, dtype: dtypes.DType, tokens: int, *, engines: int) -> int:
    """Host bytes one configuration needs at its peak: the table, plus with ``engines`` engines
    two more copies each (building one serializes the table; the loaded engine's sessions hold
    their own copy) and one for the bare session's initializer, plus the output-sized buffers of
    every path."""
    table = vocab * hidden * dtype.itemsize
    copies = 1 + (2 * engines + 1 if engines else 0)
    return table * copies + OUTPUT_BUFFERS * tokens * hidden * dtype.itemsize


def expected_output(table: np.ndarray, ids: np.ndarray, expects: str, shard_rows: int) -> np.ndarray:
    """``table[ids]``; for a shard lookup (``"shard"``) the rows of shard 0 with zeros for the other
    ids; for a vocab-split engine (``"summed"``) ``table[ids] + 0``, as its all-reduce adds the other
    ranks' zero rows (which turns -0.0 into +0.0 and changes nothing else)."""
    reference = np.take(table, ids, axis=0)
    if expects == "shard":
        reference[ids >= shard_rows] = 0
    if expects == "summed":
        reference = (reference.astype(np.float32) + np.float32(0)).astype(table.dtype)
    return reference


def check_output(got: Optional[np.ndarray], reference: np.ndarray) -> str:
    """``"ok"`` when ``got`` equals ``reference`` bit for bit, else what differs."""
    if got is None:
        return "ok"
    if got.shape != reference.shape or got.dtype != reference.dtype:
        return f"MISMATCH: got {got.dtype}{list(got.shape)}, expected {reference.dtype}{list(reference.shape)}"
    bits = np.ascontiguousarray(got).view(np.uint8).reshape(len(got), -1) if got.size else got
    want = np.ascontiguousarray(reference).view(np.uint8).reshape(len(reference), -1) if reference.size else reference
    if np.array_equal(bits, want):
        return "ok"
    rows = np.flatnonzero(np.any(bits != want, axis=1))
    return f"MISMATCH: {len(rows)} of {len(got)} rows differ, first at position {int(rows[0])}"


def passed(result: dict[str, Any]) -> bool:
    """Whether a result's correctness check passed (or it had nothing to check)."""
    return result["check"] in ("ok", "-")


# --------------------------------------------------------------------------------- timing
def measure(paths: Sequence[bench_paths.TimedPath], *, warmup: int, repeats: Optional[int], budget_s: float) -> dict[str, list[float]]:
    """Per path, the wall times (seconds) of its timed calls.

    Every path first runs ``warmup`` calls; then the paths take turns for ``ROUNDS`` rounds, each
    running its share of calls back to back, then pausing briefly (untimed). Without ``repeats`` a path gets as many calls as fit
    ``budget_s`` (judged from its last warm-up call), between MIN_REPEATS and MAX_REPEATS.
    """
    clock = time.perf_counter
    calls = {p.key: 0 for p in paths}
    estimate = {}
    for path in paths:
        elapsed = budget_s
        for _ in range(max(1, warmup)):
            start = clock()
            path.run(calls[path.key])
            elapsed = clock() - start
            calls[path.key] += 1
        estimate[path.key] = elapsed
    samples: dict[str, list[float]] = {p.key: [] for p in paths}
    for round_index in range(ROUNDS):
        for path in paths:
            wanted = repeats or min(MAX_REPEATS, max(MIN_REPEATS, math.ceil(budget_s / max(estimate[path.key], 1e-7))))
            share = wanted // ROUNDS + (1 if round_index < wanted % ROUNDS else 0)
            run, times = path.run, samples[path.key]
            for _ in range(share):
                i = calls[path.key]
                start = clock()
                run(i)
                times.append(clock() - start)
                calls[path.key] = i + 1
            time.sleep(PAUSE_S)
    return samples


def measure_alternating(paths: Sequence[bench_paths.TimedPath], calls: int) -> list[np.ndarray]:
    """Seconds of each of ``calls`` calls of every path, the paths taking turns call by call in a
    fixed cycle (so each call follows a call of the path before it in ``paths``).

    For paths of a few microseconds, as TPEmbedding and ORT Gather are at 1 to 16 tokens (nearly
    all of it ONNX Runtime's per-call cost), the machine's state drifts by a few percent between
    the blocks that ``measure`` times, which decides the sign of a ratio this close to 1: timed in
    blocks, the ratio of the two landed anywhere in 0.94-1.12 over full runs on a 2-core development machine.
    Alternating call by call, drift hits them alike.

    What runs just before a call matters as well: a call that follows a call of the same op finds
    its code and branch history warm (about 2% faster here), and one that reads rows another call
    has just read finds them in cache. So the bench cycles Gather, TPEmbedding, Gather (second
    session), TPEmbedding (second session), and every call of either op follows one of the other;
    and call ``i`` of path ``k`` takes id set ``i * len(paths) + k + i // ID_SHIFT_CYCLES``
    (modulo the rotation). With the default 8 sets, no call reads rows that one of the 6 calls
    before it read, and every path, moved on by one set every 16 cycles, reads every set alike
    (with a fixed share of the sets per path, which sets a path got moved an A/A ratio by up to 4%).
    """
    clock = time.perf_counter
    times = [np.empty(calls) for _ in paths]
    for _ in range(min(calls, 200)):  # warm-up, in turn as well
        for path in paths:
            path.run(0)
    count = len(paths)
    for i in range(calls):
        for k, path in enumerate(paths):
            start = clock()
            path.run(i * count + k + i // ID_SHIFT_CYCLES)
            times[k][i] = clock() - start
    return times


# --------------------------------------------------------------------------------- the run
def run_benchmark(settings: dict[str, Any], emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every configuration of ``settings`` (see ``settings_from``) and returns the JSON document.

    ``emit`` receives the printed text a piece at a time (tables appear as they are measured).
    """
    device = settings["device"]
    machine = bench_report.machine_info(device, settings["torch"])
    emit(bench_report.header(machine, settings["rotations"]))
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []  # paths that raised (also listed in skipped)
    hidden = settings["hidden"]
    rng = np.random.default_rng(settings["seed"])
    with bench_paths.temporary_root() as scratch:
        for vocab in settings["vocab"]:
            for dtype_name in settings["dtype"]:
                dtype = dtypes.as_dtype(dtype_name)
                _run_table(settings, vocab, hidden, dtype, rng, Path(scratch), results, skipped, errors, emit)
    targets = bench_report.evaluate_targets(results, device)
    emit("")
    emit(bench_report.format_targets(targets, device))
    return {
        "tool": "graphbuild bench",
        "machine": machine,
        "settings": settings,
        "results": results,
        "skipped": skipped,
        "targets": targets,
        "errors": errors,
        "ok": all(passed(r) for r in results) and not errors,
    }


def _run_table(settings: dict[str, Any], vocab: int, hidden: int, dtype: dtypes.DType, rng: np.random.Generator, scratch: Path, results: list, skipped: list, errors: list, emit: Callable[[str], None]) -> None:
    device, engines = settings["device"], len(settings["tp"])
    table_bytes = vocab * hidden * dtype.itemsize
    available = bench_report.available_memory()
    fits = [t for t in settings["tokens"] if memory_needed(vocab, hidden, dtype, t, engines=engines) <= MEMORY_FRACTION * available]
    most = memory_needed(vocab, hidden, dtype, max(fits or settings["tokens"]), engines=engines)
    emit("")
    emit(f"vocab {vocab} x hidden {hidden}, {dtype}: table {format_bytes(table_bytes)}, needs about {format_bytes(most)} of RAM ({format_bytes(available)} available)")
    for tokens in settings["tokens"]:
        if tokens not in fits:
            need = memory_needed(vocab, hidden, dtype, tokens, engines=engines)
            reason = f"needs about {format_bytes(need)} of RAM, more than {MEMORY_FRACTION:.0%} of the {format_bytes(available)} available"
            emit(f"  skipped {tokens} tokens: {reason}")
            skipped.append({"vocab": vocab, "hidden": hidden, "dtype": dtype.name, "tokens": tokens, "reason": reason})
    if not fits:
        return
    table = make_table(vocab, hidden, dtype, rng)
    id_sets = {t: [rng.integers(0, vocab, size=t, dtype=np.int64) for _ in range(settings["rotations"])] for t in fits}
    engine_dirs = {}
    for tp_size in settings["tp"]:
        start = time.perf_counter()
        engine_dirs[tp_size] = bench_engine.build_engine(table, dtype, scratch, tp_size)
        emit(f"  engine (tp {tp_size}) built in {time.perf_counter() - start:.1f} s")
    lines_started = False
    try:
        for threads in settings["threads"]:
            setup = bench_paths.LookupSetup(table, dtype, threads, device, engine_dirs=engine_dirs, use_torch=settings["torch"], spin=settings["spin"])
            try:
                for label, reason in setup.skipped.items():
                    emit(f"  {threads} thread{'s' if threads > 1 else ''}: {label} left out: {reason}")
                    skipped.append({"vocab": vocab, "hidden": hidden, "dtype": dtype.name, "threads": threads, "path": label, "reason": reason})
                for tokens in fits:
                    failed: list[dict[str, Any]] = []
                    group = _run_group(settings, setup, vocab, hidden, dtype, threads, tokens, id_sets[tokens], failed)
                    results.extend(group)
                    text = bench_report.format_rows(group)
                    emit(text if not lines_started else "\n".join(text.splitlines()[2:]))
                    lines_started = True
                    paired = bench_report.format_paired(group)
                    if paired:
                        emit(paired)
                    for entry in failed:
                        emit(f"  {entry['path']} at {tokens} tokens, {threads} thread{'s' if threads > 1 else ''} left out: {entry['reason']}")
                        entry["check"] = entry["reason"]
                    skipped.extend(failed)
                    errors.extend(failed)
            finally:
                setup.close()
    finally:
        for engine_dir in engine_dirs.values():
            shutil.rmtree(engine_dir, ignore_errors=True)


def _run_group(settings: dict[str, Any], setup: bench_paths.LookupSetup, vocab: int, hidden: int, dtype: dtypes.DType, threads: int, tokens: int, id_sets: list[np.ndarray], failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checks, then times, every path of one (table, thread count, token count) configuration.

    A path that raises while it is checked is left out of the timing and reported in ``failed``.
    """
    checks = {}
    references: dict[str, np.ndarray] = {}
    paths = []
    for path in setup.paths(id_sets):
        try:
            if path.expects is None:
                path.run(0)
                checks[path.key] = "-"
            else:
                if path.expects not in references:
                    references[path.expects] = expected_output(setup.table, id_sets[0], path.expects, setup.shard_rows)
                checks[path.key] = check_output(path.result(0), references[path.expects])
        except Exception as exc:  # onnxruntime, torch and cupy raise their own exception types
            reason = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            failed.append({"vocab": vocab, "hidden": hidden, "dtype": dtype.name, "tokens": tokens, "threads": threads, "path": path.label, "reason": reason})
            continue
        paths.append(path)
    references.clear()
    samples = measure(paths, warmup=settings["warmup"], repeats=settings["repeats"], budget_s=settings["budget_s"])
    moved = 2 * tokens * hidden * dtype.itemsize
    group = []
    for path in paths:
        times = samples[path.key]
        ms = float(np.median(times)) * 1e3
        group.append(
            {
                "vocab": vocab,
                "hidden": hidden,
                "dtype": dtype.name,
                "tokens": tokens,
                "threads": threads,
                "device": settings["device"],
                "path": path.key,
                "label": path.label,
                "ms": ms,
                "ms_min": float(np.min(times)) * 1e3,
                "samples": len(times),
                "bytes": moved,
                "gb_per_s": moved / (ms * 1e6) if ms > 0 else 0.0,
                "check": checks[path.key],  # "-": nothing to check (the copy)
            }
        )
    group = bench_copy.best_of(group)
    bench_report.add_ratios(group)
    by_key = {r["path"]: r for r in group}
    if tokens <= PAIRED_MAX_TOKENS and "ort_gather" in by_key and "tp_embedding" in by_key:
        cycle = setup.alternating_paths(id_sets)  # Gather, TPEmbedding and their second sessions
        if cycle:
            ours = by_key["tp_embedding"]
            ours.update(alternating_ratios(measure_alternating(cycle, settings["paired_calls"])))
            ours["paired_calls"] = settings["paired_calls"]
    if tokens <= PAIRED_MAX_TOKENS and "engine_run" in by_key:
        cycle = setup.alternating_engine_paths(id_sets)  # bare session.run, engine.run
        if cycle:
            session_times, engine_times = measure_alternating(cycle, settings["paired_calls"])
            session_ms, engine_ms = float(np.median(session_times)) * 1e3, float(np.median(engine_times)) * 1e3
            by_key["engine_run"].update({"vs_session_paired": session_ms / engine_ms, "overhead_us_paired": (engine_ms - session_ms) * 1e3, "paired_calls": settings["paired_calls"]})
    return group


def alternating_ratios(times: Sequence[np.ndarray]) -> dict[str, float]:
    """The ratios of ``measure_alternating``'s times for the cycle Gather, TPEmbedding (and their
    second sessions): ``vs_gather_paired`` is Gather's median time over TPEmbedding's, each median
    over all of that op's calls; ``gather_control_paired`` and ``tp_control_paired`` are one op's
    first session's median over its second's."""
    def median(*parts: np.ndarray) -> float:
        return float(np.median(np.concatenate(parts)))

    if len(times) == 2:
        return {"vs_gather_paired": median(times[0]) / median(times[1])}
    return {
        "vs_gather_paired": median(times[0], times[2]) / median(times[1], times[3]),
        "gather_control_paired": median(times[0]) / median(times[2]),
        "tp_control_paired": median(times[1]) / median(times[3]),
    }


if __name__ == "__main__":
    from graphbuild.tools.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
