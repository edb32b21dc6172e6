"""How the compiler scales: time per pass for synthetic networks of 1k to 8k nodes at tp_size 8.

    .venv/bin/python benchmarks/compiler_scaling.py [--nodes 1000 2000 4000 8000] [--tp-size 8]
                                                    [--quick] [--json]

Each network is a stack of small transformer-like blocks (hidden 16, vocab 64: small weights, so
the figures are the compiler's own cost): a tensor-parallel embedding per block, alternating vocab
and hidden split (so the partition emits an allreduce or an allgather and the segmenter cuts there),
then norms, matmuls, activations and elementwise ops, a constant subgraph for the folder and a dead
branch for dead-code elimination. The network is built, compiled (``gb.build``'s phases, timed one
by one by the compiler's phase runner: copy of the user's network, verify, shape inference, constant
folding, dead-code elimination, partition into ``tp_size`` rank networks, per-rank cleanup,
segmentation, ONNX lowering; then writing the engine directory) and not loaded (loading creates ONNX Runtime sessions: that is the executor's
cost, see ``executor_overhead.py``).

For each size it prints seconds per phase and, per doubling of the node count, the ratio of the
total to the previous size's: a linear compiler gives about 2.0, a quadratic pass 4.0. Targets: at
most 2.2 per doubling and under 5 s for the 8k-node network.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.build import compile_engine, write_compiled

HIDDEN = 16
VOCAB = 64
PHASES = ("build_network", "copy", "verify", "infer_shapes", "fold_constants", "eliminate_dead_code", "partition", "rank_dce", "segment", "lower_onnx", "write")


def block_nodes() -> int:
    """Nodes one block adds to the logical network (counted from a one-block network)."""
    return len(synthetic_network(1, tp_size=2).nodes)


def synthetic_network(blocks: int, *, tp_size: int, seed: int = 0) -> gb.Network:
    """A stack of ``blocks`` small blocks, each with a tensor-parallel embedding and its collective.

    Per block: ids made to depend on the hidden state (slice, less, where), embedding (vocab split on even blocks, hidden split on odd ones), add, rms_norm,
    matmul, gelu, matmul, add, layer_norm, silu, mul, mul by a scalar, add, relu, sub, a foldable
    constant subgraph (add of two constants, then a mul) and an unused relu for dead-code
    elimination.
    """
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    net = gb.Network(f"scaling{blocks}")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        x = net.add_input("x", "float32", ("n", HIDDEN))
        for b in range(blocks):
            with net.scope(f"block{b}"):
                table = gb.constant(weight(VOCAB, HIDDEN), name=f"block{b}.wte")
                # The ids depend on the running hidden state, so every block's collective is its own
                # stage and the segmenter cuts there: one segment per block per rank.
                block_ids = F.where(F.less(x[:, 0], 0.0), ids, ids)
                e = F.embedding(block_ids, table, tp_size=tp_size, sharding_dim=b % 2, name="wte")
                h = x + e
                h = F.rms_norm(h, gb.constant(weight(HIDDEN), name=f"block{b}.norm1"))
                m = F.matmul(h, gb.constant(weight(HIDDEN, HIDDEN), name=f"block{b}.w1"))
                m = F.gelu(m)
                m = F.matmul(m, gb.constant(weight(HIDDEN, HIDDEN), name=f"block{b}.w2"))
                h = h + m
                h = F.layer_norm(h, gb.constant(weight(HIDDEN), name=f"block{b}.ln_w"), gb.constant(weight(HIDDEN), name=f"block{b}.ln_b"))
                s = F.silu(h) * h
                folded = (gb.constant(weight(HIDDEN)) + gb.constant(weight(HIDDEN))) * 0.5  # constant subgraph
                h = h * 0.5 + s * folded
                F.relu(s)  # dead: nothing reads it
                x = F.relu(h) - h
        net.mark_output(x, "y")
    return net


def _timed(timings: dict[str, float], phase: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start
    return result


def measure(target_nodes: int, tp_size: int, workdir: Path) -> dict[str, Any]:
    """Builds, compiles and writes one network of about ``target_nodes`` nodes; returns the timings."""
    blocks = max(1, round(target_nodes / block_nodes()))
    gc.collect()
    timings: dict[str, float] = {}
    net = _timed(timings, "build_network", synthetic_network, blocks, tp_size=tp_size)
    compiled = compile_engine(net, timings=timings)
    _timed(timings, "write", write_compiled, compiled, workdir / f"engine{target_nodes}", overwrite=True)
    segments = sum(len(rank.segments) for rank in compiled.manifest.ranks)
    collectives = len(compiled.manifest.ranks[0].collectives)
    compile_total = sum(timings[p] for p in PHASES if p != "build_network")
    return {
        "nodes": len(net.nodes),
        "blocks": blocks,
        "tp_size": tp_size,
        "rank_nodes": sum(sum(rank.ops.values()) for rank in compiled.manifest.ranks),
        "segments": segments,
        "collectives_per_rank": collectives,
        "seconds": {p: timings.get(p, 0.0) for p in PHASES},
        "compile_seconds": compile_total,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    short = {"build_network": "build", "infer_shapes": "infer", "fold_constants": "fold", "eliminate_dead_code": "dce", "lower_onnx": "lower"}
    headers = ["nodes", "rank nodes", "segments"] + [short.get(p, p) for p in PHASES] + ["compile s", "x prev"]
    print(" ".join(f"{h:>10}" for h in headers))
    previous = None
    for row in rows:
        ratio = f"{row['compile_seconds'] / previous:.2f}" if previous else "-"
        cells = [str(row["nodes"]), str(row["rank_nodes"]), str(row["segments"])]
        cells += [f"{row['seconds'][p]:.3f}" for p in PHASES]
        cells += [f"{row['compile_seconds']:.3f}", ratio]
        print(" ".join(f"{c:>10}" for c in cells))
        previous = row["compile_seconds"]
    if len(rows) > 1:
        print("\nratio per doubling, per phase:")
        for p in PHASES:
            ratios = [b["seconds"][p] / a["seconds"][p] if a["seconds"][p] > 0 else float("nan") for a, b in zip(rows, rows[1:])]
            print(f"  {p:>20}: " + "  ".join(f"{r:.2f}" for r in ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 2000, 4000, 8000], help="logical network sizes (nodes)")
    parser.add_argument("--tp-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the fastest compile is kept")
    parser.add_argument("--quick", action="store_true", help="sizes 500 and 1000 only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    sizes = [500, 1000] if args.quick else args.nodes
    rows = []
    with tempfile.TemporaryDirectory(prefix="gb-scaling-") as tmp:
        for size in sizes:
            runs = [measure(size, args.tp_size, Path(tmp)) for _ in range(args.repeats)]
            rows.append(min(runs, key=lambda r: r["compile_seconds"]))
    ratios = [b["compile_seconds"] / a["compile_seconds"] for a, b in zip(rows, rows[1:])]
    if args.json:
        json.dump({"tp_size": args.tp_size, "rows": rows, "ratio_per_doubling": ratios}, sys.stdout, indent=2)
        print()
    else:
        print(f"compiler scaling, tp_size={args.tp_size}, hidden {HIDDEN}, vocab {VOCAB} (seconds per phase)\n")
        _print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
