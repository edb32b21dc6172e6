"""Tensor-parallel partition: one network per rank.

These are plain functions, not passes, because they produce several networks. The layout
(tp_size, group, this network's position) comes from ``graphbuild.tp_layout``; what each node
becomes on a rank comes from its op's partition rule in the registry (``OpDef.partition``; ops
without one are replicated: the same op, attributes and name on every rank). This module only
drives the rules.

Modes:

- **Logical** network (nothing gives it a position): ``partition(net)`` returns ``tp_size``
  networks. Network ``p`` is named ``{net.name}.rank{p}`` and has meta ``{"tp_position": p,
  "tp_size": n, "tp_group": group, "source": net.name}``, where ``p`` is the position in
  ``tp_group`` (not a rank id).
- **Rank-local** network (its embeddings carry ``tp_rank``, or its meta ``tp_position``):
  ``partition(net)`` returns ``[that rank's network]``; the shards it holds are checked, not
  sliced. ``partition_ranks`` takes one rank-local network per rank, checks that they fit together
  and returns them partitioned, in rank order.

The value that replaces a node's output keeps the output's name (``wte``), and graph outputs keep
their names. Node names are the same on every rank. Constants are shared by reference, never
copied; a constant shard (``RankContext.constant_shard``) keeps the weight's name (``wte.weight``)
unless the rank also holds the full table or another shard of it (a tied LM head), in which case
it is named ``{weight}.{suffix}`` (``wte.weight.vocab_shard``). Constants that no node or output
reads are not carried over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphbuild import tp_layout
from graphbuild.errors import PartitionError
from graphbuild.ir import Network, Node, Value, format_shape
from graphbuild.ops.registry import create_node, get_op
from graphbuild.schedule_check import check_schedules

# ------------------------------------------------------------------------------ the rank builder


@dataclasses.dataclass
class RankContext:
    """What a partition rule sees (the ``graphbuild.ops.RankContext`` protocol).

    Attributes:
        source: the network being partitioned.
        net: the rank network under construction.
        position: this network's position in ``group``.
        tp_size: number of ranks.
        group: the ranks taking part, in rank order.
        logical: whether ``source`` is a logical network (tables get sliced).
    """

    source: Network
    net: Network
    position: int
    tp_size: int
    group: tuple[int, ...]
    logical: bool
    _values: dict[int, Value] = dataclasses.field(default_factory=dict)
    _shards: dict[tuple[int, Any], tuple[Value, Value, str]] = dataclasses.field(default_factory=dict)
    _carried: set[int] = dataclasses.field(default_factory=set)

    def value(self, value: Optional[Value]) -> Optional[Value]:
        """The rank network's counterpart of a source value (constants are carried over lazily)."""
        if value is None:
            return None
        mapped = self._values.get(id(value))
        if mapped is None:
            if not value.is_constant:
                raise PartitionError(f"network '{self.source.name}': {value.describe()} is read before it is defined; run VerifyPass")
            mapped = self.net.add_constant(value.const, name=_free_name(self.net, value.name)).value
            self._values[id(value)] = mapped
            self._carried.add(id(value))
        return mapped

    def bind(self, old: Value, new: Value) -> None:
        """Records that ``new`` (in the rank network) stands for the source value ``old``."""
        self._values[id(old)] = new

    def emit(self, op: str, inputs: Sequence[Optional[Value]], attrs: dict[str, Any], *, name: str, origin: Any = None) -> Node:
        """Adds a node to the rank network (its shape rule runs, as for any new node)."""
        return create_node(self.net, op, list(inputs), attrs, name=name, origin=origin)

    def replicate(self, node: Node, attrs: Optional[dict[str, Any]] = None) -> Sequence[Value]:
        """``node`` rebuilt in the rank network: same op, name, origin and meta (``attrs`` if given)."""
        clone = self.emit(node.op, [self.value(v) for v in node.inputs], dict(node.attrs if attrs is None else attrs), name=node.name, origin=node.origin)
        clone.meta = dict(node.meta)
        return clone.outputs

    def constant_shard(self, weight: Value, key: Any, make: Callable[[np.ndarray], np.ndarray], suffix: str) -> Value:
        """This rank's piece ``make(weight.const)`` of a constant, made once per ``(weight, key)``."""
        entry = self._shards.get((id(weight), key))
        if entry is None:
            shard = self.net.add_constant(make(weight.const), name=_free_name(self.net, f"{weight.name}.{suffix}")).value
            entry = self._shards[(id(weight), key)] = (weight, shard, suffix)
        return entry[1]

    def name_shards(self) -> None:
        """A weight's only shard takes the weight's name when the rank holds nothing else of it."""
        counts: dict[int, int] = {}
        for weight, _, _ in self._shards.values():
            counts[id(weight)] = counts.get(id(weight), 0) + 1
        outputs = {id(v) for v in self.source.outputs.values()}
        for weight, shard, _ in self._shards.values():
            if counts[id(weight)] == 1 and id(weight) not in self._carried and id(weight) not in outputs:
                _adopt_name(self.net, shard, weight.name)


