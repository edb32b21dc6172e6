"""The MPI executor: each MPI process runs one rank of an engine, collectives go over MPI (or NCCL).

Start one process per rank with ``mpiexec -n N`` (N = the engine's ``tp_size``)::

    mpiexec -n 2 graphbuild run out/emb --input input_ids=1,2,3
    mpiexec -n 2 python -m mpi4py my_script.py    # Engine.load(path, executor="mpi") inside

Rank mapping. By default the world is cut into ``replicas`` consecutive blocks of ``tp_size``
processes (data-parallel copies of the engine): world rank ``w`` runs engine rank ``w % tp_size`` of
replica ``w // tp_size``, and the world size must be ``tp_size * replicas``. ``world_ranks=[...]``
instead names the world ranks that run engine ranks 0, 1, ... (only those processes load it), or
``world_ranks="tp_group"`` takes them from the engine's ``tp_group``; ``comm=`` runs it on any
mpi4py communicator of ``tp_size`` processes. A collective over ``group`` runs on a communicator of
the engine ranks holding those ``tp_group`` labels, made once when the engine is loaded.

Loading: every process reads the manifest and opens only its own rank's files (their checksums are
checked, no other rank's weights are read or mapped). Then the ranks agree (``mpi_env.agree``): an
error on any rank (a missing or corrupt file, a world size that does not fit, an engine whose
manifest differs between hosts) is raised on every rank.

A call (``Engine.run``): feeds given on rank 0 only are broadcast; feeds given on every rank are
used where given (their shapes must agree). The rank's plan for those shapes runs (``mpi_plan``),
then the ranks agree on the outcome, so an error on one rank (a bad feed, an out-of-range id only
its shard sees, a failing kernel) is raised on every rank at the end of that call. Each process
returns its own rank's outputs; ``run_all_ranks`` gathers every rank's.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from graphbuild.engine.manifest import TensorSpec
from graphbuild.errors import EngineError
from graphbuild.runtime.collectives import SessionCache
from graphbuild.runtime.feeds import validate_feeds
from graphbuild.runtime.mpi_env import MPIError, Watchdog, agree, describe_error, import_mpi, launched_by_mpi, raise_first_failure, raised_everywhere, signatures_differ
from graphbuild.runtime.mpi_plan import GroupComm, RankPlan
from graphbuild.runtime.nccl_collectives import import_nccl, nccl_communicator, usable_nccl
from graphbuild.runtime.ortvalues import device_of
from graphbuild.runtime.protocol import ExecutorRequest
from graphbuild.runtime.schedule import CollectiveStep, Schedule
from graphbuild.runtime.session import create_session, default_providers

#: Plans (one per set of input shapes) an executor keeps, least recently used dropped.
MAX_PLANS = 8


def _get(data: Any, key: str, default: Any = None) -> Any:
    return data.get(key, default) if isinstance(data, Mapping) else getattr(data, key, default)


def engine_communicator(mpi: Any, schedule: Schedule, manifest: Any, *, comm: Any = None, replicas: int = 1, world_ranks: Union[None, str, Sequence[int]] = None) -> Any:
    """The communicator whose rank ``i`` runs engine rank ``i`` (a private duplicate; collective).

    Raises:
        MPIError: the world does not fit the engine; the same one-line message on every rank.
    """
    world = mpi.COMM_WORLD
    size = schedule.tp_size
    where = f"engine '{schedule.name}' (tp_size {size})"
    if comm is not None:
        if comm.Get_size() != size:
            raise raised_everywhere(MPIError(f"{where}: the communicator given has {comm.Get_size()} processes; it needs exactly {size}"))
        return comm.Dup()
    if world_ranks is not None:
        ranks = list(_get(manifest, "tp_group", range(size))) if world_ranks == "tp_group" else [int(r) for r in world_ranks]
        if len(ranks) != size or len(set(ranks)) != size or not all(0 <= r < world.Get_size() for r in ranks):
            raise raised_everywhere(MPIError(f"{where}: world_ranks {ranks} must name {size} distinct ranks of the world of {world.Get_size()} processes"))
        if world.Get_rank() not in ranks:
            raise MPIError(f"{where}: world rank {world.Get_rank()} is not one of its world_ranks {ranks}; load the engine only on those")
        return world.Create_group(world.Get_group().Incl(ranks), tag=7411)
    if replicas < 1 or world.Get_size() != size * replicas:
        copies = f" x {replicas} replicas" if replicas != 1 else ""
        started = f"mpiexec started {world.Get_size()} processes" if launched_by_mpi() else "this process was not started by mpiexec"
        raise raised_everywhere(MPIError(f"{where}: {started} but the engine has {size} ranks{copies}; run it with mpiexec -n {size * max(replicas, 1)}"))
    if replicas == 1:
        return world.Dup()
    return world.Split(color=world.Get_rank() // size, key=world.Get_rank() % size)


def _group_members(step: CollectiveStep, labels: Sequence[int], where: str) -> tuple[int, ...]:
    """Engine ranks (positions in ``tp_group``) of the collective's group labels, in group order."""
    try:
        return tuple(list(labels).index(label) for label in step.group)
    except ValueError:
        raise EngineError(f"{where}: {step.describe()} names group {list(step.group)}, which is not within tp_group {list(labels)}; rebuild the engine") from None


