"""The numpy reference interpreter: runs a network node by node with the op registry's evaluators.

``run`` executes one network (logical networks included: a logical ``embedding`` evaluates as the
full-table lookup). ``run_ranks`` executes rank-local networks, such as those the partition pass
produces, in lockstep: each rank runs until its next collective, and a collective completes once
every rank of its group has reached it with the same ``instance_id``; then ``OpDef.combine``
computes the result each of them receives.

Besides computing, the interpreter checks the IR: every result must have the dtype, rank and
static dims the op's shape rule inferred, and a symbolic dim must take one size throughout a run.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

from graphbuild.errors import ExecutionError, GraphBuildError, InputError
from graphbuild.ir.network import Network
from graphbuild.ir.node import Node
from graphbuild.ir.value import Value, format_shape
from graphbuild.ops.registry import get_op
from graphbuild.runtime.feeds import validate_feeds

Feeds = Mapping[str, Any]


class _Interpreter:
    """One network's execution state: the array of every value computed so far."""

    def __init__(self, net: Network, feeds: Feeds, owner: str) -> None:
        self.net = net
        self.owner = owner
        arrays = validate_feeds(list(net.inputs.values()), feeds, owner)
        self.env: dict[Value, np.ndarray] = {}
        self.sizes: dict[str, tuple[int, str]] = {}
        for name, value in net.inputs.items():
            self._bind(value, arrays[name], f"input '{name}'")
        for value in net.constants.values():
            self.env[value] = value.const

    def array(self, value: Value) -> np.ndarray:
        return self.env[value]

    def execute(self, node: Node) -> None:
        """Evaluates one non-collective node (single-rank collectives included)."""
        opdef = get_op(node.op)
        if opdef.evaluate is None:
            raise ExecutionError(f"{self.owner}: {node.describe()} has no numpy evaluator; it can only run in an engine{node.where()}")
        inputs = [None if v is None else self.env[v] for v in node.inputs]
        try:
            results = list(opdef.evaluate(node, inputs))
        except GraphBuildError:
            raise
        except Exception as exc:  # numpy reports bad shapes or values with ValueError, IndexError...
            raise ExecutionError(f"{self.owner}: {node.describe()} failed: {type(exc).__name__}: {exc}{node.where()}") from exc
        self.store(node, results)

    def store(self, node: Node, results: Sequence[np.ndarray]) -> None:
        """Records ``node``'s results after checking them against its inferred types."""
        if len(results) != len(node.outputs):
            raise ExecutionError(f"{self.owner}: {node.describe()} produced {len(results)} results for {len(node.outputs)} outputs")
        for value, result in zip(node.outputs, results):
            self._bind(value, np.asarray(result), node.describe())

    def _bind(self, value: Value, array: np.ndarray, source: str) -> None:
        if array.dtype != value.dtype.numpy or array.ndim != value.rank:
            raise ExecutionError(
                f"{self.owner}: {source} produced {array.dtype}{array.shape} for {value.describe()}; "
                "the op's evaluator disagrees with its shape rule"
            )
        for axis, (dim, size) in enumerate(zip(value.shape, array.shape)):
            if isinstance(dim, int):
                if dim != size:
                    raise ExecutionError(f"{self.owner}: {source} produced shape {array.shape} for {value.describe()}")
            elif self.sizes.setdefault(dim, (size, f"{value.name} dim {axis}"))[0] != size:
                first, where = self.sizes[dim]
                raise ExecutionError(
                    f"{self.owner}: symbolic dim '{dim}' is {first} in {where} but {size} in {value.name} dim {axis} "
                    f"(shape {format_shape(value.shape)}, produced by {source})"
                )
        self.env[value] = array

    def outputs(self) -> dict[str, np.ndarray]:
        return {name: self.env[value] for name, value in self.net.outputs.items()}


def run(net: Network, feeds: Feeds) -> dict[str, np.ndarray]:
    """Runs ``net`` on ``feeds`` with numpy.

    Args:
        net: a network whose ops all have evaluators; collectives must span one rank (use
            ``run_ranks`` for rank-local networks).
        feeds: input name -> array of the declared dtype (plain lists are converted).

    Returns:
        Output name -> array.

    Raises:
        InputError: missing or unknown inputs, or a dtype, rank, fixed dim or symbolic dim that does
            not match, naming the input.
        OutOfRangeIdError: an embedding id outside the vocabulary.
        GraphBuildError: any other evaluator failure, naming the node.
    """
    interpreter = _Interpreter(net, feeds, f"network '{net.name}'")
    for node in net.nodes:
        interpreter.execute(node)
    return interpreter.outputs()