def _free_name(net: Network, name: str) -> str:
    """``name``, or ``name_{k}`` when a value of ``net`` already has it."""
    if name not in net.value_names:
        return name
    unique = net.value_names.claim(name)
    net.value_names.release(unique)
    return unique


def replicate(ctx: RankContext, node: Node) -> Sequence[Value]:
    """The rule of ops without one: the same op, attributes and name on every rank."""
    return ctx.replicate(node)


def _adopt_name(net: Network, value: Value, name: str) -> None:
    """Renames a value the partition just created to ``name`` when that name is free."""
    if value.name == name or name in net.value_names:
        return
    old = value.name
    net.value_names.release(old)
    value.name = net.value_names.claim(name)
    if value.is_constant:
        net.constants[value.name] = net.constants.pop(old)


def _build_rank(source: Network, position: int, tp_size: int, group: tuple[int, ...], logical: bool) -> Network:
    net = Network(f"{source.name}.rank{position}" if logical else source.name)
    net.meta = {**source.meta, "tp_position": position, "tp_size": tp_size, "tp_group": group, "source": source.meta.get("source", source.name)}
    ctx = RankContext(source, net, position, tp_size, group, logical)
    for value in source.inputs.values():
        ctx.bind(value, net.add_input(value.name, value.dtype, value.shape).value)
    rules: dict[str, Any] = {}
    for node in source.nodes:
        first_new = len(net.nodes)
        if node.op not in rules:
            rules[node.op] = get_op(node.op).partition or replicate
        replacements = list(rules[node.op](ctx, node))
        if len(replacements) != len(node.outputs):
            raise PartitionError(f"{node.describe()}: the partition rule returned {len(replacements)} values for {len(node.outputs)} outputs")
        created = {id(n) for n in net.nodes[first_new:]}
        for old, new in zip(node.outputs, replacements):
            if new.dtype != old.dtype or new.shape != old.shape:
                raise PartitionError(
                    f"{node.describe()}: on rank {group[position]} it becomes {new.dtype}{format_shape(new.shape)}, "
                    f"but the network expects {old.describe()}; the partition rule of '{node.op}' is wrong"
                )
            if new.producer is not None and id(new.producer) in created:
                _adopt_name(net, new, old.name)
            ctx.bind(old, new)
    for out_name, value in source.outputs.items():
        net.outputs[out_name] = ctx.value(value)
    ctx.name_shards()
    return net


# ------------------------------------------------------------------------------- entry points


def partition(net: Network, tp_size: Optional[int] = None) -> list[Network]:
    """Splits ``net`` into per-rank networks (see the module docstring).

    Args:
        net: a logical or a rank-local network; it is not modified.
        tp_size: the expected tensor-parallel size (checked); inferred from the network when None.

    Returns:
        ``tp_size`` networks in rank order for a logical network; one network for a rank-local one.

    Raises:
        PartitionError: inconsistent tp sizes, groups or ranks, a rank-local shard of the wrong
            shape, or explicit collectives in a logical network.
    """
    found = tp_layout.layout(net)
    if tp_size is not None and tp_size != found.tp_size:
        raise PartitionError(f"network '{net.name}' has tp_size={found.tp_size} (from its embeddings and collectives), but tp_size={tp_size} was asked for")
    if found.position is not None:
        return [_build_rank(net, found.position, found.tp_size, found.group, logical=False)]
    return [_build_rank(net, p, found.tp_size, found.group, logical=True) for p in range(found.tp_size)]


def collectives(net: Network) -> list[Node]:
    """The nodes of ``net`` that exchange data with other ranks, in node order."""
    return [node for node in net.nodes if get_op(node.op).exchanges(node)]


def rank_order(networks: Sequence[Network]) -> list[int]:
    """The indices of rank-local ``networks`` in rank order (position in their tp_group).

    ``partition_ranks(networks)[p]`` is built from ``networks[rank_order(networks)[p]]``.

    Raises:
        PartitionError: as ``partition_ranks``, except for the comparison of collectives.
    """
    return tp_layout.rank_order(networks)[0]


def partition_ranks(networks: Sequence[Network]) -> list[Network]:
    """Checks and partitions one rank-local network per rank.

    Args:
        networks: rank-local networks, in any order, together covering every rank of the group
            exactly once.

    Returns:
        The partitioned networks, ordered by rank (position in the group).

    Raises:
        PartitionError: a network is logical, the networks disagree on tp_size or tp_group, a rank
            is missing or given twice, or their collectives differ (naming the first difference).
    """
    order, found = tp_layout.rank_order(networks)
    ranks = [_build_rank(networks[i], p, found.tp_size, found.group, logical=False) for p, i in enumerate(order)]
    names = [f"rank {found.group[p]} (network '{networks[i].name}')" for p, i in enumerate(order)]
    check_schedules([tp_layout.collective_calls(net) for net in ranks], names, PartitionError)
    return ranks


infer_tp_size = tp_layout.infer_tp_size

__all__ = [
    "RankContext",
    "collectives",
    "infer_tp_size",
    "partition",
    "partition_ranks",
    "rank_order",
    "replicate",
]
