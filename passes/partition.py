"""Tensor-parallel partition: one network per rank.

These are plain functions, not passes, because they produce several networks.

Modes (see ``graphbuild.functional.embedding``):

- **Logical** network (no node carries a rank): ``partition(net)`` returns ``tp_size`` networks.
  Network ``r`` is named ``{net.name}.rank{r}`` and has meta ``{"tp_rank": r, "tp_size": n,
  "tp_group": group, "source": net.name}``, where ``r`` is the position in ``tp_group``.
- **Rank-local** network (its embeddings carry ``tp_rank``; or, for a network that was already
  partitioned, its collectives carry ``rank`` and its meta ``tp_rank``): ``partition(net)`` returns
  ``[that rank's network]``; the shards it holds are checked, not sliced. ``partition_ranks``
  takes one rank-local network per rank, checks that they fit together and returns them
  partitioned, in rank order.

Every node is rebuilt into the rank network by a handler looked up by op (tinygrad's
``engine/multi.py`` does the same): the default handler replicates the node with the same op,
attributes and name; constants are shared by reference, never copied. The ``embedding`` handler
emits this rank's lookup (``tp_embedding``, node ``{name}/lookup``) and, for ``tp_size > 1``, the
collective that completes it: an ``allreduce`` (``{name}/allreduce``, vocab split) or an
``allgather`` (``{name}/allgather``, hidden split). The value that replaces the embedding's output
keeps the output's name (``wte``), and graph outputs keep their names. Node names are the same on
every rank. A logical table is sliced with ``graphbuild.sharding.shard_table``; the shard keeps the
weight's name (``wte.weight``) unless the full table is read elsewhere too (a tied LM head), in
which case the full table stays and the shard is named ``{weight}.vocab_shard`` or
``{weight}.hidden_shard``. Constants that no node or output reads are not carried over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, TypeVar

from graphbuild.errors import PartitionError
from graphbuild.ir import Network, Node, Value, format_shape
from graphbuild.ops.registry import create_node, get_op
from graphbuild.sharding import hidden_split_sizes, shard_table, vocab_shard_rows

# ------------------------------------------------------------------------------ tp size and group


def _tp_size_of(node: Node) -> Optional[int]:
    """The tensor-parallel size ``node`` implies, or None when it is not a TP node."""
    if node.op in ("embedding", "tp_embedding"):
        return int(node.attrs.get("tp_size", 1))
    if get_op(node.op).collective:
        return len(node.attrs["group"])
    return None


def _group_of(node: Node) -> Optional[tuple[int, ...]]:
    if node.op == "embedding":
        return tuple(node.attrs["tp_group"])
    if get_op(node.op).collective:
        return tuple(node.attrs["group"])
    return None


def _describe_size(node: Node, size: int) -> str:
    if node.op in ("embedding", "tp_embedding"):
        return f"{node.describe()} has tp_size={size}"
    return f"{node.describe()} has tp_size={size} (group {list(node.attrs['group'])})"


_T = TypeVar("_T")


def _agreed(net: Network, attribute: Callable[[Node], Optional[_T]], conflict: Callable[[Node, _T, Node, _T], str]) -> Optional[tuple[Node, _T]]:
    """The first node carrying ``attribute`` and its value, after checking every other node agrees."""
    first: Optional[tuple[Node, _T]] = None
    for node in net.nodes:
        value = attribute(node)
        if value is None:
            continue
        if first is None:
            first = (node, value)
        elif value != first[1]:
            raise PartitionError(f"network '{net.name}': {conflict(first[0], first[1], node, value)}")
    return first


def infer_tp_size(net: Network) -> int:
    """The tensor-parallel size of ``net``: what its embeddings and collectives say (1 if none).

    Raises:
        PartitionError: two nodes disagree, naming both.
    """
    first = _agreed(
        net, _tp_size_of,
        lambda a, size_a, b, size_b: f"{_describe_size(a, size_a)} but {_describe_size(b, size_b)}; "
        "every tensor-parallel op of a network must use one tp_size",
    )
    if first is None:
        meta_size = net.meta.get("tp_size")
        return int(meta_size) if meta_size is not None else 1
    return first[1]


def _tp_group(net: Network, tp_size: int) -> tuple[int, ...]:
    first = _agreed(
        net, _group_of,
        lambda a, group_a, b, group_b: f"{a.describe()} runs over tp_group {list(group_a)} but {b.describe()} "
        f"over {list(group_b)}; every tensor-parallel op of a network must use one group",
    )
    if first is not None:
        return first[1]
    return tuple(net.meta.get("tp_group", range(tp_size)))


def _rank_claims(net: Network, group: tuple[int, ...]) -> list[tuple[int, str]]:
    """Which rank position each rank-carrying part of ``net`` names: ``(position, description)``."""
    claims: list[tuple[int, str]] = []
    if net.meta.get("tp_rank") is not None:
        claims.append((int(net.meta["tp_rank"]), f"network meta tp_rank={net.meta['tp_rank']}"))
    for node in net.nodes:
        if node.op == "embedding" and node.attrs.get("tp_rank") is not None:
            tp_rank = node.attrs["tp_rank"]
            if tp_rank not in group:
                raise PartitionError(f"{node.describe()}: tp_rank={tp_rank} is outside tp_group {list(group)} (tp_size={len(group)})")
            claims.append((group.index(tp_rank), f"{node.describe()} has tp_rank={tp_rank} (position {group.index(tp_rank)} in tp_group {list(group)})"))
        elif get_op(node.op).collective and node.attrs.get("rank") is not None:
            claims.append((int(node.attrs["rank"]), f"{node.describe()} has rank={node.attrs['rank']}"))
    return claims


# ------------------------------------------------------------------------------ the rank builder


@dataclasses.dataclass
class RankContext:
    """What a partition handler sees: the source network, the rank network being built, the rank.

    Attributes:
        source: the network being partitioned.
        net: the rank network under construction.
        rank: this network's position in ``group``.
        tp_size: number of ranks.
        group: the ranks taking part, in rank order.
        logical: whether ``source`` is a logical network (tables get sliced).
    """

    source: Network
    net: Network
    rank: int
    tp_size: int
    group: tuple[int, ...]
    logical: bool
    _values: dict[int, Value] = dataclasses.field(default_factory=dict)
    _shards: dict[tuple[int, int, int], Value] = dataclasses.field(default_factory=dict)

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
        return mapped

    def bind(self, old: Value, new: Value) -> None:
        """Records that ``new`` (in the rank network) stands for the source value ``old``."""
        self._values[id(old)] = new

    def emit(self, op: str, inputs: Sequence[Optional[Value]], attrs: dict[str, Any], *, name: str, origin: Any = None) -> Node:
        """Adds a node to the rank network (its shape rule runs, as for any new node)."""
        return create_node(self.net, op, list(inputs), attrs, name=name, origin=origin)

    def shard(self, weight: Value, sharding_dim: int, vocab_size: int) -> Value:
        """This rank's shard of the first ``vocab_size`` rows of the logical table ``weight``.

        One constant per weight, split and vocabulary: embeddings that share a table but read
        different ``vocab_size`` prefixes split different rows.
        """
        key = (id(weight), sharding_dim, vocab_size)
        if key not in self._shards:
            table = weight.const[:vocab_size]
            piece = shard_table(table, self.tp_size, self.rank, sharding_dim)
            name = weight.name if _only_sharded(weight, sharding_dim, self.source) else f"{weight.name}.{('vocab', 'hidden')[sharding_dim]}_shard"
            self._shards[key] = self.net.add_constant(piece, name=_free_name(self.net, name)).value
        return self._shards[key]


def _free_name(net: Network, name: str) -> str:
    """``name``, or ``name_{k}`` when a value of ``net`` already has it."""
    if name not in net.value_names:
        return name
    unique = net.value_names.claim(name)
    net.value_names.release(unique)
    return unique


def _only_sharded(weight: Value, sharding_dim: int, source: Network) -> bool:
    """Whether every reader of ``weight`` is a logical embedding slicing it the same way."""
    if any(v is weight for v in source.outputs.values()):
        return False
    for node, index in weight.uses:
        attrs = node.attrs
        if node.op != "embedding" or index != 1 or attrs["tp_rank"] is not None or attrs["tp_size"] == 1 or attrs["sharding_dim"] != sharding_dim:
            return False
    return True


Handler = Callable[[RankContext, Node], Sequence[Value]]


def _clone(ctx: RankContext, node: Node, attrs: dict[str, Any]) -> Sequence[Value]:
    """``node`` rebuilt in the rank network with ``attrs``: same op, name, origin and meta."""
    clone = ctx.emit(node.op, [ctx.value(v) for v in node.inputs], attrs, name=node.name, origin=node.origin)
    clone.meta = dict(node.meta)
    return clone.outputs


def replicate(ctx: RankContext, node: Node) -> Sequence[Value]:
    """The default handler: the same op, attributes and name on every rank."""
    return _clone(ctx, node, dict(node.attrs))


def _collective_in_logical(ctx: RankContext, node: Node) -> Sequence[Value]:
    raise PartitionError(
        f"{node.describe()}: explicit collectives belong in rank-local networks, but network '{ctx.source.name}' is logical "
        "(no embedding carries tp_rank); remove it (the partition pass inserts collectives itself) or build rank-local "
        f"networks, one per rank (embeddings with tp_rank, or net.meta['tp_rank'] = the position in the group){node.where()}"
    )


def _collective(ctx: RankContext, node: Node) -> Sequence[Value]:
    """User collectives: refused in logical networks, replicated with ``rank`` set in rank-local ones."""
    if ctx.logical:
        return _collective_in_logical(ctx, node)
    return _clone(ctx, node, {**node.attrs, "rank": ctx.rank})


def _check_shard(node: Node, table: Value, position: int) -> None:
    """A rank-local table must have the shape ``functional.embedding`` derived for it."""
    attrs = node.attrs
    n, vocab, dim = attrs["tp_size"], attrs["vocab_size"], attrs["embedding_dim"]
    rows, cols = table.shape
    if attrs["sharding_dim"] == 0:
        expected = (vocab_shard_rows(vocab, n), dim)
        ok = (rows, cols) == expected
        split = f"a vocab split of vocab_size={vocab}"
    else:
        expected = (vocab, hidden_split_sizes(dim, n)[position])
        ok = isinstance(rows, int) and rows >= vocab and cols == expected[1]
        split = f"a hidden split of embedding_dim={dim}"
    if not ok:
        raise PartitionError(
            f"{node.describe()}: rank-local table {table.name!r} has shape {format_shape(table.shape)}, expected "
            f"{format_shape(expected)} for rank {attrs['tp_rank']} of {split} over tp_size={n}; "
            f"give this rank's shard (graphbuild.sharding.shard_table){node.where()}"
        )


def _embedding(ctx: RankContext, node: Node) -> Sequence[Value]:
    """``embedding`` → ``tp_embedding`` (+ ``allreduce`` for a vocab split, ``allgather`` for a hidden split)."""
    attrs = node.attrs
    ids, weight = node.inputs[0], node.inputs[1]
    workspace = node.inputs[2] if len(node.inputs) > 2 else None
    n, dim, vocab = attrs["tp_size"], attrs["sharding_dim"], attrs["vocab_size"]
    if attrs["tp_rank"] is not None:
        table = ctx.value(weight)
        _check_shard(node, table, ctx.rank)
    elif n == 1:
        table = ctx.value(weight)
    elif not weight.is_constant:
        raise PartitionError(
            f"{node.describe()}: logical mode needs a constant weight to slice; pass tp_rank for rank-local mode "
            f"(the weight is {weight.describe()}){node.where()}"
        )
    else:
        table = ctx.shard(weight, dim, vocab)
    vocab_start = ctx.rank * table.shape[0] if dim == 0 and n > 1 else 0
    lookup_attrs = {
        "name": node.name,
        "vocab_start": int(vocab_start),
        "vocab_size": int(vocab),
        "out_of_range": attrs["out_of_range"],
        "tp_rank": ctx.rank,
        "tp_size": n,
    }
    lookup = ctx.emit("tp_embedding", [ctx.value(ids), table], lookup_attrs, name=f"{node.name}/lookup", origin=node.origin)
    if n == 1:
        return lookup.outputs
    inputs = [lookup.output] + ([ctx.value(workspace)] if workspace is not None else [])
    common = {"group": tuple(attrs["tp_group"]), "instance_id": attrs["instance_id"], "rank": ctx.rank}
    if dim == 0:
        collective = ctx.emit("allreduce", inputs, {**common, "reduce": "sum"}, name=f"{node.name}/allreduce", origin=node.origin)
    else:
        sizes = hidden_split_sizes(attrs["embedding_dim"], n)
        even = len(set(sizes)) == 1
        collective = ctx.emit("allgather", inputs, {**common, "axis": -1, "sizes": None if even else tuple(sizes)}, name=f"{node.name}/allgather", origin=node.origin)
    return collective.outputs


HANDLERS: dict[str, Handler] = {
    "embedding": _embedding,
    "allreduce": _collective,
    "allgather": _collective,
}
"""Partition handlers by op; ops not listed are replicated. A handler returns the values that
replace the node's outputs (same dtypes and shapes)."""


