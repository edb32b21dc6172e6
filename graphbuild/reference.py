"""The numpy reference interpreter: runs a network node by node with the op registry's evaluators.

``run`` executes one network (logical networks included: a logical ``embedding`` evaluates as the
full-table lookup). ``run_ranks`` executes rank-local networks (those the partition pass produces,
or written by hand, one per rank) in lockstep: each rank runs until its next exchange (a node the
registry says exchanges data with other ranks: a collective, or a rank-local split embedding), and
an exchange completes once every rank of its group has reached it with the same ``instance_id``;
then ``OpDef.combine`` joins the ranks' contributions (``OpDef.contribution``) into the result each
of them receives. Before running, the ranks' schedules are compared
(``graphbuild.schedule_check``), as ``gb.build`` and the executor compare them.

Like an engine, an exchange whose workspace input is a graph input writes its result into the fed
array when that array fits (same dtype, large enough, C-contiguous); an embedding split over
several ranks counts as an exchange in ``run`` too, since its engine runs a collective there.

Besides computing, the interpreter checks the IR: every result must have the dtype, rank and
static dims the op's shape rule inferred, and a symbolic dim must take one size throughout a run.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

from graphbuild import tp_layout
from graphbuild.errors import ExecutionError, GraphBuildError, InputError
from graphbuild.ir.network import Network
from graphbuild.ir.node import Node
from graphbuild.ir.value import Value, format_shape
from graphbuild.ops.registry import OpDef, get_op
from graphbuild.runtime.feeds import validate_feeds
from graphbuild.schedule_check import check_schedules, members

Feeds = Mapping[str, Any]


class _Interpreter:
    """One network's execution state: the array of every value computed so far."""

    def __init__(self, net: Network, feeds: Feeds, owner: str) -> None:
        self.net = net
        self.owner = owner
        arrays = validate_feeds(list(net.inputs.values()), feeds, owner)
        self.feeds = feeds
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
        inputs = self.inputs_of(node)
        results = self.guarded(node, lambda: list(opdef.evaluate(node, inputs)))
        self.store(node, results)
        claim = opdef.claim(node)
        if opdef.collective or (claim is not None and claim.tp_size > 1):
            self.write_workspace(opdef, node, results[0])

    def guarded(self, node: Node, compute: Any) -> Any:
        """``compute()``, with failures other than graphbuild's own reported against ``node``."""
        try:
            return compute()
        except GraphBuildError:
            raise
        except Exception as exc:  # numpy reports bad shapes or values with ValueError, IndexError...
            raise ExecutionError(f"{self.owner}: {node.describe()} failed: {type(exc).__name__}: {exc}{node.where()}") from exc

    def inputs_of(self, node: Node) -> list[Any]:
        try:
            return [None if v is None else self.env[v] for v in node.inputs]
        except KeyError:
            missing = next(v for v in node.inputs if v is not None and v not in self.env)
            raise ExecutionError(
                f"{self.owner}: {node.describe()} reads {missing.describe()} before it is computed (misordered nodes or a "
                f"cycle; graphbuild.passes.verify_network lists the problems){node.where()}"
            ) from None

    def write_workspace(self, opdef: OpDef, node: Node, result: np.ndarray) -> None:
        """Copies an exchange's result into the fed workspace array, as engines do, when it fits."""
        index = opdef.workspace_input
        if index is None or index >= len(node.inputs) or node.inputs[index] is None or not node.inputs[index].is_input:
            return
        fed = self.feeds.get(node.inputs[index].name)
        if not isinstance(fed, np.ndarray) or fed.dtype != result.dtype or fed.size < result.size:
            return
        if not fed.flags.c_contiguous or not fed.flags.writeable:
            return
        fed.reshape(-1)[: result.size] = result.reshape(-1)

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
    ``tp_rank``) may come in any order: they run in rank order, as written (a rank-local split
    embedding looks up its shard and meets its peers, as the collective ``gb.build`` inserts does).

    Returns:
        Each rank's outputs, in rank order.

    Raises:
        InputError: bad feeds (the message names the rank and input).
        ExecutionError: the ranks do not meet at the same collectives (different ``instance_id``,
            op, group or attributes, or a rank finishing while others wait), naming each rank.
        PartitionError: rank-local networks that do not cover their group once each.
    """
    if not networks:
        raise InputError("run_ranks: expected at least one network")
    if isinstance(feeds, Mapping):
        per_rank: Sequence[Feeds] = [feeds] * len(networks)
    elif len(feeds) == len(networks):
        per_rank = feeds
    else:
        raise InputError(f"run_ranks: got {len(feeds)} feed mappings for {len(networks)} networks; give one per rank or one shared")
    networks, per_rank = _in_rank_order(networks, per_rank)
    world = len(networks)
    check_schedules([tp_layout.collective_calls(net) for net in networks], [f"rank {r} (network '{n.name}')" for r, n in enumerate(networks)], ExecutionError)
    ranks = [_Interpreter(net, f, f"rank {r} (network '{net.name}')") for r, (net, f) in enumerate(zip(networks, per_rank))]
    exchanges = [[get_op(node.op).exchanges(node) for node in net.nodes] for net in networks]
    positions = [0] * world
    while True:
        waiting: dict[int, Node] = {}
        for r, interpreter in enumerate(ranks):
            nodes = interpreter.net.nodes
            while positions[r] < len(nodes) and not exchanges[r][positions[r]]:
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
            group = _members(waiting[r], r, world)
            if all(waiting.get(m) is not None and waiting[m].attrs.get("instance_id") == waiting[r].attrs.get("instance_id") for m in group):
                _exchange(ranks, [(m, waiting.pop(m)) for m in group])
                for m in group:
                    positions[m] += 1
                progressed = True
        if not progressed:
            raise ExecutionError(f"run_ranks: the ranks do not meet at a common collective: {_states(ranks, positions)}")


def _in_rank_order(networks: Sequence[Network], per_rank: Sequence[Feeds]) -> tuple[Sequence[Network], Sequence[Feeds]]:
    """Rank-local networks (and their feeds) in rank order: by their position in ``tp_group``.

    Networks that do not say which rank they are (written with explicit collectives only) run in
    the order given.
    """
    if not any(tp_layout.layout(net).position is not None for net in networks):
        return networks, per_rank
    order = tp_layout.rank_order(networks)[0]
    return [networks[i] for i in order], [per_rank[i] for i in order]


def _group_of(node: Node) -> list[int]:
    claim = get_op(node.op).claim(node)
    return list(claim.group) if claim is not None and claim.group is not None else [int(g) for g in node.attrs["group"]]


def _members(node: Node, rank: int, world: int) -> list[int]:
    """The positions of the ranks taking part in ``node`` (an exchange reached by ``rank``)."""
    group = _group_of(node)
    try:
        ranks = members(group, world)
    except ValueError as exc:
        raise ExecutionError(f"run_ranks: rank {rank}'s {node.describe()}: {exc}") from None
    if rank not in ranks:
        raise ExecutionError(f"run_ranks: rank {rank} reached {node.describe()} but is not in its group {group}")
    return ranks


def _exchange(ranks: Sequence[_Interpreter], parts: Sequence[tuple[int, Node]]) -> None:
    """Joins the contributions to one exchange, in group order, and hands every member the result."""
    first_rank, first = parts[0]
    signature = (first.op, tuple(_group_of(first)))
    for r, node in parts[1:]:
        if (node.op, tuple(_group_of(node))) != signature:
            raise ExecutionError(
                f"run_ranks: collective instance_id={first.attrs.get('instance_id')} is {first.describe()} with group "
                f"{list(signature[1])} on rank {first_rank} but {node.describe()} with group {_group_of(node)} on rank {r}"
            )
    opdef = get_op(first.op)
    arrays = [ranks[r].guarded(node, lambda r=r, node=node: opdef.contribution(node, ranks[r].inputs_of(node))) for r, node in parts]
    result = ranks[first_rank].guarded(first, lambda: opdef.combine(first, arrays, None))
    for i, (r, node) in enumerate(parts):
        mine = result if i == 0 else result.copy()
        ranks[r].store(node, [mine])
        ranks[r].write_workspace(opdef, node, mine)


def _states(ranks: Sequence[_Interpreter], positions: Sequence[int]) -> str:
    states = []
    for r, interpreter in enumerate(ranks):
        nodes = interpreter.net.nodes
        if positions[r] >= len(nodes):
            states.append(f"rank {r} has finished")
        else:
            node = nodes[positions[r]]
            states.append(f"rank {r} waits at {node.describe()} (instance_id={node.attrs.get('instance_id')}, group {_group_of(node)})")
    return "; ".join(states)


__all__ = ["run", "run_ranks"]
