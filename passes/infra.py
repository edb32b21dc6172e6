"""Pass infrastructure: the ``Pass`` base class, ``PassResult``, the ``PassManager`` and ``Phases``.

A pass transforms one network (in place, unless it declares ``in_place = False`` and returns a new
network) and says what it did::

    class DropIdentityPass(Pass):
        name = "drop_identity"

        def call(self, net):
            ...
            return PassResult(net, modified=count > 0, stats={"removed": count})

``Pass.__call__`` runs the optional ``requires`` check, then ``call``, then ``ensures`` on the
result. Analysis passes return ``modified=False``. Steps that produce several networks
(``partition``) or something that is not a network (ONNX export) are plain functions, so a
``PassResult`` always has one shape.

The ``PassManager`` runs a list of passes and is itself a pass, so pipelines nest (as in onnx-ir):
its ``seconds`` then list the inner passes by name. When one fails it raises ``PassError`` naming
the pass and the passes that ran before it, chained from the original error. With
``verify_each=True`` it runs the IR verifier on the input and after every pass, and names the pass
that broke an invariant. With ``fixed_point=True`` it repeats the list until no pass reports a
change (at most ``max_iterations`` times).

``Phases`` runs a named list of steps over a compile state (several networks, segments, lowered
models: what ``gb.build`` does) and times each; a step may be a ``PassManager`` run on every network
of a list, whose pass timings it reports. ``gb.build``'s phase timings come from there.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence

from graphbuild.errors import GraphBuildError, PassError
from graphbuild.ir import Network


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass returns.

    Attributes:
        network: the resulting network (passes edit in place, so usually the one passed in).
        modified: whether the pass changed anything.
        stats: counters and short reports, e.g. ``{"folded": 3}``.
    """

    network: Network
    modified: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


def _snake_case(class_name: str) -> str:
    base = class_name[: -len("Pass")] if class_name.endswith("Pass") else class_name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()


