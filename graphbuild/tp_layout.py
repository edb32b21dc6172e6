"""Tensor-parallel layout: a network's tp_size, tp_group and position, read from its ops.

Every op says what it implies through the registry (``OpDef.tp_claim``): a split embedding
claims its ``tp_size`` and ``tp_group`` (and, rank-local, this network's position in the group);
a collective claims its group; replicated ops (a ``tp_size=1`` embedding, arithmetic) claim
nothing, so they live in networks of any tp_size. ``net.meta`` adds what layers and the partition
record: ``tp_size``, ``tp_group`` and ``tp_position`` (the network's position in ``tp_group``,
which is not a rank id: with ``tp_group=[2, 3]`` rank 3 has position 1).

A network is *logical* when nothing gives it a position (the partition makes one network per
rank) and *rank-local* when something does (the partition makes that rank's network).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from graphbuild.errors import PartitionError
from graphbuild.ir import Network, Node
from graphbuild.ops.registry import TPClaim, get_op
from graphbuild.schedule_check import CollectiveCall

POSITION_KEYS = ("tp_position", "tp_rank")
"""Attributes that differ between ranks by design and are left out of schedule comparisons."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """A network's tensor-parallel layout.

    Attributes:
        tp_size: the number of ranks.
        group: the ranks taking part, in rank order.
        position: this network's position in ``group`` (rank-local), or None (logical).
    """

    tp_size: int
    group: tuple[int, ...]
    position: Optional[int]


def claims(net: Network) -> list[tuple[Node, TPClaim]]:
    """Every node's claim, in node order (nodes claiming nothing left out)."""
    found = []
    opdefs = {}
    for node in net.nodes:
        opdef = opdefs.get(node.op) or opdefs.setdefault(node.op, get_op(node.op))
        if opdef.tp_claim is None:
            continue
        claim = opdef.tp_claim(node)
        if claim is not None:
            found.append((node, claim))
    return found


def _describe(node: Node, claim: TPClaim) -> str:
    return f"{node.describe()} has tp_size={claim.tp_size}" + ("" if claim.logical or claim.group is None else f" (group {list(claim.group)})")


def _agreed(net: Network, found: list[tuple[Node, TPClaim]], key: Callable[[TPClaim], object], conflict: Callable[[Node, TPClaim, Node, TPClaim], str]) -> Optional[tuple[Node, TPClaim]]:
    first: Optional[tuple[Node, TPClaim]] = None
    for node, claim in found:
        if key(claim) is None:
            continue
        if first is None:
            first = (node, claim)
        elif key(claim) != key(first[1]):
            raise PartitionError(f"network '{net.name}': {conflict(first[0], first[1], node, claim)}{node.where()}")
    return first


def layout(net: Network) -> Layout:
    """The layout of ``net`` (see the module docstring).

    Raises:
        PartitionError: two nodes disagree on tp_size, group or position (naming both), or a
            rank-local network holds a logical split.
    """
    found = claims(net)
    first = _agreed(
        net, found, lambda c: c.tp_size,
        lambda a, ca, b, cb: f"{_describe(a, ca)} but {_describe(b, cb)}; every tensor-parallel op of a network must use one "
        "tp_size (an op with tp_size=1 is replicated on every rank)",
    )
    tp_size = first[1].tp_size if first is not None else int(net.meta.get("tp_size") or 1)
    grouped = _agreed(
        net, found, lambda c: c.group,
        lambda a, ca, b, cb: f"{a.describe()} runs over tp_group {list(ca.group or ())} but {b.describe()} over "
        f"{list(cb.group or ())}; every tensor-parallel op of a network must use one group",
    )
    group = grouped[1].group if grouped is not None and grouped[1].group is not None else tuple(net.meta.get("tp_group") or range(tp_size))
    if len(group) != tp_size:
        raise PartitionError(f"network '{net.name}': tp_group {list(group)} has {len(group)} ranks but tp_size={tp_size}")
    positions: list[tuple[int, str]] = []
    if net.meta.get("tp_position") is not None:
        positions.append((int(net.meta["tp_position"]), f"network meta tp_position={net.meta['tp_position']}"))
    for node, claim in found:
        if claim.position is not None:
            rank = group[claim.position] if 0 <= claim.position < len(group) else "?"
            positions.append((claim.position, f"{node.describe()} is rank {rank} (position {claim.position} in tp_group {list(group)})"))
    for position, what in positions[1:]:
        if position != positions[0][0]:
            raise PartitionError(f"network '{net.name}': {positions[0][1]} but {what}; all rank-local parts of a network must agree on the rank")
    position = positions[0][0] if positions else None
    if position is not None:
        if not 0 <= position < tp_size:
            raise PartitionError(f"network '{net.name}': {positions[0][1]}, outside the {tp_size} ranks of tp_group {list(group)}")
        for node, claim in found:
            if claim.logical:
                raise PartitionError(
                    f"{node.describe()} is logical (tp_rank=None) but network '{net.name}' is rank-local ({positions[0][1]}); "
                    f"one network uses one mode{node.where()}"
                )
    return Layout(tp_size, tuple(group), position)