class MPIExecutor:
    """Runs this MPI process's rank of an engine (the ``"mpi"`` executor).

    Made by ``Engine.load(path, executor="mpi", executor_options={...})`` in every process of the
    job; loading is collective over the engine's processes. See the module docstring for the
    options ``comm``, ``replicas`` and ``world_ranks``.

    Attributes:
        rank: the engine rank this process runs.
        comm: the engine's communicator (rank ``i`` runs engine rank ``i``).
        schedule: the engine's schedule.
        device: ``"cpu"`` or ``"cuda"``.
        nccl: whether CUDA collectives go through NCCL (else staged through host memory).
    """

    def __init__(self, request: ExecutorRequest, *, comm: Any = None, replicas: int = 1, world_ranks: Union[None, str, Sequence[int]] = None) -> None:
        self.mpi = mpi = import_mpi()
        self.schedule = schedule = request.schedule
        self.watchdog = Watchdog(mpi, mpi.COMM_WORLD.Get_rank())
        where = str(request.root)
        self.comm = engine_communicator(mpi, schedule, request.manifest, comm=comm, replicas=replicas, world_ranks=world_ranks)
        self.rank = self.comm.Get_rank()
        self.inputs = [spec if isinstance(spec, TensorSpec) else TensorSpec.from_json(spec) for spec in _get(request.manifest, "inputs")]
        self._owner = f"engine '{schedule.name}'"
        error: Optional[BaseException] = None
        try:
            providers = request.providers if request.providers is not None else default_providers()
            self.device = device_of(providers)
            request.check_ranks([self.rank])  # this rank's files only: sizes, checksums, references
            mine = schedule.ranks[self.rank]
            self._segment_sessions: dict[str, ort.InferenceSession] = {
                step.file: create_session(request.root / step.file, needs_plugin=schedule.needs_plugin, providers=providers, intra_op_threads=request.intra_op_threads)
                for step in mine.segments
            }
            self._sessions = SessionCache(providers, request.intra_op_threads)
            labels = list(_get(request.manifest, "tp_group", None) or range(schedule.tp_size))
            self._members = {step.group: _group_members(step, labels, where) for step in mine.steps if isinstance(step, CollectiveStep)}
            identity = hashlib.sha256(json.dumps(_plain(request.manifest), sort_keys=True, default=str).encode()).hexdigest()
        except Exception as exc:
            error, identity = exc, ""
        with self.watchdog.waiting("loading the engine"):
            identities = self.comm.allgather((describe_error(error) if error is not None else None, identity))
        raise_first_failure([outcome for outcome, _ in identities])
        differ = signatures_differ([ident for _, ident in identities])
        if differ:
            raise raised_everywhere(MPIError(f"{where}: rank(s) {differ} loaded an engine whose config.json differs from rank 0's; every host must see the same engine directory"))
        with self.watchdog.waiting("making the collectives' communicators"):
            self._groups = self._make_groups()
        self._plans: collections.OrderedDict[tuple[Any, ...], RankPlan] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, request: ExecutorRequest) -> "MPIExecutor":
        """The ``"mpi"`` factory; ``request.options`` holds ``comm``, ``replicas``, ``world_ranks``."""
        options = dict(getattr(request, "options", None) or {})
        unknown = sorted(set(options) - {"comm", "replicas", "world_ranks"})
        if unknown:
            raise EngineError(f"Engine.load: unknown option(s) {unknown} for the MPI executor; it takes comm, replicas and world_ranks")
        return cls(request, **options)

    def _make_groups(self) -> dict[tuple[int, ...], GroupComm]:
        """One communicator per distinct collective group (the engine's own for the full group)."""
        nccl = import_nccl() if self.device == "cuda" else None
        stream = None
        if self.device == "cuda":
            nccl = usable_nccl(nccl, self.comm)  # collective: every rank decides alike
        if nccl is not None:
            import cupy

            stream = cupy.cuda.Stream(non_blocking=True)
        groups: dict[tuple[int, ...], GroupComm] = {}
        for tag, (labels, members) in enumerate(self._members.items()):
            if list(members) == list(range(self.comm.Get_size())):
                comm = self.comm
            else:
                comm = self.comm.Create_group(self.comm.Get_group().Incl(list(members)), tag=tag)
            state = (nccl, nccl_communicator(nccl, comm), stream) if nccl is not None else None
            groups[labels] = GroupComm(comm, members, state)
        self.nccl = nccl is not None
        return groups

    @property
    def ranks(self) -> Sequence[int]:
        """The one engine rank this process runs."""
        return (self.rank,)

    def share_feeds(self, feeds: Optional[Mapping[str, Any]], error: Optional[BaseException] = None) -> dict[str, np.ndarray]:
        """Validated feeds on every rank: rank 0's broadcast to the ranks that pass none (None or {}).

        Collective over the engine's ranks. ``error`` reports a failure to produce the feeds (the
        CLI's bad ``--input``), which every rank then raises.

        Raises:
            InputError: bad feeds on some rank (its message, on every rank).
            MPIError: rank 0 gave no feeds, or ranks gave feeds of different shapes.)
        """
        arrays: Optional[dict[str, np.ndarray]] = None
        if error is None and feeds:
            try:
                arrays = validate_feeds(self.inputs, feeds, self._owner)
            except Exception as exc:
                error = exc
        key = tuple((name, array.dtype.str, array.shape) for name, array in arrays.items()) if arrays is not None else None
        with self.watchdog.waiting("sharing the feeds"):
            states = self.comm.allgather((describe_error(error) if error is not None else None, key))
        raise_first_failure([outcome for outcome, _ in states])
        keys = [k for _, k in states]
        if keys[0] is None:
            raise raised_everywhere(MPIError(f"{self._owner}: rank 0 gave no feeds; give them on rank 0 (the others may pass None) or on every rank"))
        differ = [rank for rank, k in enumerate(keys) if k is not None and k != keys[0]]
        if differ:
            raise raised_everywhere(MPIError(f"{self._owner}: the feeds of rank(s) {differ} differ in shape or dtype from rank 0's {[(n, s) for n, _, s in keys[0]]}"))
        if any(k is None for k in keys):
            with self.watchdog.waiting("broadcasting the feeds"):
                shared = self.comm.bcast(arrays if self.rank == 0 else None, root=0)
            arrays = arrays if arrays is not None else shared
        assert arrays is not None
        return arrays

    def run(self, feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Runs this rank (collective); returns its outputs by name (fresh arrays, or ``out``'s).

        Raises:
            GraphBuildError: any rank's error, the same on every rank.
        """
        with self._lock:
            key = tuple((name, array.shape) for name, array in feeds.items())
            plan = self._plans.get(key)
            if plan is None:
                plan, error = RankPlan.make(feeds, self.schedule.ranks[self.rank], self._segment_sessions, self._groups, self.device, self._sessions, self.mpi, self.watchdog)
            else:
                self._plans.move_to_end(key)
                error = plan.run(feeds)
            agree(self.comm, error, self.watchdog, f"{self._owner}: finishing the call")
            assert plan is not None
            if key not in self._plans:
                self._plans[key] = plan
                if len(self._plans) > MAX_PLANS:
                    self._plans.popitem(last=False)
            return plan.results(out)

    def run_all_ranks(self, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Runs this rank (collective); returns every rank's outputs, in rank order, on every rank."""
        mine = self.run(feeds)
        with self.watchdog.waiting("gathering every rank's outputs"):
            return list(self.comm.allgather(mine))


def _plain(manifest: Any) -> Any:
    """The manifest as JSON-able data (a dict already, or the typed manifest's ``to_json()``)."""
    return manifest.to_json() if hasattr(manifest, "to_json") else manifest
