"""The script the MPI tests start under ``mpiexec``: ``python worker.py TASK SPEC.json``.

Every process loads engines with ``executor="mpi"`` and writes what it saw to files named by the
spec, which the test (in the pytest process) compares with the local executor and with numpy.

A spec with ``gpu_per_rank`` makes each process see only its own GPU (``CUDA_VISIBLE_DEVICES``).

Tasks:
- ``run``: for each job ``{path, feeds, out, options, feeds_on, world_ranks_of}``, load the engine
  (only on the world ranks listed for it, default all), run it twice (the second call reuses the
  plan and writes into ``out=`` arrays), and write ``{out}.rank{R}.npz`` with ``first/NAME`` and ``second/NAME`` arrays and
  ``all{r}/NAME`` from ``run_all_ranks`` (and ``feed/NAME``: the feeds after the calls, where
  this rank had its own).
- ``fault``: ``{jobs: [{path, feeds_by_rank: [npz, ...], out}], then}``: per job each rank runs
  with its own feeds; the error each rank raised (class, message) goes to ``{out}.rank{R}.json``;
  then the engine runs again with the good feeds of ``then`` and its outputs go to
  ``{out}.rank{R}.npz``.
- ``kill``: rank 1 kills itself (SIGKILL) after loading; the others run.
- ``hang``: rank 1 sleeps ``seconds`` after loading; the others run.
- ``staged``: the host-staged collectives of CUDA tensors, driven with CPU tensors.
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
        out = {name: np.empty_like(array) for name, array in first.items()}
        second = engine.run(feeds, out=out)  # the plan made by the first call, into caller arrays
        every = engine.run_all_ranks(feeds)
        arrays = {f"first/{k}": v for k, v in first.items()}
        arrays["meta/out_used"] = np.array(all(second[name] is out[name] for name in out))
        arrays.update({f"feed/{k}": v for k, v in (feeds or {}).items()})
        arrays.update({f"second/{k}": v for k, v in second.items()})
        for r, outputs in enumerate(every):
            arrays.update({f"all{r}/{k}": v for k, v in outputs.items()})
        arrays["meta/device"] = np.array(engine.executor.device)
        arrays["meta/nccl"] = np.array(engine.executor.nccl)
        arrays = {k: (v.astype(np.float32) if v.dtype.kind == "V" or v.dtype.name == "bfloat16" else v) for k, v in arrays.items()}
        np.savez(f"{job['out']}.rank{world_rank}.npz", **arrays)


def _fault(spec: dict, world_rank: int) -> None:
    for job in spec["jobs"]:
        engine = gb.Engine.load(job["path"], executor="mpi")
        try:
            engine.run(_feeds(job["feeds_by_rank"][world_rank]))
            outcome = None
        except GraphBuildError as exc:
            outcome = [type(exc).__name__, str(exc)]
        Path(f"{job['out']}.rank{world_rank}.json").write_text(json.dumps(outcome))
        np.savez(f"{job['out']}.rank{world_rank}.npz", **engine.run(_feeds(spec["then"])))


def _staged(spec: dict, world_rank: int) -> None:
    """The host-staged path for device tensors, driven with CPU OrtValues: an all-reduce and an
    uneven all-gather along axis 1 of this rank's ``(2, world_rank + 2)`` float32 block."""
    from mpi4py import MPI

    from graphbuild import dtypes
    from graphbuild.runtime.collectives import SessionCache
    from graphbuild.runtime.nccl_collectives import StagedCollective
    from graphbuild.runtime.ortvalues import allocate, host_view, to_ortvalue
    from graphbuild.runtime.schedule import CollectiveStep

    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    sessions = SessionCache(["CPUExecutionProvider"], None)
    block = np.random.default_rng(world_rank).standard_normal((2, world_rank + 2)).astype(np.float32)
    same = np.random.default_rng(world_rank).standard_normal((3, 4)).astype(np.float32)
    results = {}
    for op, array, shapes, shape in (
        ("allreduce", same, [(3, 4)] * size, (3, 4)),
        ("allgather", block, [(2, r + 2) for r in range(size)], (2, sum(r + 2 for r in range(size)))),
    ):
        step = CollectiveStep(op, op, 1, tuple(range(size)), "x", "y", axis=1)
        source, target = to_ortvalue(array), allocate(shape, dtypes.float32, "cpu")
        StagedCollective(comm, MPI, step, source, target, shapes, sessions).run()
        results[op] = host_view(target).copy()
    np.savez(f"{spec['out']}.rank{world_rank}.npz", **results)


def main() -> int:
    from mpi4py import MPI

    task, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    world_rank = MPI.COMM_WORLD.Get_rank()
    if spec.get("gpu_per_rank"):  # before anything touches CUDA: this rank sees only its own GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("MPI_LOCALRANKID", str(world_rank))
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
    elif task == "staged":
        _staged(spec, world_rank)
    elif task == "load":
        gb.Engine.load(spec["paths"][world_rank], executor="mpi")
    else:
        raise SystemExit(f"unknown task {task}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
