"""MPI for graphbuild: finding mpi4py and ``mpiexec``, noticing a launch, agreeing on errors.

- ``launched_by_mpi()`` tells whether this process was started by an MPI launcher (``mpiexec``,
  ``mpirun``, ``srun`` with PMI): ``graphbuild run`` then picks the MPI executor.
- ``import_mpi()`` imports ``mpi4py.MPI`` (which initializes MPI), with an error saying how to
  install it when it is missing. When more ranks share this host than it has cores, MPICH's
  busy-polling is turned down first (``MPIR_CVAR_POLLS_BEFORE_YIELD=1``, unless set): spinning
  ranks would otherwise starve the ones doing work.
- ``agree(comm, error)`` is the one place ranks compare outcomes: every rank contributes its error
  (or none) and, if any rank failed, every rank raises the same error, the lowest failing rank's,
  with its class. Executors call it at the end of every load and every call, so an error on one
  rank stops all of them instead of leaving the others blocked in a collective.
- ``Watchdog`` bounds how long a rank waits for its peers inside MPI (``GRAPHBUILD_MPI_TIMEOUT``
  seconds, default 600): past that it prints why and aborts the whole job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from graphbuild import errors
from graphbuild.errors import ExecutionError, GraphBuildError

#: Environment variables an MPI launcher sets in the processes it starts (MPICH/Intel MPI's hydra,
#: Open MPI, PMIx, MVAPICH, Slurm's PMI2).
LAUNCH_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE", "PMI_FD")

#: Default of ``GRAPHBUILD_MPI_TIMEOUT``: seconds a rank waits for its peers before aborting the job.
DEFAULT_TIMEOUT = 600.0

INSTALL_HINT = "install it with: pip install 'graphbuild[mpi]' (mpi4py and MPICH from PyPI; 'make install' does this)"


class MPIUnavailableError(ExecutionError):
    """mpi4py or ``mpiexec`` is not installed."""


class MPIError(ExecutionError):
    """Ranks disagree (world size, engine, collectives) or a peer failed."""


def launched_by_mpi(environ: Optional[dict[str, str]] = None) -> bool:
    """Whether an MPI launcher started this process with more than one rank in its job."""
    env = os.environ if environ is None else environ
    size = env.get("PMI_SIZE") or env.get("OMPI_COMM_WORLD_SIZE") or env.get("MV2_COMM_WORLD_SIZE") or env.get("PMIX_SIZE")
    if size is not None:
        return True
    return any(name in env for name in LAUNCH_VARIABLES)


def find_mpiexec() -> Optional[Path]:
    """``mpiexec`` next to this Python (a virtual environment with the ``mpich`` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec")
    return Path(found) if found else None


def _oversubscribed() -> bool:
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return local is not None and local.isdigit() and int(local) > cores


def import_mpi() -> Any:
    """``mpi4py.MPI``, initializing MPI on first use.

    Raises:
        MPIUnavailableError: mpi4py is not installed, or it cannot load an MPI library.
    """
    if _oversubscribed():
        os.environ.setdefault("MPIR_CVAR_POLLS_BEFORE_YIELD", "1")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailableError(f"the MPI executor needs mpi4py, which cannot be imported ({exc}); {INSTALL_HINT}") from None
    except RuntimeError as exc:  # mpi4py found no usable MPI library
        raise MPIUnavailableError(f"mpi4py cannot load an MPI library ({exc}); {INSTALL_HINT}") from None
    return MPI


def timeout_seconds() -> float:
    """``GRAPHBUILD_MPI_TIMEOUT`` (seconds, > 0), or ``DEFAULT_TIMEOUT``."""
    text = os.environ.get("GRAPHBUILD_MPI_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise MPIError(f"GRAPHBUILD_MPI_TIMEOUT={text!r} is not a number of seconds") from None
    if value <= 0:
        raise MPIError(f"GRAPHBUILD_MPI_TIMEOUT={text!r} must be positive")
    return value


# ------------------------------------------------------------------------------ agreeing on errors
def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(class name, one-line message)`` of an exception, for sending to the other ranks."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, GraphBuildError):
        message = f"unexpected {type(exc).__name__}: {message}"
    return type(exc).__name__, message


def rebuild_error(name: str, message: str) -> GraphBuildError:
    """The ``GraphBuildError`` subclass called ``name`` (``ExecutionError`` for others) with ``message``."""
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, GraphBuildError)):
        kind = {cls.__name__: cls for cls in (MPIError, MPIUnavailableError)}.get(name, ExecutionError)
    return raised_everywhere(kind(message))


