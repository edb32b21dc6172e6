"""The compiler's work grows linearly with the network (structure only; timings live in benchmarks/)."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.build import compile_engine
from graphbuild.passes import DeadCodeEliminationPass, PassManager, default_pipeline


def stack(blocks: int, rng: np.random.Generator, tp_size: int = 4) -> gb.Network:
    net = gb.Network(f"stack{blocks}")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        x = net.add_input("x", "float32", ("n", 8))
        for b in range(blocks):
            ids_b = F.where(F.less(x[:, 0], 0.0), ids, ids)
            table = gb.constant(rng.standard_normal((16, 8)).astype(np.float32))
            h = x + F.embedding(ids_b, table, tp_size=tp_size, sharding_dim=b % 2)
            h = F.matmul(F.rms_norm(h, gb.constant(np.ones(8, np.float32))), gb.constant(rng.standard_normal((8, 8)).astype(np.float32)))
            F.relu(h)  # dead
            x = F.gelu(h) + (gb.constant(np.ones(8, np.float32)) * 2.0)  # a foldable constant product
        net.mark_output(x, "y")
    return net


def _shape_of(compiled) -> dict[str, int]:
    ranks = compiled.manifest.ranks
    return {
        "rank_nodes": sum(sum(rank.ops.values()) for rank in ranks),
        "segments": sum(len(rank.segments) for rank in ranks),
        "collectives": sum(len(rank.collectives) for rank in ranks),
        "onnx_nodes": sum(step.onnx_nodes for rank in ranks for step in rank.segments),
    }


def test_twice_the_blocks_is_twice_the_work(rng):
    counts = {}
    for blocks in (4, 8, 16):
        timings: dict[str, float] = {}
        counts[blocks] = _shape_of(compile_engine(stack(blocks, rng), timings=timings))
        assert {"verify", "infer_shapes", "fold_constants", "eliminate_dead_code", "partition", "rank_dce", "segment", "lower_onnx"} <= set(timings)
    for key in counts[4]:
        # affine in the block count: each block adds the same amount, from 4 to 8 blocks and from 8 to 16
        assert (counts[16][key] - counts[8][key]) / 8 == (counts[8][key] - counts[4][key]) / 4, key
        assert counts[8][key] > counts[4][key], key
    assert counts[8]["segments"] == 4 * 9 and counts[8]["collectives"] == 4 * 8


def test_pass_manager_reports_seconds_per_pass(rng):
    manager = default_pipeline()
    manager.run(stack(2, rng))
    assert set(manager.seconds) == {"verify", "infer_shapes", "fold_constants", "eliminate_dead_code"}
    outer = PassManager([manager, DeadCodeEliminationPass()])
    outer.run(stack(2, rng))
    assert set(outer.seconds) == {"verify", "infer_shapes", "fold_constants", "eliminate_dead_code"}, "a nested manager reports its passes"


def test_fresh_instance_ids_stay_unique_while_nodes_come_and_go(rng):
    net = gb.Network("ids")
    with net:
        x = net.add_input("x", "float32", ("n",))
        first = F.allreduce(x, [0, 1])
        explicit = F.allreduce(first, [0, 1], instance_id=5)
        taken = [first.value.producer.attrs["instance_id"], explicit.value.producer.attrs["instance_id"]]
        net.mark_output(explicit, "y")
        for _ in range(6):
            taken.append(net.new_instance_id())
        dead = F.allreduce(x, [0, 1])
        taken.append(dead.value.producer.attrs["instance_id"])
        net.remove_nodes([dead.value.producer])
        net.nodes.insert(0, net.nodes.pop())  # reordered: the cache must notice
        taken.append(net.new_instance_id())
    assert len(taken) == len(set(taken)) and 5 in taken


def test_the_work_count_tells_linear_from_quadratic(doubling_ratio):
    def linear(n):
        items = list(range(n))
        return lambda: [i for i in items]

    def quadratic(n):
        items = list(range(n))
        return lambda: [[j for j in items if j is i] for i in items]

    assert doubling_ratio(linear, 200) < 2.2
    assert doubling_ratio(quadratic, 200) > 3.5
