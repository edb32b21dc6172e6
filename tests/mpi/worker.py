"""The script the MPI tests start under ``mpiexec``: ``python worker.py TASK SPEC.json``.

Every process loads engines with ``executor="mpi"`` and writes what it saw to files named by the
spec, which the test (in the pytest process) compares with the local executor and with numpy.

Tasks:
- ``run``: for each job ``{path, feeds, out, options, feeds_on, world_ranks_of}``, load the engine
  (only on the world ranks listed for it, default all), run it twice (the second call reuses the
  plan), and write ``{out}.rank{R}.npz`` with ``first/NAME`` and ``second/NAME`` arrays and
  ``all{r}/NAME`` from ``run_all_ranks``.
- ``fault``: ``{path, feeds_by_rank: [npz, ...], out, then}``: each rank runs with its own feeds;
  the error each rank raised (class, message) goes to ``{out}.rank{R}.json``; with ``then`` (an npz
  of good feeds) the engine runs again and its outputs go to ``{out}.rank{R}.npz``.
- ``kill``: rank 1 kills itself (SIGKILL) after loading; the others run.
- ``hang``: rank 1 sleeps ``seconds`` after loading; the others run.
- ``load``: every rank loads ``paths[world rank]`` (errors are left to the CLI-like handler below).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import graphbuild as gb
from graphbuild.errors import GraphBuildError


def _feeds(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def _run(spec: dict, world_rank: int) -> None:
    for job in spec["jobs"]:
        ranks = job.get("world_ranks_of")
        if ranks is not None and world_rank not in ranks:
            continue
        engine = gb.Engine.load(job["path"], executor="mpi", executor_options=job.get("options") or {})
        rank = engine.executor.rank
        if job.get("feeds_by_replica"):
            feeds = _feeds(job["feeds_by_replica"][world_rank // engine.tp_size]) if rank == 0 else None
        else:
            feeds = _feeds(job["feeds"]) if job.get("feeds_on", "rank0") == "all" or rank == 0 else None
        first = engine.run(feeds)
        second = engine.run(feeds)
        every = engine.run_all_ranks(feeds)
        arrays = {f"first/{k}": v for k, v in first.items()}
        arrays.update({f"second/{k}": v for k, v in second.items()})
        for r, outputs in enumerate(every):
            arrays.update({f"all{r}/{k}": v for k, v in outputs.items()})
        arrays["meta/device"] = np.array(engine.executor.device)
        arrays["meta/nccl"] = np.array(engine.executor.nccl)
        arrays = {k: (v.astype(np.float32) if v.dtype.kind == "V" or v.dtype.name == "bfloat16" else v) for k, v in arrays.items()}
        np.savez(f"{job['out']}.rank{world_rank}.npz", **arrays)


def _fault(spec: dict, world_rank: int) -> None:
    engine = gb.Engine.load(spec["path"], executor="mpi")
    feeds = _feeds(spec["feeds_by_rank"][world_rank])
    try:
        engine.run(feeds)
        outcome = None
    except GraphBuildError as exc:
        outcome = [type(exc).__name__, str(exc)]
    Path(f"{spec['out']}.rank{world_rank}.json").write_text(json.dumps(outcome))
    if spec.get("then"):
        np.savez(f"{spec['out']}.rank{world_rank}.npz", **engine.run(_feeds(spec["then"])))


def main() -> int:
    from mpi4py import MPI

    task, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    world_rank = MPI.COMM_WORLD.Get_rank()
    if task == "run":
        _run(spec, world_rank)
    elif task == "fault":
        _fault(spec, world_rank)
    elif task in ("kill", "hang"):
        engine = gb.Engine.load(spec["path"], executor="mpi")
        if world_rank == 1:
            if task == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(spec["seconds"])
        engine.run(_feeds(spec["feeds"]))
    elif task == "load":
        gb.Engine.load(spec["paths"][world_rank], executor="mpi")
    else:
        raise SystemExit(f"unknown task {task}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
