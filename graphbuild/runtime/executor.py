"""The local executor: runs every rank of an engine in one process, collectives in memory.

Everything an engine run touches is made once and reused:

- per engine (at load): one ONNX Runtime session per segment file, the collectives' helper
  sessions (``graphbuild.runtime.collectives``) on the same provider;
- per input-shape signature: a ``Plan`` (``graphbuild.runtime.plan``: buffers, IO bindings and
  pooled output memory), made by the first call with those shapes, at most ``max_plans`` kept,
  least recently used dropped.

A call then copies the feeds into their buffers, runs the steps in order (rank 0's step, rank 1's
step, ...; collectives once for all ranks) and hands the outputs over (see ``plan`` for the
output-buffer policy). With the CUDA provider the buffers live on the GPU: intermediates never
leave it, collectives run there, and only the outputs the caller gets back are copied to the host.

An executor runs one call at a time (a lock serializes calls from several threads).
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from graphbuild.errors import EngineError
from graphbuild.runtime.collectives import SessionCache
from graphbuild.runtime.ortvalues import device_of
from graphbuild.runtime.plan import Plan
from graphbuild.runtime.protocol import ExecutorRequest
from graphbuild.runtime.schedule import Schedule
from graphbuild.runtime.session import create_session, default_providers

#: Plans (buffers and bindings for one set of input shapes) an executor keeps by default.
MAX_PLANS = 8


class LocalExecutor:
    """Runs all ranks of an engine in this process, collectives in memory (the ``"local"`` executor).

    Args:
        root: the engine directory.
        schedule: its parsed schedule.
        providers: ONNX Runtime execution providers (default: CUDA when present, else CPU).
        intra_op_threads: threads per session (default: ONNX Runtime's choice).
        max_plans: how many input-shape signatures keep their buffers (least recently used dropped).
    """

    def __init__(
        self,
        root: Path,
        schedule: Schedule,
        *,
        providers: Optional[Sequence[str]] = None,
        intra_op_threads: Optional[int] = None,
        max_plans: int = MAX_PLANS,
    ) -> None:
        if len(schedule.ranks) != schedule.tp_size:
            raise EngineError(f"{root}: the local executor needs all {schedule.tp_size} ranks but the engine holds {len(schedule.ranks)}")
        providers = list(providers) if providers is not None else default_providers()
        self.schedule = schedule
        self._segment_sessions = {
            step.file: create_session(root / step.file, needs_plugin=schedule.needs_plugin, providers=providers, intra_op_threads=intra_op_threads)
            for rank in schedule.ranks
            for step in rank.segments
        }
        self.device = device_of(providers)
        self._sessions = SessionCache(providers, intra_op_threads)
        self._plans: collections.OrderedDict[tuple[Any, ...], Plan] = collections.OrderedDict()
        self._max_plans = max(1, max_plans)
        self._lock = threading.Lock()
        self._latest: Optional[Plan] = None  # the plan last used: already the most recent entry
        self._rank0 = (0,)

    @classmethod
    def open(cls, request: ExecutorRequest) -> "LocalExecutor":
        """The ``"local"`` factory: checks every rank's files, then opens them all."""
        request.check_ranks(range(request.schedule.tp_size))
        return cls(request.root, request.schedule, providers=request.providers, intra_op_threads=request.intra_op_threads)

    @property
    def ranks(self) -> Sequence[int]:
        """Every rank: they all run in this process."""
        return range(self.schedule.tp_size)

    @property
    def plans(self) -> int:
        """How many input-shape signatures currently hold buffers."""
        return len(self._plans)

    def run(self, feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """Runs every rank; returns rank 0's outputs (feeds must already be validated).

        Args:
            feeds: input name -> array, as ``validate_feeds`` returns them.
            out: optional output name -> array that receives rank 0's output of that name.
        """
        if out:
            return self._run(feeds, out, self._rank0)[0]
        # _run's lookup, written out: this is the call users make, and each frame is 0.1 us of it.
        key = tuple([array.shape for array in feeds.values()])
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                return self._first_run(key, feeds, None, self._rank0)[0]
            if plan is not self._latest:
                self._plans.move_to_end(key)
                self._latest = plan
            return plan.run_default(feeds)

    def run_all_ranks(self, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Runs every rank; returns each rank's outputs, in rank order."""
        return self._run(feeds, None, self.ranks)

    def _run(self, feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]], ranks: Sequence[int]) -> list[dict[str, np.ndarray]]:
        key = tuple([array.shape for array in feeds.values()])
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                return self._first_run(key, feeds, out, ranks)
            if plan is not self._latest:
                self._plans.move_to_end(key)
                self._latest = plan
            return plan.run(feeds, out, ranks)

    def _first_run(self, key: tuple[Any, ...], feeds: Mapping[str, np.ndarray], out: Optional[Mapping[str, np.ndarray]], ranks: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Makes the plan for a new input-shape signature (which runs the engine once), dropping
        the least recently used one beyond ``max_plans``; the lock is held."""
        plan = Plan(self.schedule, self._segment_sessions, feeds, self.device, self._sessions)
        self._plans[key] = plan
        self._latest = plan
        if len(self._plans) > self._max_plans:
            self._plans.popitem(last=False)[1].close()
        return plan.results(plan.check_out(out), ranks)