def _adopt_name(net: Network, value: Value, name: str) -> None:
    """Renames a value the partition just created to ``name`` when that name is free."""
    if value.name == name or name in net.value_names:
        return
    net.value_names.release(value.name)
    value.name = net.value_names.claim(name)


def _build_rank(source: Network, rank: int, tp_size: int, group: tuple[int, ...], logical: bool) -> Network:
    net = Network(f"{source.name}.rank{rank}" if logical else source.name)
    net.meta = {**source.meta, "tp_rank": rank, "tp_size": tp_size, "tp_group": group, "source": source.meta.get("source", source.name)}
    ctx = RankContext(source, net, rank, tp_size, group, logical)
    for value in source.inputs.values():
        ctx.bind(value, net.add_input(value.name, value.dtype, value.shape).value)
    for node in source.nodes:
        first_new = len(net.nodes)
        handler = HANDLERS.get(node.op, replicate)
        replacements = list(handler(ctx, node))
        if len(replacements) != len(node.outputs):
            raise PartitionError(f"{node.describe()}: the partition handler returned {len(replacements)} values for {len(node.outputs)} outputs")
        created = {id(n) for n in net.nodes[first_new:]}
        for old, new in zip(node.outputs, replacements):
            if new.dtype != old.dtype or new.shape != old.shape:
                raise PartitionError(
                    f"{node.describe()}: on rank {rank} it becomes {new.dtype}{format_shape(new.shape)}, "
                    f"but the network expects {old.describe()}; the partition handler for '{node.op}' is wrong"
                )
            if new.producer is not None and id(new.producer) in created:
                _adopt_name(net, new, old.name)
            ctx.bind(old, new)
    for out_name, value in source.outputs.items():
        net.outputs[out_name] = ctx.value(value)
    return net