def infer_tp_size(net: Network) -> int:
    """The tensor-parallel size of ``net``: what its ops say (1 if none).

    Raises:
        PartitionError: two nodes disagree, naming both.
    """
    return layout(net).tp_size


def rank_order(networks: Sequence[Network]) -> tuple[list[int], Layout]:
    """The indices of rank-local ``networks`` in rank order, and the layout they share.

    Raises:
        PartitionError: a network is logical, the networks disagree on tp_size or tp_group, or a
            rank is missing or given twice.
    """
    if not networks:
        raise PartitionError("expected one rank-local network per rank, got none")
    layouts = [layout(net) for net in networks]
    for net, found in zip(networks, layouts):
        if found.position is None:
            raise PartitionError(
                f"network '{net.name}' is logical (no embedding carries tp_rank); pass it alone to partition(), "
                "or give every network's embeddings tp_rank"
            )
    first = layouts[0]
    for net, found in zip(networks[1:], layouts[1:]):
        if (found.tp_size, found.group) != (first.tp_size, first.group):
            raise PartitionError(
                f"network '{networks[0].name}' has tp_size={first.tp_size}, tp_group {list(first.group)} but network "
                f"'{net.name}' has tp_size={found.tp_size}, tp_group {list(found.group)}; all ranks must agree"
            )
    by_position: dict[int, int] = {}
    for i, found in enumerate(layouts):
        assert found.position is not None
        if found.position in by_position:
            raise PartitionError(
                f"networks '{networks[by_position[found.position]].name}' and '{networks[i].name}' are both rank "
                f"{first.group[found.position]} (position {found.position} in tp_group {list(first.group)}); give each rank once"
            )
        by_position[found.position] = i
    missing = [first.group[p] for p in range(first.tp_size) if p not in by_position]
    if missing:
        raise PartitionError(
            f"the rank-local networks cover ranks {sorted(first.group[p] for p in by_position)} of tp_group {list(first.group)}; "
            f"missing rank{'s' if len(missing) > 1 else ''} {missing}"
        )
    return [by_position[p] for p in range(first.tp_size)], first


def collective_call(node: Node) -> CollectiveCall:
    """``node`` (one that exchanges data with other ranks) as the schedule check sees it."""
    claim = get_op(node.op).claim(node)
    group = claim.group if claim is not None and claim.group is not None else tuple(node.attrs.get("group", ()))
    attrs = tuple(sorted((k, v) for k, v in node.attrs.items() if k not in POSITION_KEYS and k != "instance_id"))
    return CollectiveCall(node.op, node.attrs.get("instance_id"), tuple(group), attrs, node.describe())


def collective_calls(net: Network) -> list[CollectiveCall]:
    """The nodes of ``net`` that exchange data with other ranks, in node order, as ``CollectiveCall``."""
    opdefs = {}
    calls = []
    for node in net.nodes:
        opdef = opdefs.get(node.op) or opdefs.setdefault(node.op, get_op(node.op))
        if opdef.exchanges(node):
            calls.append(collective_call(node))
    return calls


__all__ = ["Layout", "claims", "collective_call", "collective_calls", "infer_tp_size", "layout", "rank_order"]
