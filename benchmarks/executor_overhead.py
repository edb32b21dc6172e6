"""What ``engine.run`` costs on top of ONNX Runtime, per segment and per collective, and its peak memory.

    .venv/bin/python benchmarks/executor_overhead.py [--threads 1] [--tokens 16] [--repeats 2000]
                                                    [--sections overhead,gather,memory]
                                                    [--gather-tp 1,2,4] [--quick] [--json]

Overhead: for each engine (one segment at tp 1; tp 2 and 4 with a collective between two segments
per rank; a 2-rank stack of 8 blocks with 8 collectives), ``engine.run`` is timed against bare ONNX
Runtime sessions running the same ONNX files with the same feeds and threads
(``session.run(None, feeds)`` per segment, timed one by one, each segment's inputs captured from a
run of the engine). Medians after warm-up, CPU provider.

- per segment: (engine - sum of bare segment runs - the engine's collective steps) / segments; it
  includes feed validation, copying the feeds into the engine's buffers and copying the outputs out;
- per collective: the engine's collective step (a tiny ONNX Runtime model on device buffers)
  against the same collective done in numpy on host arrays (``schedule.combine_host``).

Against ONNX Runtime's Gather (``--sections gather``): ``engine.run(feeds)`` without ``out=``, and
with ``out=``, against a bare ``InferenceSession.run`` of a one-node ONNX ``Gather`` model holding
the same float32 table (default 32000 x 4096), at 1, 16, 4096 and 16384 tokens, the calls of the
three alternating in one loop; ratio = Gather's median / the engine's (1.0 or more: the engine is at
least as fast), and the difference in microseconds.

Peak memory: each engine of a float32 table (tp 1, 2, 4) is loaded (checksums verified) in a fresh
subprocess and run over every row of the table (256 ids a call); it prints VmHWM (peak resident memory) above the process's resident memory
before loading, against the table size. ONNX Runtime maps external weight files into memory, so the
weights count once, as file-backed pages, whatever the tp size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.runtime.collectives import CollectiveRun
from graphbuild.runtime.ortvalues import host_view
from graphbuild.runtime.schedule import SegmentStep, combine_host
from graphbuild.runtime.session import session_options

CPU = ["CPUExecutionProvider"]


def _median_us(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(max(10, repeats // 20)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def embedding_network(tp_size: int, sharding_dim: int, vocab: int, hidden: int, *, post_op: bool) -> gb.Network:
    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32)
    net = gb.Network(f"emb_tp{tp_size}")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        out = F.embedding(ids, gb.constant(table, name="wte.weight"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte")
        if post_op:
            out = F.rms_norm(out, gb.constant(np.ones(hidden, np.float32), name="norm.weight"))
        net.mark_output(out, "emb")
    return net


def stacked_network(blocks: int, tp_size: int) -> gb.Network:
    sys.path.insert(0, str(Path(__file__).parent))
    from compiler_scaling import synthetic_network

    return synthetic_network(blocks, tp_size=tp_size)


def _feeds(engine: gb.Engine, tokens: int, rng: np.random.Generator, vocab: int, hidden: int) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {"ids": rng.integers(0, vocab, size=tokens)}
    if any(spec.name == "x" for spec in engine.inputs):
        feeds["x"] = rng.standard_normal((tokens, hidden)).astype(np.float32)
    return feeds


def overhead(label: str, engine: gb.Engine, feeds: dict[str, np.ndarray], threads: int, repeats: int) -> dict[str, Any]:
    """Times ``engine.run`` against bare sessions of the same segment files."""
    engine.run(feeds)  # makes the plan: buffers and bindings for these shapes
    executor = engine._executor
    plan = next(iter(executor._plans.values()))
    engine_us = _median_us(lambda: engine.run(feeds), repeats)

    # Bare ONNX Runtime: each segment file in its own session, fed the engine's own inputs.
    options = session_options(needs_plugin=bool(engine.manifest.custom_ops), intra_op_threads=threads)
    bare_us = 0.0
    segments = 0
    for run in plan.runs:
        if isinstance(run, CollectiveRun):
            continue
        spec: SegmentStep = run.spec
        session = ort.InferenceSession(str(engine.path / spec.file), sess_options=options, providers=CPU)
        inputs = {name: _host_copy(value) for name, value in zip(spec.inputs, run.inputs)}
        bare_us += _median_us(lambda: session.run(None, inputs), repeats)
        segments += 1

    collectives = [run for run in plan.runs if isinstance(run, CollectiveRun)]
    engine_coll_us = sum(_median_us(c.run, repeats) for c in collectives)
    numpy_coll_us = 0.0
    for c in collectives:
        spec = c.spec
        arrays = [_host_copy(v) for v in c.inputs]
        numpy_coll_us += _median_us(lambda: combine_host(spec, arrays), repeats)
    per_segment = (engine_us - bare_us - engine_coll_us) / max(segments, 1)
    return {
        "engine": label,
        "tp_size": engine.tp_size,
        "segments": segments,
        "collectives": len(collectives),
        "engine_run_us": engine_us,
        "bare_segments_us": bare_us,
        "overhead_per_segment_us": per_segment,
        "collective_us": engine_coll_us / max(len(collectives), 1) if collectives else None,
        "numpy_collective_us": numpy_coll_us / max(len(collectives), 1) if collectives else None,
    }


def _host_copy(value: Any) -> np.ndarray:
    return host_view(value).copy()


_CHILD = r"""
import json, sys
import numpy as np
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
import graphbuild as gb
before = status()
engine = gb.Engine.load(sys.argv[1], providers=["CPUExecutionProvider"], intra_op_threads=1)
vocab = int(sys.argv[2])
for start in range(0, vocab, 256):  # every row once, 256 tokens a call: weights, not activations
    engine.run({"ids": (np.arange(256) + start) % vocab})
