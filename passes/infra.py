"""Pass infrastructure: the ``Pass`` base class, ``PassResult`` and the ``PassManager``.

A pass transforms one network in place and says what it did::

    class DropIdentityPass(Pass):
        name = "drop_identity"

        def call(self, net):
            ...
            return PassResult(net, modified=count > 0, stats={"removed": count})

``Pass.__call__`` runs the optional ``requires`` check, then ``call``, then ``ensures`` on the
result. Analysis passes return ``modified=False``. Steps that produce several networks
(``partition``) or something that is not a network (ONNX export) are plain functions, so a
``PassResult`` always has one shape.

The ``PassManager`` runs a list of passes. When one fails it raises ``PassError`` naming the pass
and the passes that ran before it, chained from the original error. With ``verify_each=True`` it
runs the IR verifier on the input and after every pass, and names the pass that broke an
invariant. With ``fixed_point=True`` it repeats the list until no pass reports a change (at most
``max_iterations`` times).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, ClassVar, Iterable, Optional, Sequence

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


class PassManager:
    """Runs passes in order, naming the failing pass.

    Args:
        passes: the passes to run, in order.
        verify_each: run the IR verifier on the input and after every pass (tests turn this on).
        fixed_point: repeat the list until no pass reports ``modified``.
        max_iterations: the bound on repetitions when ``fixed_point`` is set.

    ``run`` returns one ``PassResult`` whose ``stats`` map each pass name to its stats summed over
    iterations, plus ``"pass_manager": {"iterations": n, "converged": bool}``. After a run,
    ``seconds`` maps each pass name to the wall time it took (summed over iterations; the verifier
    runs of ``verify_each`` not included).
    """

    def __init__(self, passes: Iterable[Pass], *, verify_each: bool = False, fixed_point: bool = False, max_iterations: int = 10) -> None:
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
                self.seconds[p.name] = self.seconds.get(p.name, 0.0) + time.perf_counter() - start
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


def _listing(names: Iterable[str]) -> str:
    return "[" + ", ".join(names) + "]"