# ------------------------------------------------------------------------------- entry points


@dataclasses.dataclass(frozen=True)
class _Layout:
    tp_size: int
    group: tuple[int, ...]
    rank: Optional[int]  # position in group; None for a logical network


def _layout(net: Network) -> _Layout:
    tp_size = infer_tp_size(net)
    group = _tp_group(net, tp_size)
    if len(group) != tp_size:
        raise PartitionError(f"network '{net.name}': tp_group {list(group)} has {len(group)} ranks but tp_size={tp_size}")
    claims = _rank_claims(net, group)
    for position, what in claims[1:]:
        if position != claims[0][0]:
            raise PartitionError(f"network '{net.name}': {claims[0][1]} but {what}; all rank-local parts of a network must agree on tp_rank")
    rank = claims[0][0] if claims else None
    if rank is not None:
        if not 0 <= rank < tp_size:
            raise PartitionError(f"network '{net.name}': {claims[0][1]}, outside the {tp_size} ranks of tp_group {list(group)}")
        for node in net.nodes:
            if node.op == "embedding" and node.attrs["tp_rank"] is None and node.attrs["tp_size"] > 1:
                raise PartitionError(
                    f"{node.describe()} is logical (tp_rank=None) but network '{net.name}' is rank-local ({claims[0][1]}); "
                    f"one network uses one mode{node.where()}"
                )
    return _Layout(tp_size, group, rank)