after = status()
print(json.dumps({"before": before, "after": after}))
"""


def peak_memory(workdir: Path, vocab: int, hidden: int, tp_sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    table_bytes = vocab * hidden * 4
    for tp in tp_sizes:
        path = workdir / f"mem_tp{tp}"
        gb.build(embedding_network(tp, 0, vocab, hidden, post_op=False), path, providers=CPU, overwrite=True)
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(vocab)], capture_output=True, text=True, check=True)
        data = json.loads(done.stdout.strip().splitlines()[-1])
        before, after = data["before"], data["after"]
        rows.append(
            {
                "tp_size": tp,
                "table_bytes": table_bytes,
                "peak_above_start_bytes": after["VmHWM"] - before["VmRSS"],
                "anon_growth_bytes": after["RssAnon"] - before["RssAnon"],
                "file_growth_bytes": after["RssFile"] - before["RssFile"],
            }
        )
    return rows


def gather_model(table: np.ndarray, path: Path) -> Path:
    """A one-node ONNX ``Gather`` over ``table`` (external data), as a user would export a lookup."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, ["n", table.shape[1]])],
        [numpy_helper.from_array(table, "table")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def _alternating_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) * 1e6 for name, values in times.items()}


def against_gather(work: Path, vocab: int, hidden: int, tokens: list[int], tp_sizes: list[int], threads: int, repeats: int) -> list[dict[str, Any]]:
    """``engine.run`` (without and with ``out=``) against a bare ORT ``Gather`` session, side by side."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, hidden), dtype=np.float32)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(gather_model(table, work / "gather.onnx")), sess_options=options, providers=CPU)
    rows = []
    for tp in tp_sizes:
        net = gb.Network(f"lookup_tp{tp}")
        with net:
            ids = net.add_input("ids", "int64", ("n",))
            net.mark_output(F.embedding(ids, gb.constant(table, name="wte.weight"), tp_size=tp, name="wte"), "emb")
        gb.build(net, work / f"lookup_tp{tp}", providers=CPU, overwrite=True)
        engine = gb.Engine.load(work / f"lookup_tp{tp}", providers=CPU, intra_op_threads=threads or None)
        for count in tokens:
            feeds = {"ids": rng.integers(0, vocab, size=count)}
            out = {"emb": np.empty((count, hidden), np.float32)}
            calls = max(5, repeats if count <= 16 else repeats // 100)
            med = _alternating_medians(
                {"ort": lambda: session.run(None, {"ids": feeds["ids"]}), "run": lambda: engine.run(feeds), "run_out": lambda: engine.run(feeds, out=out)}, calls
            )
            rows.append({"tp_size": tp, "tokens": count, "gather_us": med["ort"], "run_us": med["run"], "run_out_us": med["run_out"], "ratio": med["ort"] / med["run"], "ratio_out": med["ort"] / med["run_out"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, engine and bare sessions alike")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--vocab", type=int, default=32000, help="table rows of the peak-memory engines")
    parser.add_argument("--hidden", type=int, default=1024, help="table columns of the peak-memory engines")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller table")
    parser.add_argument("--sections", default="overhead,gather,memory", help="comma-separated: overhead, gather, memory")
    parser.add_argument("--gather-vocab", type=int, default=32000)
    parser.add_argument("--gather-hidden", type=int, default=4096)
    parser.add_argument("--gather-tokens", default="1,16,4096,16384")
    parser.add_argument("--gather-tp", default="1", help="tp sizes of the engines timed against Gather, e.g. 1,2,4")
    parser.add_argument("--gather-threads", type=int, default=0, help="intra-op threads of both (0: ONNX Runtime's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.vocab, args.gather_hidden = min(args.repeats, 300), min(args.vocab, 8000), min(args.gather_hidden, 1024)
    sections = set(args.sections.split(","))
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    gather: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gb-overhead-") as tmp:
        work = Path(tmp)
        cases = [
            ("tp1, 1 segment", embedding_network(1, 0, 1000, 64, post_op=False), 1000, 64),
            ("tp2 vocab split + norm", embedding_network(2, 0, 1000, 64, post_op=True), 1000, 64),
            ("tp4 hidden split + norm", embedding_network(4, 1, 1000, 64, post_op=True), 1000, 64),
            ("tp2, 8 blocks", stacked_network(8, 2), 64, 16),
        ]
        for i, (label, net, vocab, hidden) in enumerate(cases if "overhead" in sections else []):
            engine = gb.build(net, work / f"case{i}", providers=CPU)
            engine = gb.Engine.load(work / f"case{i}", providers=CPU, intra_op_threads=args.threads)
            rows.append(overhead(label, engine, _feeds(engine, args.tokens, rng, vocab, hidden), args.threads, args.repeats))
        if "gather" in sections:
            tokens = [int(t) for t in args.gather_tokens.split(",")]
            tps = [int(t) for t in args.gather_tp.split(",")]
            gather = against_gather(work, args.gather_vocab, args.gather_hidden, tokens, tps, args.gather_threads, args.repeats)
        if "memory" in sections:
            memory = peak_memory(work, args.vocab, args.hidden, [1, 2, 4])
    if args.json:
        json.dump({"threads": args.threads, "tokens": args.tokens, "overhead": rows, "gather": gather, "memory": memory}, sys.stdout, indent=2)
        print()
        return 0
    if rows:
        _print_overhead(args, rows)
    if gather:
        threads = args.gather_threads or "default"
        print(f"\nengine.run against a bare ORT Gather session, float32 {args.gather_vocab}x{args.gather_hidden}, {threads} thread(s), calls alternating (median microseconds; ratio = Gather / engine, >= 1.0: the engine is at least as fast)\n")
        print(f"{'tp':>3} {'tokens':>7} {'Gather':>10} {'run':>10} {'ratio':>6} {'run-Gather':>11} {'run(out=)':>10} {'ratio':>6}")
        for g in gather:
            print(f"{g['tp_size']:>3} {g['tokens']:>7} {g['gather_us']:>10.1f} {g['run_us']:>10.1f} {g['ratio']:>6.2f} {g['run_us'] - g['gather_us']:>11.1f} {g['run_out_us']:>10.1f} {g['ratio_out']:>6.2f}")
    if memory:
        _print_memory(args, memory)
    return 0


def _print_overhead(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(f"executor overhead, CPU provider, {args.threads} thread(s), {args.tokens} tokens (median microseconds)\n")
    print(f"{'engine':>26} {'segments':>8} {'coll.':>5} {'engine.run':>10} {'bare ORT':>10} {'per segment':>11} {'collective':>10} {'numpy coll.':>11}")
    for r in rows:
        coll = f"{r['collective_us']:.1f}" if r["collective_us"] is not None else "-"
        ncoll = f"{r['numpy_collective_us']:.1f}" if r["numpy_collective_us"] is not None else "-"
        print(f"{r['engine']:>26} {r['segments']:>8} {r['collectives']:>5} {r['engine_run_us']:>10.1f} {r['bare_segments_us']:>10.1f} {r['overhead_per_segment_us']:>11.1f} {coll:>10} {ncoll:>11}")


def _print_memory(args: argparse.Namespace, memory: list[dict[str, Any]]) -> None:
    mib = 1 << 20
    print(f"\npeak memory of a loaded engine after running every row, float32 table {args.vocab}x{args.hidden} ({memory[0]['table_bytes'] / mib:.0f} MiB)\n")
    print(f"{'tp_size':>7} {'peak above start MiB':>20} {'x table':>8} {'anon MiB':>9} {'file-backed MiB':>15}")
    for m in memory:
        print(f"{m['tp_size']:>7} {m['peak_above_start_bytes'] / mib:>20.1f} {m['peak_above_start_bytes'] / m['table_bytes']:>8.2f} {m['anon_growth_bytes'] / mib:>9.1f} {m['file_growth_bytes'] / mib:>15.1f}")


if __name__ == "__main__":
    sys.exit(main())