def raised_everywhere(error: GraphBuildError) -> GraphBuildError:
    """Marks ``error`` as one every rank raises (it was agreed, or every rank found it alike): the
    CLI then exits with it instead of aborting the job."""
    error.shared_by_ranks = True  # type: ignore[attr-defined]
    return error


class PeerFailed(Exception):
    """This rank stopped because another rank failed; the other rank's error is what gets reported."""


def agree(comm: Any, error: Optional[BaseException], watchdog: "Watchdog", what: str) -> None:
    """Every rank of ``comm`` learns whether any rank failed; if one did, all raise its error.

    The lowest failing rank's error wins (a ``PeerFailed`` never does). Its message gets a
    ``rank R: `` prefix unless every rank failed with the same message.

    Raises:
        GraphBuildError: of the failing rank's class, on every rank.
    """
    mine = None if error is None else ("PeerFailed", "") if isinstance(error, PeerFailed) else describe_error(error)
    with watchdog.waiting(what):
        outcomes = comm.allgather(mine)
    raise_first_failure(outcomes)
    if any(outcome is not None for outcome in outcomes):
        raise MPIError(f"{what}: a rank stopped without reporting why")


def raise_first_failure(outcomes: Sequence[Optional[tuple[str, str]]]) -> None:
    """Raises the lowest rank's ``(class name, message)`` outcome (``PeerFailed`` ones aside), with
    a ``rank R: `` prefix unless every rank reported that same message; returns if none failed."""
    failed = [(rank, outcome) for rank, outcome in enumerate(outcomes) if outcome is not None and outcome[0] != "PeerFailed"]
    if not failed:
        return
    rank, (name, message) = failed[0]
    same = len(failed) == len(outcomes) and len({outcome[1] for _, outcome in failed}) == 1
    if not same and not message.startswith(f"rank {rank}"):
        message = f"rank {rank}: {message}"
    raise rebuild_error(name, message)


def signatures_differ(values: Sequence[Any]) -> list[int]:
    """The ranks whose value differs from rank 0's."""
    return [rank for rank, value in enumerate(values) if value != values[0]]


# ------------------------------------------------------------------------------------- watchdog
class Watchdog:
    """Aborts the MPI job when this rank waits inside MPI longer than ``timeout`` seconds.

    A daemon thread wakes a few times per timeout; it costs nothing while no wait is open. On
    expiry it prints ``graphbuild: error: rank R: <what> waited more than T s ...`` and calls
    ``MPI_Abort`` on the world, which ends every process of the job.

    Args:
        mpi: the ``mpi4py.MPI`` module.
        rank: this process's rank, for the message.
        timeout: seconds, default ``timeout_seconds()``.
    """

    def __init__(self, mpi: Any, rank: int, timeout: Optional[float] = None) -> None:
        self.mpi = mpi
        self.rank = rank
        self.timeout = timeout_seconds() if timeout is None else timeout
        self._open: Optional[tuple[str, float]] = None
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Marks a blocking MPI call; the job is aborted if it lasts longer than the timeout."""
        with self._lock:
            self._open = (what, time.monotonic() + self.timeout)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="graphbuild-mpi-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._open = None

    def _watch(self) -> None:
        period = min(1.0, self.timeout / 4)
        while True:
            time.sleep(period)
            with self._lock:
                current = self._open
            if current is not None and time.monotonic() > current[1]:
                what = current[0]
                sys.stderr.write(  # one write: the ranks share stderr
                    f"graphbuild: error: rank {self.rank}: {what} waited more than {self.timeout:g} s for the other ranks "
                    f"(GRAPHBUILD_MPI_TIMEOUT); aborting the job\n"
                )
                abort(self.mpi, 1)


def abort(mpi: Any, code: int) -> None:
    """Ends every process of the MPI job (``MPI_Abort``), after flushing this one's output."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        mpi.COMM_WORLD.Abort(code)
    finally:
        os._exit(code)
