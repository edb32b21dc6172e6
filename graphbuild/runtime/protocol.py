"""What an executor is: the ``Executor`` protocol ``Engine`` runs through, and what it is made from.

An executor runs the steps of a ``Schedule`` (``graphbuild.runtime.schedule``) for the ranks it
owns: the local executor owns every rank, in one process; the MPI executor owns one rank per
process. ``Engine.load(path, executor=...)`` builds one from an ``ExecutorRequest`` through a
factory registered by name (``"local"``, ``"mpi"``), or takes a ready ``Executor`` instance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from graphbuild.runtime.schedule import Schedule


@runtime_checkable
class Executor(Protocol):
    """Runs an engine's schedule. Feeds reach it validated (names, dtypes, shapes) by ``Engine``.

    Attributes:
        schedule: the engine's per-rank steps.
        ranks: the ranks this process runs (every rank for the local executor).
    """

    schedule: Schedule

    @property
    def ranks(self) -> Sequence[int]: ...

    def run(self, feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Runs one call; returns this process's outputs (rank 0's for the local executor) by name.

        The arrays returned belong to the caller (distinct, never overwritten by a later call);
        ``out`` arrays receive the outputs of their names and are left as they were on error.
        """
        ...

    def run_all_ranks(self, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Runs one call; returns the outputs of every rank this process can report, in rank order."""
        ...


@dataclasses.dataclass
class ExecutorRequest:
    """Everything an executor factory needs to open an engine.

    Attributes:
        root: the engine directory.
        manifest: its validated manifest.
        schedule: its parsed schedule.
        providers: ONNX Runtime execution providers, checked, the default already chosen
            (``graphbuild.runtime.session.check_providers``).
        intra_op_threads: threads per ONNX Runtime session, or None for ONNX Runtime's choice.
        check_ranks: ``check_ranks(ranks)`` verifies the files of those ranks (checksums when the
            load asked for it, external-data references always) before the executor opens them;
            an executor calls it for exactly the ranks whose files it will open.
        options: executor-specific options (``Engine.load(executor_options=...)``).
    """

    root: Path
    manifest: Any
    schedule: Schedule
    providers: Optional[list[str]]
    intra_op_threads: Optional[int]
    check_ranks: Callable[[Sequence[int]], None]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


#: ``factory(request) -> Executor``.
ExecutorFactory = Callable[[ExecutorRequest], Executor]
