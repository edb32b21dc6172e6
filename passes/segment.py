"""Segmentation: cuts one rank's network at its collectives into an ordered list of steps.

Stages. Graph inputs and constants are available at stage 0. A value computed by an ordinary node
is available at that node's stage; a value computed by a collective at the collective's stage + 1.
An ordinary node's stage is the largest stage of its inputs (0 without inputs); a collective's stage
is the largest stage of its inputs too, and it runs after the segment of that stage.

Steps: segment 0, the collectives of stage 0 (in node order), segment 1, the collectives of stage
1, ... Empty segments are left out; segments are numbered consecutively in step order (``index``),
and also carry their ``stage``.

Determinism: the schedule depends only on the network's structure and node order, so ranks whose
networks have the same structure (every network ``partition`` produces from one logical network)
run the same collectives in the same order. ``check_same_schedule`` checks that for rank-local
networks written by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from graphbuild.errors import PartitionError
from graphbuild.ir import Network, Node, Value
from graphbuild.ops.registry import OpDef, get_op
from graphbuild.schedule_check import CollectiveCall, check_schedules
from graphbuild.tp_layout import collective_call


@dataclasses.dataclass
class Segment:
    """A run of ordinary nodes that becomes one ONNX model.

    Attributes:
        index: position among the segments of the rank (0, 1, 2, ...).
        nodes: the nodes, in network order.
        inputs: values the nodes read that are graph inputs or computed outside the segment
            (constants excluded), in order of first use.
        outputs: values the nodes compute that later steps read or that are graph outputs, in
            order of computation.
        constants: constants the nodes read (the exporter embeds them as initializers).
        stage: the stage the segment runs at.
    """

    index: int
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    constants: list[Value] = dataclasses.field(default_factory=list)
    stage: int = 0


@dataclasses.dataclass
class CollectiveStep:
    """A collective run between segments.

    Attributes:
        node: the collective node (``allreduce``, ``allgather``).
        stage: the stage after whose segment it runs.
    """

    node: Node
    stage: int = 0


Step = Union[Segment, CollectiveStep]


def _stages(net: Network) -> tuple[list[int], list[bool]]:
    """Each node's stage and whether it is a collective, in node order."""
    value_stage: dict[int, int] = {}
    stages: list[int] = []
    is_collective: list[bool] = []
    opdefs: dict[str, OpDef] = {}
    for node in net.nodes:
        opdef = opdefs.get(node.op) or opdefs.setdefault(node.op, get_op(node.op))
        if opdef.logical:
            raise PartitionError(f"{node.describe()}: segment() takes rank networks; run graphbuild.passes.partition first{node.where()}")
        collective = opdef.collective
        stage = max((value_stage.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        available = stage + 1 if collective else stage
        for value in node.outputs:
            value_stage[id(value)] = available
        stages.append(stage)
        is_collective.append(collective)
    return stages, is_collective


def segment(net: Network) -> list[Step]:
    """The ordered steps of one rank's network (see the module docstring).

    Args:
        net: a rank network, as ``partition`` returns (no ``embedding`` nodes left).

    Returns:
        Segments and collective steps in the order every rank runs them.

    Raises:
        PartitionError: the network still holds a logical op such as ``embedding`` (partition it
            first).
    """
    stages, is_collective = _stages(net)
    last = max(stages, default=0)
    members: list[list[Node]] = [[] for _ in range(last + 1)]
    collective_steps: list[list[Node]] = [[] for _ in range(last + 1)]
    segment_of: dict[int, int] = {}  # id(node) -> stage, for ordinary nodes
    for node, stage, collective in zip(net.nodes, stages, is_collective):
        if collective:
            collective_steps[stage].append(node)
        else:
            members[stage].append(node)
            segment_of[id(node)] = stage
    graph_outputs = {id(v) for v in net.outputs.values()}
    steps: list[Step] = []
    index = 0
    for stage in range(last + 1):
        if members[stage]:
            steps.append(_make_segment(index, stage, members[stage], segment_of, graph_outputs))
            index += 1
        steps.extend(CollectiveStep(node, stage) for node in collective_steps[stage])
    return steps


def _make_segment(index: int, stage: int, nodes: list[Node], segment_of: dict[int, int], graph_outputs: set[int]) -> Segment:
    inputs: dict[int, Value] = {}
    constants: dict[int, Value] = {}
    outputs: list[Value] = []
    for node in nodes:
        for value in node.inputs:
            if value is None:
                continue
            if value.is_constant:
                constants.setdefault(id(value), value)
            elif value.producer is None or segment_of.get(id(value.producer)) != stage:
                inputs.setdefault(id(value), value)
    for node in nodes:
        for value in node.outputs:
            if id(value) in graph_outputs or any(segment_of.get(id(user)) != stage for user, _ in value.uses):
                outputs.append(value)
    return Segment(index, nodes, list(inputs.values()), outputs, list(constants.values()), stage)


def check_same_schedule(per_rank_steps: Sequence[Sequence[Step]]) -> None:
    """Checks that every rank runs the same collectives in the same order.

    Args:
        per_rank_steps: ``segment(net)`` of each rank, in rank order.

    Raises:
        PartitionError: naming the first collective where a rank differs from rank 0.
    """
    if not per_rank_steps:
        return
    calls: list[list[CollectiveCall]] = [[collective_call(step.node) for step in steps if isinstance(step, CollectiveStep)] for steps in per_rank_steps]
    check_schedules(calls, [f"rank {r}" for r in range(len(calls))], PartitionError)


__all__ = ["CollectiveStep", "Segment", "Step", "check_same_schedule", "segment"]