def partition(net: Network, tp_size: Optional[int] = None) -> list[Network]:
    """Splits ``net`` into per-rank networks (see the module docstring).

    Args:
        net: a logical or a rank-local network; it is not modified.
        tp_size: the expected tensor-parallel size (checked); inferred from the network when None.

    Returns:
        ``tp_size`` networks in rank order for a logical network; one network for a rank-local one.

    Raises:
        PartitionError: inconsistent tp sizes, groups or ranks, a logical embedding whose weight is
            not a constant, a rank-local shard of the wrong shape, or explicit collectives in a
            logical network.
    """
    layout = _layout(net)
    if tp_size is not None and tp_size != layout.tp_size:
        raise PartitionError(f"network '{net.name}' has tp_size={layout.tp_size} (from its embeddings and collectives), but tp_size={tp_size} was asked for")
    if layout.rank is not None:
        return [_build_rank(net, layout.rank, layout.tp_size, layout.group, logical=False)]
    return [_build_rank(net, r, layout.tp_size, layout.group, logical=True) for r in range(layout.tp_size)]


def collective_signature(node: Node) -> tuple[Any, ...]:
    """What must match across ranks for one collective: op, instance_id, and attributes but rank."""
    attrs = tuple(sorted((k, v) for k, v in node.attrs.items() if k != "rank"))
    return (node.op, node.attrs.get("instance_id"), attrs)


def describe_collective(node: Node) -> str:
    return f"{node.describe()} (instance_id={node.attrs.get('instance_id')})"


