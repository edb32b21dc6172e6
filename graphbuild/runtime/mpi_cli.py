"""``graphbuild run`` under ``mpiexec``: each process loads and runs its own rank.

``graphbuild run`` calls ``run_under_mpi`` when it was started by an MPI launcher (or with
``--executor mpi``). Rank 0 reads the ``--input`` sources and the feeds are broadcast; rank 0
prints and writes the outputs (every rank's, gathered to rank 0, with ``--all-ranks``).

Errors: an error every rank agreed on (``mpi_env.agree``: world size, a rank's bad file, feed or
kernel) ends every process with the CLI's one-line message and exit status 1. Any other error
on one rank (one the other ranks cannot know about, like an engine directory missing on one
host) is printed by that rank, which then aborts the MPI job (``MPI_Abort``): the launcher ends
every process at once and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from graphbuild.errors import GraphBuildError
from graphbuild.runtime.mpi_env import INSTALL_HINT, MPIUnavailableError, abort, find_mpiexec, import_mpi, launched_by_mpi


def wants_mpi(executor: str) -> bool:
    """Whether ``--executor`` (``auto``, ``local`` or ``mpi``) picks the MPI executor here."""
    return executor == "mpi" or (executor == "auto" and launched_by_mpi())


def run_under_mpi(
    args: argparse.Namespace,
    read_inputs: Callable[[Any, Any, str], dict[str, np.ndarray]],
    report: Callable[[Any, list[tuple[str, Mapping[str, np.ndarray]]], str, Optional[Path]], None],
) -> int:
    """``graphbuild run`` in this MPI process.

    Args:
        args: the parsed ``run`` arguments (``engine``, ``inputs``, ``no_verify``, ``all_ranks``,
            ``replicas``, ``verbose``).
        read_inputs: ``read_inputs(items, specs, engine_name)``, the CLI's ``--input`` parser.
        report: ``report(engine, [(heading, outputs), ...], timing_line, output_path)`` prints the
            outputs and writes them to ``--output``.

    Returns:
        0 on success. Agreed errors are raised (the CLI prints them and exits 1); others abort the job.
    """
    if not launched_by_mpi() and find_mpiexec() is None:
        raise MPIUnavailableError(f"--executor mpi: no mpiexec next to {sys.executable} or on PATH; {INSTALL_HINT}")
    mpi = import_mpi()
    world_rank = mpi.COMM_WORLD.Get_rank()
    try:
        return _run(args, mpi, read_inputs, report)
    except GraphBuildError as exc:
        if getattr(exc, "shared_by_ranks", False):
            raise  # every rank raises it: each exits with the one-line message
        _abort_with(mpi, world_rank, exc, args)
    except Exception as exc:
        _abort_with(mpi, world_rank, exc, args)
    return 1  # not reached: _abort_with ends the process


def _abort_with(mpi: Any, rank: int, exc: BaseException, args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, GraphBuildError):
        message = f"unexpected {type(exc).__name__}: {message}"
    sys.stderr.write(f"graphbuild: error: rank {rank}: {message} (aborting the MPI job)\n")  # one write: ranks share stderr
    abort(mpi, 1)


def _run(args: argparse.Namespace, mpi: Any, read_inputs: Callable[..., dict[str, np.ndarray]], report: Callable[..., None]) -> int:
    import graphbuild as gb

    start = time.perf_counter()
    engine = gb.Engine.load(args.engine, verify=not args.no_verify, executor="mpi", executor_options={"replicas": args.replicas})
    executor = engine.executor
    loaded = time.perf_counter()
    feeds: Optional[dict[str, np.ndarray]] = None
    error: Optional[BaseException] = None
    if executor.rank == 0:
        try:
            feeds = read_inputs(args.inputs, engine.inputs, engine.name)
        except GraphBuildError as exc:
            error = exc
    feeds = executor.share_feeds(feeds, error)
    begin = time.perf_counter()
    if args.all_ranks:
        every = engine.run_all_ranks(feeds)
        sections = [(f"rank {rank}", outputs) for rank, outputs in enumerate(every)]
    else:
        sections = [("", engine.run(feeds))]
    ran = time.perf_counter()
    if executor.rank == 0 and mpi.COMM_WORLD.Get_rank() == 0:
        replicas = f", {args.replicas} replicas" if args.replicas > 1 else ""
        size = executor.comm.Get_size()
        processes = f"{size} MPI process{'es' if size > 1 else ''}"
        timing = f"engine '{engine.name}' (tp_size {engine.tp_size}, {processes}{replicas}): load {1000 * (loaded - start):.0f} ms, run {1000 * (ran - begin):.1f} ms"
        report(engine, sections, timing, Path(args.output) if args.output else None)
    return 0
