"""Stress test: concurrent ``overwrite`` builds and loads of one engine directory.

Builder processes rebuild one engine directory over and over (``overwrite=True``), each time
from another seed: the table's values, its hidden size and the sharding dim (all-reduce or
all-gather) change with the seed. Loader processes meanwhile load it (with and without checksum
verification) and run ids that touch every row of every shard. The engine's name says which seed
built it, so every result is checked against numpy for exactly that seed: a load that paired one
build's manifest with another's files, or mixed ranks of two builds, is counted as wrong. Loads
that fail with a clear ``GraphBuildError`` are allowed and counted by message.

Run it (exit status 1 when any result was wrong or nothing loaded)::

    python tools/stress_engine_dir.py --seconds 60 --builders 2 --loaders 2
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

VOCAB = 30
SEEDS = 6


def hidden_size(seed: int) -> int:
    return 4 + seed % 3


def table(seed: int):  # -> np.ndarray
    import numpy as np

    return np.random.default_rng(seed).standard_normal((VOCAB, hidden_size(seed))).astype(np.float32)


def network(seed: int):  # -> gb.Network
    import graphbuild as gb
    from graphbuild import functional as F

    net = gb.Network(f"stress_seed{seed}")
    with net:
        ids = net.add_input("input_ids", "int64", ("batch", "seq"))
        weight = gb.constant(table(seed), name="table")
        net.mark_output(F.embedding(ids, weight, tp_size=2, sharding_dim=seed % 2, name="lookup"), "emb")
    return net


def builder(target: str, index: int, deadline: float, results: Any) -> None:
    import graphbuild as gb

    counts: collections.Counter = collections.Counter()
    seed = index
    while True:  # at least once, however late the process started
        try:
            gb.build(network(seed % SEEDS), target, overwrite=True)
            counts["built"] += 1
        except gb.GraphBuildError as exc:
            counts[f"build error: {_first_words(exc)}"] += 1
        seed += 1
        if time.time() >= deadline:
            break
    results.put(("builder", dict(counts)))


def loader(target: str, index: int, deadline: float, results: Any) -> None:
    import numpy as np

    import graphbuild as gb

    ids = np.arange(VOCAB, dtype=np.int64).reshape(1, VOCAB)
    counts: collections.Counter = collections.Counter()
    wrong: list[str] = []
    verify = bool(index % 2)
    while True:  # at least once, however late the process started
        verify = not verify
        try:
            engine = gb.Engine.load(target, verify=verify)
            got = engine.run({"input_ids": ids})["emb"]
        except gb.GraphBuildError as exc:
            counts[f"load error: {_first_words(exc)}"] += 1
        else:
            seed = int(engine.name.removeprefix("stress_seed"))
            if got.shape == (1, VOCAB, hidden_size(seed)) and np.array_equal(got, table(seed)[ids]):
                counts["correct"] += 1
            else:
                counts["WRONG"] += 1
                wrong.append(f"engine '{engine.name}' gave {got.shape}, not seed {seed}'s rows")
        if time.time() >= deadline:
            break
    results.put(("loader", dict(counts), wrong[:5]))


def _first_words(exc: BaseException) -> str:
    """The message without paths and numbers, so equal causes count together."""
    text = re.sub(r"'[^']*'|/\S+|\d+", "_", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return text[:100]


def run(seconds: float, builders: int, loaders: int, workdir: Optional[str] = None) -> dict[str, Any]:
    """Runs the stress test; returns the counts (``correct``, ``WRONG``, errors by message)."""
    import graphbuild as gb

    parent = Path(workdir or tempfile.mkdtemp(prefix="graphbuild-stress-"))
    target = parent / "engine"
    gb.build(network(0), target, overwrite=target.exists())
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    deadline = time.time() + seconds
    workers = [context.Process(target=builder, args=(str(target), i, deadline, results)) for i in range(builders)]
    workers += [context.Process(target=loader, args=(str(target), i, deadline, results)) for i in range(loaders)]
    for worker in workers:
        worker.start()
    totals: collections.Counter = collections.Counter()
    wrong: list[str] = []
    for _ in workers:
        report = results.get(timeout=seconds + 600)
        totals.update(report[1])
        if report[0] == "loader":
            wrong += report[2]
    for worker in workers:
        worker.join(timeout=60)
    leftovers = sorted(p.name for p in parent.iterdir() if p.name != "engine")
    if workdir is None:
        shutil.rmtree(parent, ignore_errors=True)
    return {"counts": dict(totals), "wrong": wrong, "leftovers": leftovers}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long builders and loaders run (default 60)")
    parser.add_argument("--builders", type=int, default=2, help="builder processes (default 2)")
    parser.add_argument("--loaders", type=int, default=2, help="loader processes (default 2)")
    parser.add_argument("--workdir", help="folder for the engine (default: a new temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    outcome = run(args.seconds, args.builders, args.loaders, args.workdir)
    counts = outcome["counts"]
    for key in sorted(counts):
        print(f"{counts[key]:8d}  {key}")
    for line in outcome["wrong"]:
        print(f"wrong: {line}")
    print(f"leftovers beside the engine: {outcome['leftovers'] or 'none'}")
    if counts.get("WRONG", 0) or not counts.get("correct", 0) or outcome["leftovers"]:
        print("FAILED: wrong results, no successful load, or leftovers", file=sys.stderr)
        return 1
    print(f"OK: {counts['correct']} loads gave the right rows, {counts.get('built', 0)} builds, no wrong results")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