def compare_collective_sequences(per_rank: Sequence[Sequence[Node]], names: Sequence[str]) -> None:
    """Raises ``PartitionError`` at the first collective where a rank differs from rank 0.

    Args:
        per_rank: each rank's collectives, in the order it runs them.
        names: how to call each rank in messages (``"rank 1 (network 'local1')"``).
    """
    reference = per_rank[0]
    for rank in range(1, len(per_rank)):
        sequence = per_rank[rank]
        for position, (mine, theirs) in enumerate(zip(sequence, reference)):
            if (mine.op, mine.attrs.get("instance_id")) != (theirs.op, theirs.attrs.get("instance_id")):
                raise PartitionError(
                    f"collective #{position} is {describe_collective(theirs)} on {names[0]} but {describe_collective(mine)} on "
                    f"{names[rank]}; every rank must run the same collectives in the same order"
                )
            if collective_signature(mine) != collective_signature(theirs):
                differ = sorted(k for k in set(mine.attrs) | set(theirs.attrs) if k != "rank" and mine.attrs.get(k) != theirs.attrs.get(k))
                detail = ", ".join(f"{k}={theirs.attrs.get(k)!r} vs {mine.attrs.get(k)!r}" for k in differ)
                raise PartitionError(
                    f"collective #{position} {describe_collective(theirs)} differs between {names[0]} and {names[rank]}: {detail}"
                )
        if len(sequence) != len(reference):
            longer, which = (reference, 0) if len(reference) > len(sequence) else (sequence, rank)
            extra = describe_collective(longer[min(len(reference), len(sequence))])
            raise PartitionError(
                f"{names[0]} runs {len(reference)} collectives but {names[rank]} runs {len(sequence)} "
                f"(the first unmatched one is {extra} on {names[which]}); every rank must run the same collectives"
            )


def collectives(net: Network) -> list[Node]:
    """The collective nodes of ``net``, in node order."""
    return [node for node in net.nodes if get_op(node.op).collective]


def _rank_order(networks: Sequence[Network]) -> tuple[list[int], _Layout]:
    """The indices of ``networks`` in rank order and the layout they share (see ``partition_ranks``)."""
    if not networks:
        raise PartitionError("partition_ranks: expected one rank-local network per rank, got none")
    layouts = [_layout(net) for net in networks]
    for net, layout in zip(networks, layouts):
        if layout.rank is None:
            raise PartitionError(
                f"network '{net.name}' is logical (no embedding carries tp_rank); pass it alone to partition(), "
                "or give every network's embeddings tp_rank"
            )
    first = layouts[0]
    for net, layout in zip(networks[1:], layouts[1:]):
        if (layout.tp_size, layout.group) != (first.tp_size, first.group):
            raise PartitionError(
                f"network '{networks[0].name}' has tp_size={first.tp_size}, tp_group {list(first.group)} but network "
                f"'{net.name}' has tp_size={layout.tp_size}, tp_group {list(layout.group)}; all ranks must agree"
            )
    by_rank: dict[int, int] = {}
    for i, layout in enumerate(layouts):
        assert layout.rank is not None
        if layout.rank in by_rank:
            raise PartitionError(
                f"networks '{networks[by_rank[layout.rank]].name}' and '{networks[i].name}' are both rank {first.group[layout.rank]} "
                f"(position {layout.rank} in tp_group {list(first.group)}); give each rank once"
            )
        by_rank[layout.rank] = i
    missing = [first.group[r] for r in range(first.tp_size) if r not in by_rank]
    if missing:
        raise PartitionError(
            f"the rank-local networks cover ranks {sorted(first.group[r] for r in by_rank)} of tp_group {list(first.group)}; "
            f"missing rank{'s' if len(missing) > 1 else ''} {missing}"
        )
    return [by_rank[r] for r in range(first.tp_size)], first


def rank_order(networks: Sequence[Network]) -> list[int]:
    """The indices of rank-local ``networks`` in rank order (position in their tp_group).

    ``partition_ranks(networks)[r]`` is built from ``networks[rank_order(networks)[r]]``.

    Raises:
        PartitionError: as ``partition_ranks``, except for the comparison of collectives.
    """
    return _rank_order(networks)[0]


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
    order, layout = _rank_order(networks)
    ranks = [_build_rank(networks[i], r, layout.tp_size, layout.group, logical=False) for r, i in enumerate(order)]
    names = [f"rank {layout.group[r]} (network '{networks[i].name}')" for r, i in enumerate(order)]
    compare_collective_sequences([collectives(net) for net in ranks], names)
    return ranks


__all__ = [
    "HANDLERS",
    "RankContext",
    "collectives",
    "compare_collective_sequences",
    "infer_tp_size",
    "partition",
    "partition_ranks",
    "rank_order",
    "replicate",
]