class Pass:
    """Base class of network-to-network passes.

    Subclasses set ``name`` (defaults to the class name in snake case, without ``Pass``) and
    implement ``call``. They may override ``requires`` (checked on the input) and ``ensures``
    (checked on the result); both raise a ``GraphBuildError`` when the check fails.
    """

    name: ClassVar[str] = ""
    in_place: ClassVar[bool] = True
    """Whether the pass edits the network it is given (True) or returns a new one (False)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = _snake_case(cls.__name__)

    def requires(self, net: Network) -> None:
        """Checks preconditions on the input network (default: none)."""

    def ensures(self, net: Network) -> None:
        """Checks postconditions on the resulting network (default: none)."""

    def call(self, net: Network) -> PassResult:
        """Runs the pass on ``net``; subclasses implement this."""
        raise NotImplementedError(f"pass '{self.name}' does not implement call(net)")

    def __call__(self, net: Network) -> PassResult:
        self.requires(net)
        result = self.call(net)
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{self.name}' returned {type(result).__name__}; call(net) must return a PassResult")
        self.ensures(result.network)
        return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


def merge_stats(into: dict[str, Any], stats: dict[str, Any]) -> None:
    """Adds ``stats`` to ``into``: numbers are summed, lists extended, anything else replaced."""
    for key, value in stats.items():
        old = into.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(old, (int, float)) and not isinstance(old, bool):
            into[key] = old + value
        elif isinstance(value, list) and isinstance(old, list):
            into[key] = old + value
        else:
            into[key] = list(value) if isinstance(value, list) else value


class PassManager(Pass):
    """Runs passes in order, naming the failing pass; a pass itself, so managers nest.

    Args:
        passes: the passes to run, in order (managers included).
        verify_each: run the IR verifier on the input and after every pass (tests turn this on).
        fixed_point: repeat the list until no pass reports ``modified``.
        max_iterations: the bound on repetitions when ``fixed_point`` is set.
        name: the manager's name when it runs inside another manager.

    ``run`` (or calling the manager) returns one ``PassResult`` whose ``stats`` map each pass name
    to its stats summed over iterations, plus ``"pass_manager": {"iterations": n, "converged":
    bool}``. After a run, ``seconds`` maps each pass name to the wall time it took (summed over
    iterations; a nested manager contributes its own passes' times; the verifier runs of
    ``verify_each`` not included). The manager works in place when all its passes do.
    """

    name = "pass_manager"

    def __init__(
        self, passes: Iterable[Pass], *, verify_each: bool = False, fixed_point: bool = False, max_iterations: int = 10, name: Optional[str] = None
    ) -> None:
        if name is not None:
            self.name = name  # type: ignore[misc]  # an instance's own name shadows the class default
        self.passes: list[Pass] = list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise PassError(f"PassManager expects Pass instances, got {p!r}; did you pass the class instead of an instance?")
        if max_iterations < 1:
            raise PassError(f"PassManager: max_iterations must be at least 1, got {max_iterations}")
        self.verify_each = verify_each
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations
        self.seconds: dict[str, float] = {}

    @property
    def in_place(self) -> bool:  # type: ignore[override]
        """True when every pass works in place."""
        return all(p.in_place for p in self.passes)

    def call(self, net: Network) -> PassResult:
        return self.run(net)

    def run(self, net: Network) -> PassResult:
        """Runs the passes on ``net`` (edited in place).

        Raises:
            PassError: a pass failed, or (with ``verify_each``) left the network invalid; the
                original error is the ``__cause__``.
        """
        ran: list[str] = []
        stats: dict[str, dict[str, Any]] = {}
        self.seconds = {}
        if self.verify_each:
            self._verify(net, None, ran)
        modified_any = False
        iterations = 0
        converged = not self.fixed_point
        while True:
            iterations += 1
            modified_now = False
            for p in self.passes:
                start = time.perf_counter()
                result = self._run_one(p, net, ran)
                if isinstance(p, PassManager):
                    add_seconds(self.seconds, p.seconds)
                else:
                    add_seconds(self.seconds, {p.name: time.perf_counter() - start})
                net = result.network
                ran.append(p.name)
                merge_stats(stats.setdefault(p.name, {}), result.stats)
                modified_now |= result.modified
                if self.verify_each:
                    self._verify(net, p, ran)
            modified_any |= modified_now
            if not self.fixed_point:
                break
            if not modified_now:
                converged = True
                break
            if iterations >= self.max_iterations:
                break
        stats["pass_manager"] = {"iterations": iterations, "converged": converged}
        return PassResult(net, modified_any, stats)

    @staticmethod
    def _run_one(p: Pass, net: Network, ran: Sequence[str]) -> PassResult:
        try:
            return p(net)
        except Exception as exc:
            raise PassError(f"pass '{p.name}' failed after {_listing(ran)}: {exc}") from exc

    @staticmethod
    def _verify(net: Network, after: Optional[Pass], ran: Sequence[str]) -> None:
        from graphbuild.passes.verify import verify_network

        try:
            verify_network(net)
        except GraphBuildError as exc:
            if after is None:
                raise PassError(f"the input network fails verification before any pass ran: {exc}") from exc
            raise PassError(f"pass '{after.name}' broke an IR invariant (passes run: {_listing(ran)}): {exc}") from exc

    def __repr__(self) -> str:
        return f"<PassManager {_listing(p.name for p in self.passes)} verify_each={self.verify_each} fixed_point={self.fixed_point}>"


def add_seconds(into: dict[str, float], seconds: Mapping[str, float]) -> None:
    """Adds per-name wall times into ``into``."""
    for name, value in seconds.items():
        into[name] = into.get(name, 0.0) + value


@dataclasses.dataclass
class Phase:
    """One named step of ``Phases``.

    Attributes:
        name: the step's name (its timing key).
        run: ``run(state)`` does the work, editing ``state``.
        passes: set when the step is ``passes`` run on every network of ``getattr(state, over)``:
            ``run`` is then not used, and with ``report_passes`` the timings list the passes by
            name instead of the step.
        over: the state attribute holding the networks ``passes`` runs on.
        report_passes: report each pass's time under its own name.
    """

    name: str
    run: Optional[Callable[[Any], None]] = None
    passes: Optional[PassManager] = None
    over: str = "networks"
    report_passes: bool = False


class Phases:
    """Runs named steps over a compile state, in order, timing each (see the module docstring).

    After ``run``, ``seconds`` maps each step's name (or, for a ``report_passes`` step, each of its
    passes' names) to the wall time it took.
    """

    def __init__(self, phases: Iterable[Phase]) -> None:
        self.phases = list(phases)
        self.seconds: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return [phase.name for phase in self.phases]

    def run(self, state: Any) -> Any:
        """Runs every step on ``state``; returns it."""
        self.seconds = {}
        for phase in self.phases:
            start = time.perf_counter()
            if phase.passes is not None:
                inner: dict[str, float] = {}
                results = []
                for net in getattr(state, phase.over):
                    results.append(phase.passes(net).network)
                    add_seconds(inner, phase.passes.seconds)
                setattr(state, phase.over, results)
                add_seconds(self.seconds, inner if phase.report_passes else {phase.name: time.perf_counter() - start})
            else:
                assert phase.run is not None, f"phase '{phase.name}' has nothing to run"
                phase.run(state)
                add_seconds(self.seconds, {phase.name: time.perf_counter() - start})
        return state


def _listing(names: Iterable[str]) -> str:
    return "[" + ", ".join(names) + "]"
