"""The collective-schedule check: do the ranks of an engine meet at the same collectives?

One check, on plain data, shared by the segment pass (at build time) and ``reference.run_ranks``
(before it runs). A loading engine is held to a stricter rule by its manifest's validation
(``graphbuild.engine.schedule_check``): every rank runs the same steps, segments included. It imports nothing but the error classes, so
the runtime can use it without the compiler.

Each rank's schedule is a list of ``CollectiveCall`` in the order the rank runs them. For every
group of ranks, the members of the group must run the same calls (kind, ``instance_id``, group and
attributes) in the same order; calls of other groups may interleave freely. A group names ranks
by their index among the ranks given, or, when it names others (``[2, 3]`` for two ranks), it must
span them all.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

from graphbuild.errors import GraphBuildError


class CollectiveCall(NamedTuple):
    """One collective as a rank runs it.

    Attributes:
        kind: the op (``"allreduce"``, ``"allgather"``, ...).
        instance_id: the identity matched across ranks.
        group: the ranks taking part, in rank order.
        attrs: the other attributes that must match across ranks, as sorted ``(name, value)``
            pairs (axis, sizes, reduce, shape or dtype where known); never the rank's position.
        name: how to name the call in messages (``"allreduce 'wte/allreduce'"``).
    """

    kind: str
    instance_id: Any
    group: tuple[int, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    name: str = ""

    def describe(self) -> str:
        return f"{self.name or self.kind} (instance_id={self.instance_id})"


def members(group: Sequence[int], world: int) -> list[int]:
    """The indices (among ``world`` ranks) of the ranks in ``group``: the group itself when it names
    indices below ``world``, else every rank when it has ``world`` entries (a group such as
    ``[2, 3]`` over two networks).

    Raises:
        ValueError: the group fits neither case.
    """
    group = [int(g) for g in group]
    if all(0 <= g < world for g in group):
        return group
    if len(group) == world:
        return list(range(world))
    raise ValueError(f"group {group} names ranks outside the {world} ranks given and does not span all of them")


def check_schedules(
    per_rank: Sequence[Sequence[CollectiveCall]],
    names: Optional[Sequence[str]] = None,
    error: Callable[[str], GraphBuildError] = GraphBuildError,
) -> None:
    """Raises ``error`` at the first collective where a member of a group differs from the group's
    first member.

    Args:
        per_rank: each rank's collectives, in the order it runs them.
        names: how to call each rank in messages (default ``"rank {r}"``).
        error: the exception class to raise (``PartitionError`` at build time, ``EngineError`` at
            load, ``ExecutionError`` in the reference interpreter).
    """
    world = len(per_rank)
    names = list(names) if names is not None else [f"rank {r}" for r in range(world)]
    keyed: list[list[tuple[tuple[int, ...], CollectiveCall]]] = []
    for rank, calls in enumerate(per_rank):
        mine = []
        for call in calls:
            try:
                ranks = tuple(members(call.group, world))
            except ValueError as exc:
                raise error(f"{names[rank]}: {call.describe()}: {exc}") from None
            if rank not in ranks:
                raise error(f"{names[rank]} runs {call.describe()} but is not in its group {list(call.group)}")
            mine.append((ranks, call))
        keyed.append(mine)
    for ranks in dict.fromkeys(key for calls in keyed for key, _ in calls):
        sequences = [[call for key, call in keyed[r] if key == ranks] for r in ranks]
        _compare(sequences, [names[r] for r in ranks], error)


def _compare(sequences: Sequence[Sequence[CollectiveCall]], names: Sequence[str], error: Callable[[str], GraphBuildError]) -> None:
    reference = sequences[0]
    for index in range(1, len(sequences)):
        sequence = sequences[index]
        for position, (mine, theirs) in enumerate(zip(sequence, reference)):
            if (mine.kind, mine.instance_id) != (theirs.kind, theirs.instance_id):
                raise error(
                    f"collective #{position} is {theirs.describe()} on {names[0]} but {mine.describe()} on "
                    f"{names[index]}; every rank must run the same collectives in the same order"
                )
            if (mine.group, mine.attrs) != (theirs.group, theirs.attrs):
                ours, other = {"group": list(theirs.group), **dict(theirs.attrs)}, {"group": list(mine.group), **dict(mine.attrs)}
                differ = sorted(k for k in set(ours) | set(other) if ours.get(k) != other.get(k))
                detail = ", ".join(f"{k}={ours.get(k)!r} vs {other.get(k)!r}" for k in differ)
                raise error(f"collective #{position} {theirs.describe()} differs between {names[0]} and {names[index]}: {detail}")
        if len(sequence) != len(reference):
            longer, which = (reference, 0) if len(reference) > len(sequence) else (sequence, index)
            extra = longer[min(len(reference), len(sequence))].describe()
            raise error(
                f"{names[0]} runs {len(reference)} collectives but {names[index]} runs {len(sequence)} "
                f"(the first unmatched one is {extra} on {names[which]}); every rank must run the same collectives"
            )


__all__ = ["CollectiveCall", "check_schedules", "members"]