def run_ranks(networks: Sequence[Network], feeds: Union[Feeds, Sequence[Feeds]]) -> list[dict[str, np.ndarray]]:
    """Runs rank-local networks together, performing their collectives in memory.

    Rank ``r`` is ``networks[r]``. A collective's ``group`` names the ranks taking part by their
    position in ``networks``; a group that names ranks outside the list (say ``[2, 3]`` for a list
    of two) must span every network, in list order.

    Args:
        networks: one network per rank.
        feeds: one mapping shared by every rank, or one mapping per rank (matching ``networks``).

    User-written rank-local networks (built by TP layers for a rank, or with embeddings carrying
    ``tp_rank``) may come in any order: they
    are partitioned first, exactly as ``gb.build`` partitions them, and run in rank order.

    Returns:
        Each rank's outputs, in rank order.

    Raises:
        InputError: bad feeds (the message names the rank and input).
        ExecutionError: the ranks do not meet at the same collectives (different ``instance_id``,
            op or group, or a rank finishing while others wait), naming each rank's position.
    """
    if not networks:
        raise InputError("run_ranks: expected at least one network")
    if isinstance(feeds, Mapping):
        per_rank: Sequence[Feeds] = [feeds] * len(networks)
    elif len(feeds) == len(networks):
        per_rank = feeds
    else:
        raise InputError(f"run_ranks: got {len(feeds)} feed mappings for {len(networks)} networks; give one per rank or one shared")
    networks, per_rank = _lower_rank_local(networks, per_rank)
    ranks = [_Interpreter(net, f, f"rank {r} (network '{net.name}')") for r, (net, f) in enumerate(zip(networks, per_rank))]
    positions = [0] * len(networks)
    while True:
        waiting: dict[int, Node] = {}
        for r, interpreter in enumerate(ranks):
            nodes = interpreter.net.nodes
            while positions[r] < len(nodes) and not get_op(nodes[positions[r]].op).collective:
                interpreter.execute(nodes[positions[r]])
                positions[r] += 1
            if positions[r] < len(nodes):
                waiting[r] = nodes[positions[r]]
        if not waiting:
            return [interpreter.outputs() for interpreter in ranks]
        progressed = False
        for r in sorted(waiting):
            if r not in waiting:
                continue
            members = _members(waiting[r], r, len(ranks))
            if all(waiting.get(m) is not None and waiting[m].attrs.get("instance_id") == waiting[r].attrs.get("instance_id") for m in members):
                _collective(ranks, [(m, waiting.pop(m)) for m in members])
                for m in members:
                    positions[m] += 1
                progressed = True
        if not progressed:
            raise ExecutionError(f"run_ranks: the ranks do not meet at a common collective: {_states(ranks, positions)}")


def _is_rank_local(net: Network) -> bool:
    """A rank-local network: one built by TP layers for a rank, or holding a rank-local embedding."""
    if net.meta.get("tp_rank") is not None:
        return True
    return any(node.op == "embedding" and node.attrs.get("tp_rank") is not None for node in net.nodes)


def _lower_rank_local(networks: Sequence[Network], per_rank: Sequence[Feeds]) -> tuple[Sequence[Network], Sequence[Feeds]]:
    """Partitions user-written rank-local networks, as ``gb.build`` does, into rank order.

    A rank-local ``embedding`` (one carrying ``tp_rank``) only has meaning together with its peers:
    the partition pass turns it into the shard lookup and the collective that joins the ranks.
    Networks without one (already partitioned, or written with explicit collectives) run as given.
    The feeds follow their networks into rank order (a rank's position in its ``tp_group``).
    """
    if not any(_is_rank_local(net) for net in networks):
        return networks, per_rank
    from graphbuild.passes import partition_ranks, rank_order  # passes build on the IR, not the reverse

    order = rank_order(networks)
    ranked = partition_ranks(networks)  # checks coverage, agreement and collective order
    return ranked, [per_rank[i] for i in order]


def _members(node: Node, rank: int, world: int) -> list[int]:
    """The positions of the ranks taking part in ``node`` (a collective reached by ``rank``)."""
    group = [int(g) for g in node.attrs["group"]]
    if all(0 <= g < world for g in group):
        members = group
    elif len(group) == world:
        members = list(range(world))
    else:
        raise ExecutionError(
            f"run_ranks: rank {rank}'s {node.describe()} has group {group}, which names ranks outside the "
            f"{world} networks given and does not span all of them"
        )
    if rank not in members:
        raise ExecutionError(f"run_ranks: rank {rank} reached {node.describe()} but is not in its group {group}")
    return members


def _collective(ranks: Sequence[_Interpreter], parts: Sequence[tuple[int, Node]]) -> None:
    """Combines the inputs of one collective, in group order, and hands every member the result."""
    first_rank, first = parts[0]
    signature = (first.op, tuple(first.attrs["group"]))
    for r, node in parts[1:]:
        if (node.op, tuple(node.attrs["group"])) != signature:
            raise ExecutionError(
                f"run_ranks: collective instance_id={first.attrs.get('instance_id')} is {first.describe()} with group "
                f"{list(signature[1])} on rank {first_rank} but {node.describe()} with group {list(node.attrs['group'])} on rank {r}"
            )
    arrays = [ranks[r].array(node.inputs[0]) for r, node in parts]
    result = get_op(first.op).combine(first, arrays, None)
    for i, (r, node) in enumerate(parts):
        ranks[r].store(node, [result if i == 0 else result.copy()])


def _states(ranks: Sequence[_Interpreter], positions: Sequence[int]) -> str:
    states = []
    for r, interpreter in enumerate(ranks):
        nodes = interpreter.net.nodes
        if positions[r] >= len(nodes):
            states.append(f"rank {r} has finished")
        else:
            node = nodes[positions[r]]
            states.append(f"rank {r} waits at {node.describe()} (instance_id={node.attrs.get('instance_id')}, group {list(node.attrs['group'])})")
    return "; ".join(states)


__all__ = ["run", "run_ranks"]
