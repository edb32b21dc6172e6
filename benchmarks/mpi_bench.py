"""The MPI executor's speed: one network at tp 2 in two processes, at tp 1 in one process, and at
tp 2 in one process (the local executor); and graphbuild's collectives against mpi4py's own.

    python benchmarks/mpi_bench.py                 # both parts (needs mpiexec: make install)
    python benchmarks/mpi_bench.py --quick         # smaller sizes and fewer repeats
    python benchmarks/mpi_bench.py --part collectives

Engines: a memory-bound case (an embedding lookup of 4096 tokens from a 32000 x 1024 float32
table, vocab split) and a compute-bound one (an MLP block, hidden 1024, 128 tokens). Each
configuration runs in its own process(es); the median time per ``engine.run`` is printed with the
ratios. Collectives: one ``allreduce`` (sum) and one ``allgather`` (axis 0) of float32 buffers of
1 KiB, 1 MiB and 64 MiB between two processes, through graphbuild's MPI collective layer
(``HostAllreduce``/``HostAllgather``) and through mpi4py's ``Allreduce``/``Allgather`` on the same
buffers, calls alternating; the ratio is graphbuild's median over mpi4py's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import graphbuild as gb
from graphbuild import layers
from graphbuild.runtime.mpi_env import find_mpiexec


def _median_time(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: the plan is made by the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---------------------------------------------------------------------------------- engines
def _embedding(path: Path, tp_size: int, vocab: int, hidden: int) -> None:
    wte = layers.Embedding(vocab, hidden, tp_size=tp_size, sharding_dim=0, seed=0, name="wte")
    net = gb.Network("bench_embedding")
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        net.mark_output(wte(ids), "embeddings")
    gb.build(net, path, overwrite=True)


def _mlp(path: Path, tp_size: int, hidden: int) -> None:
    def make(mapping: layers.Mapping) -> gb.Network:
        mlp = layers.MLP(hidden, 4 * hidden, hidden_act="gelu", seed=1, **mapping.tp_kwargs())
        net = gb.Network(f"bench_mlp.rank{mapping.tp_rank}")
        with net:
            x = net.add_input("x", "float32", ("batch", "seq", hidden))
            net.mark_output(mlp(x), "y")
        return net

    gb.build(layers.build_rank_networks(make, tp_size), path, overwrite=True)


def _feeds(case: str, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if case == "embedding":
        return {"input_ids": rng.integers(0, sizes["vocab"], size=(1, sizes["tokens"])).astype(np.int64)}
    return {"x": rng.standard_normal((1, sizes["mlp_tokens"], sizes["hidden_mlp"])).astype(np.float32)}


def _engine_worker(args: argparse.Namespace) -> None:
    """Under mpiexec: time ``engine.run`` with the MPI executor; rank 0 prints JSON."""
    sizes = json.loads(args.sizes)
    engine = gb.Engine.load(args.engine, executor="mpi", intra_op_threads=1)
    feeds = _feeds(args.case, sizes)
    seconds = _median_time(lambda: engine.run(feeds), args.repeats)
    if engine.executor.rank == 0:
        print(json.dumps({"seconds": seconds}), flush=True)


def _mpiexec(n: int, argv: list[str]) -> str:
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SystemExit("mpiexec not found: run make install (pip install 'graphbuild[mpi]')")
    done = subprocess.run([str(mpiexec), "-n", str(n), sys.executable, __file__, *argv], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"mpiexec failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def bench_engines(sizes: dict[str, int], repeats: int) -> None:
    print("engines (median seconds per engine.run; intra_op_threads=1 per process)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for case in ("embedding", "mlp"):
            for tp_size in (1, 2):
                if case == "embedding":
                    _embedding(root / f"{case}{tp_size}", tp_size, sizes["vocab"], sizes["hidden_emb"])
                else:
                    _mlp(root / f"{case}{tp_size}", tp_size, sizes["hidden_mlp"])
            feeds = _feeds(case, sizes)
            one = gb.Engine.load(root / f"{case}1", intra_op_threads=1)
            tp1 = _median_time(lambda: one.run(feeds), repeats)
            local = gb.Engine.load(root / f"{case}2", intra_op_threads=1)
            tp2_local = _median_time(lambda: local.run(feeds), repeats)
            del one, local
            out = _mpiexec(2, ["--engine-worker", str(root / f"{case}2"), "--case", case, "--sizes", json.dumps(sizes), "--repeats", str(repeats)])
            tp2_mpi = json.loads(out.strip().splitlines()[-1])["seconds"]
            what = f"embedding {sizes['vocab']}x{sizes['hidden_emb']}, {sizes['tokens']} tokens" if case == "embedding" else f"MLP hidden {sizes['hidden_mlp']}, {sizes['mlp_tokens']} tokens"
            print(f"  {what}")
            print(f"    tp 1, one process            {1e3 * tp1:9.3f} ms")
            print(f"    tp 2, local executor         {1e3 * tp2_local:9.3f} ms")
            print(f"    tp 2, two MPI processes      {1e3 * tp2_mpi:9.3f} ms")
            print(f"    ratios: tp1 / mpi2 = {tp1 / tp2_mpi:.2f}x   local2 / mpi2 = {tp2_local / tp2_mpi:.2f}x")


# -------------------------------------------------------------------------------- collectives
def _collectives_worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    from graphbuild.runtime.mpi_collectives import HostAllgather, HostAllreduce

    comm = MPI.COMM_WORLD.Dup()
    size = comm.Get_size()
    rows = []
    for nbytes in json.loads(args.sizes):
        count = nbytes // 4
        repeats = max(5, min(args.repeats * 100, (1 << 28) // max(nbytes, 1) // 4))
        source = np.random.default_rng(comm.Get_rank()).standard_normal(count).astype(np.float32)
        reduced = np.empty_like(source)
        gathered = np.empty(count * size, np.float32)
        ours_reduce = HostAllreduce(comm, MPI, source, reduced)
        ours_gather = HostAllgather(comm, MPI, source, gathered, [(count,)] * size, 0)
        pairs = {
            "allreduce": (ours_reduce.run, lambda: comm.Allreduce(source, reduced, op=MPI.SUM)),
            "allgather": (ours_gather.run, lambda: comm.Allgather(source, gathered)),
        }
        for op, (ours, theirs) in pairs.items():
            ours(), theirs()
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            for _ in range(repeats):
                for key, call in (("ours", ours), ("theirs", theirs)):
                    comm.Barrier()
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
            rows.append((op, nbytes, float(np.median(times["ours"])), float(np.median(times["theirs"]))))
    if comm.Get_rank() == 0:
        print(json.dumps(rows), flush=True)


def bench_collectives(sizes: list[int], repeats: int) -> None:
    out = _mpiexec(2, ["--collectives-worker", "--sizes", json.dumps(sizes), "--repeats", str(repeats)])
    rows = json.loads(out.strip().splitlines()[-1])
    print("collectives between 2 processes, float32 (median of alternating calls)")
    print(f"  {'op':10} {'size':>8} {'graphbuild':>12} {'mpi4py':>12} {'ratio':>7}")
    for op, nbytes, ours, theirs in rows:
        label = f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"
        print(f"  {op:10} {label:>8} {1e6 * ours:10.1f} us {1e6 * theirs:10.1f} us {ours / theirs:6.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "engines", "collectives"), default="all")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--engine-worker", dest="engine", help=argparse.SUPPRESS)
    parser.add_argument("--collectives-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        _engine_worker(args)
        return 0
    if args.collectives_worker:
        _collectives_worker(args)
        return 0
    repeats = args.repeats or (5 if args.quick else 20)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.part in ("all", "engines"):
        sizes = {"vocab": 32000, "hidden_emb": 256 if args.quick else 1024, "tokens": 4096, "hidden_mlp": 256 if args.quick else 1024, "mlp_tokens": 128}
        bench_engines(sizes, repeats)
    if args.part in ("all", "collectives"):
        bench_collectives([1 << 10, 1 << 20] + ([] if args.quick else [64 << 20]), repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
