"""Segmentation at collectives: stages, step order, segment inputs/outputs/constants, schedules."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.errors import PartitionError
from graphbuild.passes import CollectiveStep, Segment, check_same_schedule, partition, partition_ranks, segment
from graphbuild.sharding import shard_table


def describe(steps) -> list[tuple]:
    """Steps as plain tuples: ("segment", index, stage, nodes, inputs, outputs, constants) or ("collective", name, stage)."""
    out = []
    for step in steps:
        if isinstance(step, Segment):
            out.append(
                (
                    "segment",
                    step.index,
                    step.stage,
                    [n.name for n in step.nodes],
                    [v.name for v in step.inputs],
                    [v.name for v in step.outputs],
                    [v.name for v in step.constants],
                )
            )
        else:
            assert isinstance(step, CollectiveStep)
            out.append(("collective", step.node.name, step.stage))
    return out


def two_embeddings(rng, sharding_dim: int = 0) -> gb.Network:
    """Two parallel lookups with pre- and post-processing, tp_size=2."""
    net = gb.Network("seg")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        pos = net.add_input("pos", "int64", ("n",))
        wte = gb.constant(rng.standard_normal((10, 4)).astype(np.float32), name="wte.weight")
        wpe = gb.constant(rng.standard_normal((6, 4)).astype(np.float32), name="wpe.weight")
        scale = gb.constant(np.full(4, 0.5, np.float32), name="scale")
        shifted = F.add(pos, gb.constant(np.int64(1), name="one"), name="shifted")
        tok = F.embedding(ids, wte, tp_size=2, sharding_dim=sharding_dim, name="wte")
        position = F.embedding(shifted, wpe, tp_size=2, sharding_dim=sharding_dim, name="wpe")
        hidden = F.add(tok, position, name="hidden")
        net.mark_output(F.mul(hidden, scale, name="scaled"), "out")
        net.mark_output(shifted, "shifted")
    return net


def test_two_stages_around_parallel_collectives(rng):
    ranks = partition(two_embeddings(rng))
    steps = segment(ranks[0])
    assert describe(steps) == [
        (
            "segment", 0, 0,
            ["shifted", "wte/lookup", "wpe/lookup"],
            ["pos", "ids"],
            ["shifted", "wte/lookup", "wpe/lookup"],
            ["one", "wte.weight", "wpe.weight"],
        ),
        ("collective", "wte/allreduce", 0),
        ("collective", "wpe/allreduce", 0),
        ("segment", 1, 1, ["hidden", "scaled"], ["wte", "wpe"], ["scaled"], ["scale"]),
    ]
    assert describe(segment(ranks[1])) == describe(steps), "ranks share one schedule"
    check_same_schedule([segment(r) for r in ranks])


def test_hidden_split_schedule(rng):
    ranks = partition(two_embeddings(rng, sharding_dim=1))
    kinds = [(type(s).__name__, getattr(s, "node", None) and s.node.op) for s in segment(ranks[1])]
    assert kinds == [("Segment", None), ("CollectiveStep", "allgather"), ("CollectiveStep", "allgather"), ("Segment", None)]


def test_tp_size_one_is_one_segment(rng):
    net = gb.Network("one")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        emb = F.embedding(ids, gb.constant(rng.standard_normal((5, 3)).astype(np.float32), name="t"), name="wte")
        net.mark_output(F.relu(emb, name="act"), "act")
        net.mark_output(emb, "emb")
    (rank,) = partition(net)
    assert describe(segment(rank)) == [("segment", 0, 0, ["wte/lookup", "act"], ["ids"], ["wte", "act"], ["t"])]


def test_chained_collectives_and_empty_segments(rng):
    """A collective straight on a graph input starts the schedule; one feeding another gets the next stage."""
    table = rng.standard_normal((8, 4)).astype(np.float32)
    nets = []
    for r in range(2):
        net = gb.Network(f"chain{r}")
        with net:
            ids = net.add_input("ids", "int64", ("n",))
            x = net.add_input("x", "float32", ("n", 4))
            summed = F.allreduce(x, [0, 1], name="sum_x")
            gathered = F.allgather(summed, [0, 1], axis=-1, name="gather_x")
            emb = F.embedding(ids, gb.constant(shard_table(table, 2, r, 0), name="wte.weight"), tp_size=2, tp_rank=r, vocab_size=8, name="wte")
            net.mark_output(gathered, "gathered")
            net.mark_output(F.add(emb, summed, name="total"), "total")
        nets.append(net)
    ranks = partition_ranks(nets)
    steps = segment(ranks[0])
    assert describe(steps) == [
        ("segment", 0, 0, ["wte/lookup"], ["ids"], ["wte/lookup"], ["wte.weight"]),
        ("collective", "sum_x", 0),
        ("collective", "wte/allreduce", 0),
        ("segment", 1, 1, ["total"], ["wte", "sum_x"], ["total"], []),
        ("collective", "gather_x", 1),
    ]
    assert steps[4].node.output.shape == ("n", 8) and steps[4].node.attrs["tp_position"] == 0


def test_a_schedule_may_start_with_a_collective():
    net = gb.Network("c")
    with net:
        x = net.add_input("x", "float32", (2,))
        net.mark_output(F.relu(F.allreduce(x, [0, 1], name="s"), name="r"), "r")
    net.meta["tp_position"] = 0
    (rank,) = partition(net)
    assert describe(segment(rank)) == [("collective", "s", 0), ("segment", 0, 1, ["r"], ["s"], ["r"], [])]


def test_schedules_must_match_across_ranks(rng):
    ranks = partition(two_embeddings(rng))
    first, second = segment(ranks[0]), segment(ranks[1])
    second[1], second[2] = second[2], second[1]
    with pytest.raises(
        PartitionError,
        match=r"collective #0 is allreduce 'wte/allreduce' \(instance_id=0\) on rank 0 but allreduce 'wpe/allreduce' \(instance_id=1\) on rank 1",
    ):
        check_same_schedule([first, second])
    with pytest.raises(PartitionError, match=r"rank 0 runs 2 collectives but rank 1 runs 1"):
        check_same_schedule([first, segment(ranks[1])[:2]])
    check_same_schedule([])


def test_unpartitioned_networks_are_refused(rng):
    with pytest.raises(PartitionError, match=r"embedding 'wte': segment\(\) takes rank networks; run graphbuild.passes.partition first"):
        segment(two_embeddings(rng))
