"""The numpy reference interpreter: feed validation, single-network runs, the IR self-checks, and
lockstep multi-rank runs with hand-built rank networks (tp_embedding + allreduce/allgather)."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference
from graphbuild.ops.registry import create_node
from graphbuild.sharding import hidden_split_sizes, shard_table, vocab_shard_rows


def mlp_network():
    net = gb.Network("mlp")
    with net:
        x = net.add_input("x", "float32", ("batch", 4))
        mask = net.add_input("mask", "bool", ("batch", 1))
        w = gb.constant(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, name="w")
        h = F.relu(x @ w - 0.5, name="hidden")
        net.mark_output(F.where(mask, h, 0.0), "y")
    return net


def test_run_computes_outputs_by_name(rng):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    mask = rng.random((5, 1)) < 0.5
    out = reference.run(mlp_network(), {"x": x, "mask": mask})
    w = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
    expected = np.where(mask, np.maximum(x.astype(np.float64) @ w - 0.5, 0), 0)
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "feeds,problem",
    [
        ({"x": np.ones((2, 4), np.float32)}, r"network 'mlp': missing input\(s\) \['mask'\]"),
        ({"x": np.ones((2, 4), np.float32), "mask": np.ones((2, 1), bool), "z": 1}, r"unknown input\(s\) \['z'\]"),
        ({"x": np.ones((2, 4), np.float16), "mask": np.ones((2, 1), bool)}, r"input 'x' must be float32, got float16"),
        ({"x": np.ones((2, 4, 1), np.float32), "mask": np.ones((2, 1), bool)}, r"input 'x' must have rank 2 \(batch, 4\), got shape \(2, 4, 1\)"),
        ({"x": np.ones((2, 5), np.float32), "mask": np.ones((2, 1), bool)}, r"input 'x' dim 1 must be 4, got 5"),
        ({"x": np.ones((2, 4), np.float32), "mask": np.ones((3, 1), bool)}, r"symbolic dim 'batch' is 2 in input 'x' dim 0 but 3 in input 'mask' dim 0"),
    ],
)
def test_feed_validation_names_the_input(feeds, problem):
    with pytest.raises(gb.InputError, match=problem):
        reference.run(mlp_network(), feeds)


def test_evaluator_failures_name_the_node():
    net = gb.Network("bad")
    with net:
        a = net.add_input("a", "float32", ("n",))
        b = net.add_input("b", "float32", (3,))
        net.mark_output(F.add(a, b, name="sum"), "y")
    assert net.outputs["y"].shape == (3,), "a symbol against an int is assumed to be that int"
    with pytest.raises(gb.ExecutionError, match=r"network 'bad': add 'sum' failed: ValueError: operands could not be broadcast .* \(created at test_reference.py:"):
        reference.run(net, {"a": np.ones(4, np.float32), "b": np.ones(3, np.float32)})


def test_results_are_checked_against_the_inferred_types():
    net = gb.Network("drift")
    with net:
        x = net.add_input("x", "float32", ("n", 2))
        y = F.identity(x, name="copy")
        net.mark_output(y, "y")
    y.value.shape = ("n", 3)  # as if the shape rule were wrong
    with pytest.raises(gb.ExecutionError, match=r"identity 'copy' produced shape \(4, 2\) for 'copy' float32\(n, 3\)"):
        reference.run(net, {"x": np.ones((4, 2), np.float32)})


def test_a_symbol_takes_one_size_per_run():
    net = gb.Network("drift")
    with net:
        x = net.add_input("x", "float32", ("n", 2))
        y = F.identity(x, name="copy")
        z = F.identity(gb.constant(np.ones((5, 2), np.float32)), name="again")
        net.mark_output(y, "y")
        net.mark_output(z, "z")
    y.value.shape = z.value.shape = ("m", 2)  # as if a shape rule had equated the two row counts
    with pytest.raises(gb.ExecutionError, match=r"symbolic dim 'm' is 4 in copy dim 0 but 5 in again dim 0"):
        reference.run(net, {"x": np.ones((4, 2), np.float32)})


def test_multi_rank_collective_needs_run_ranks():
    net = gb.Network("rank0")
    with net:
        x = net.add_input("x", "float32", (2,))
        net.mark_output(F.allreduce(x, group=[0, 1], name="sum"), "y")
    with pytest.raises(gb.GraphBuildError, match=r"allreduce 'sum' spans ranks \[0, 1\]: evaluate it with every rank"):
        reference.run(net, {"x": np.ones(2, np.float32)})


# ------------------------------------------------------------------------------------ run_ranks
def vocab_split_ranks(table, tp_size, *, out_of_range="error", instance_id=7):
    """Rank networks as the partition pass would build them: shard lookup, all-reduce, then a scale."""
    rows = vocab_shard_rows(table.shape[0], tp_size)
    networks = []
    for rank in range(tp_size):
        net = gb.Network(f"rank{rank}")
        with net:
            ids = net.add_input("ids", "int64", ("batch", "seq"))
            shard = gb.constant(shard_table(table, tp_size, rank, 0), name="wte.shard")
            attrs = {"vocab_start": rank * rows, "vocab_size": table.shape[0], "out_of_range": out_of_range, "name": "wte"}
            part = create_node(net, "tp_embedding", [ids.value, shard.value], attrs, name="wte").output.tensor()
            full = F.allreduce(part, group=list(range(tp_size)), instance_id=instance_id, name="wte/allreduce")
            net.mark_output(full * 2.0, "emb")
        networks.append(net)
    return networks


@pytest.mark.parametrize("tp_size", [1, 2, 3])
def test_vocab_split_matches_the_full_lookup(rng, tp_size):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ids = rng.integers(0, 10, size=(2, 5))
    outputs = reference.run_ranks(vocab_split_ranks(table, tp_size), {"ids": ids})
    assert len(outputs) == tp_size
    for out in outputs:
        np.testing.assert_allclose(out["emb"], table[ids] * 2.0, rtol=1e-6)
    if tp_size > 1:
        assert outputs[0]["emb"] is not outputs[1]["emb"], "ranks do not share result buffers"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_hidden_split_with_uneven_columns(rng, dtype):
    table = rng.standard_normal((6, 7)).astype(gb.dtypes.as_dtype(dtype).numpy)
    sizes = hidden_split_sizes(7, 3)
    networks = []
    for rank in range(3):
        net = gb.Network(f"rank{rank}")
        with net:
            ids = net.add_input("ids", "int32", ("n",))
            shard = gb.constant(shard_table(table, 3, rank, 1), name="wte.shard")
            attrs = {"vocab_start": 0, "vocab_size": 6, "out_of_range": "error", "name": "wte"}
            part = create_node(net, "tp_embedding", [ids.value, shard.value], attrs, name="wte").output.tensor()
            net.mark_output(F.allgather(part, group=[0, 1, 2], axis=-1, sizes=sizes, instance_id=3), "emb")
        networks.append(net)
    ids = rng.integers(0, 6, size=8).astype(np.int32)
    per_rank_feeds = [{"ids": ids}] * 3
    for out in reference.run_ranks(networks, per_rank_feeds):
        np.testing.assert_array_equal(out["emb"], table[ids])


def test_groups_naming_ranks_outside_the_list_span_every_network(rng):
    table = rng.standard_normal((8, 3)).astype(np.float32)
    networks = vocab_split_ranks(table, 2)
    for net in networks:
        for node in net.nodes:
            if node.op == "allreduce":
                node.attrs["group"] = (2, 3)
    ids = rng.integers(0, 8, size=(1, 4))
    for out in reference.run_ranks(networks, {"ids": ids}):
        np.testing.assert_allclose(out["emb"], table[ids] * 2.0, rtol=1e-6)


def test_out_of_range_ids_raise_the_embedding_error(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ids = np.array([[1, 2, 13]])
    with pytest.raises(gb.OutOfRangeIdError, match=r"^embedding 'wte': id 13 at flat position 2 is outside the vocabulary \[0, 10\)$"):
        reference.run_ranks(vocab_split_ranks(table, 2), {"ids": ids})


def test_ranks_must_meet_at_the_same_collective(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ranks = vocab_split_ranks(table, 2)
    ranks[1] = vocab_split_ranks(table, 2, instance_id=8)[1]
    ids = np.array([[1, 2]])
    with pytest.raises(gb.ExecutionError) as error:
        reference.run_ranks(ranks, {"ids": ids})
    assert str(error.value) == (
        "collective #0 is allreduce 'wte/allreduce' (instance_id=7) on rank 0 (network 'rank0') but "
        "allreduce 'wte/allreduce' (instance_id=8) on rank 1 (network 'rank1'); every rank must run the same collectives in the same order"
    )


def test_a_rank_that_finishes_early_is_reported(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ranks = vocab_split_ranks(table, 2)
    lonely = gb.Network("rank1")
    with lonely:
        ids = lonely.add_input("ids", "int64", ("batch", "seq"))
        lonely.mark_output(F.identity(ids), "emb")
    with pytest.raises(gb.ExecutionError, match=r"rank 0 \(network 'rank0'\) runs 1 collectives but rank 1 \(network 'rank1'\) runs 0 \(the first unmatched one is allreduce 'wte/allreduce' \(instance_id=7\)"):
        reference.run_ranks([ranks[0], lonely], {"ids": np.array([[1]])})


def test_same_instance_id_with_a_different_op_is_a_mismatch(rng):
    nets = []
    for rank, op in enumerate(("allreduce", "allgather")):
        net = gb.Network(f"rank{rank}")
        with net:
            x = net.add_input("x", "float32", (2,))
            net.mark_output(getattr(F, op)(x, group=[0, 1], instance_id=1, name="sync"), "y")
        nets.append(net)
    with pytest.raises(gb.ExecutionError, match=r"collective #0 is allreduce 'sync' \(instance_id=1\) on rank 0 \(network 'rank0'\) but allgather 'sync' \(instance_id=1\) on rank 1"):
        reference.run_ranks(nets, {"x": np.ones(2, np.float32)})


def test_run_ranks_argument_errors(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ranks = vocab_split_ranks(table, 2)
    with pytest.raises(gb.InputError, match=r"run_ranks: got 3 feed mappings for 2 networks"):
        reference.run_ranks(ranks, [{"ids": np.array([[1]])}] * 3)
    with pytest.raises(gb.InputError, match=r"rank 1 \(network 'rank1'\): missing input\(s\) \['ids'\]"):
        reference.run_ranks(ranks, [{"ids": np.array([[1]])}, {}])
    with pytest.raises(gb.InputError, match="expected at least one network"):
        reference.run_ranks([], {})
    ranks[0].nodes[-2].attrs["group"] = (1, 2, 5)
    with pytest.raises(gb.ExecutionError, match=r"rank 0 \(network 'rank0'\): allreduce 'wte/allreduce' \(instance_id=7\): group \[1, 2, 5\] names ranks outside the 2 ranks given"):
        reference.run_ranks(ranks, {"ids": np.array([[1]])})
    ranks[0].nodes[-2].attrs["group"] = (1,)
    with pytest.raises(gb.ExecutionError, match=r"rank 0 \(network 'rank0'\) runs allreduce 'wte/allreduce' \(instance_id=7\) but is not in its group \[1\]"):
        reference.run_ranks(ranks, {"ids": np.array([[1]])})


# ------------------------------------------------------------------------------------ workspace


def _workspace_network(table, tp_size):
    net = gb.Network("ws")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        workspace = net.add_input("workspace", "float32", ("m",))
        net.mark_output(F.embedding(ids, gb.constant(table, name="wte.weight"), tp_size=tp_size, workspace=workspace, name="wte"), "emb")
    return net


def test_run_writes_the_workspace_as_engines_do(rng):
    table = rng.standard_normal((12, 6)).astype(np.float32)
    ids = np.array([1, 7, 11])
    buffer = np.zeros(64, np.float32)
    out = reference.run(_workspace_network(table, 2), {"ids": ids, "workspace": buffer})["emb"]
    np.testing.assert_array_equal(out, table[ids])
    np.testing.assert_array_equal(buffer[:18].reshape(3, 6), table[ids])
    assert not buffer[18:].any()
    small = np.zeros(4, np.float32)
    reference.run(_workspace_network(table, 2), {"ids": ids, "workspace": small})
    assert not small.any(), "a workspace too small is left alone"
    untouched = np.zeros(64, np.float32)
    reference.run(_workspace_network(table, 1), {"ids": ids, "workspace": untouched})
    assert not untouched.any(), "no collective at tp_size 1, as in an engine"


def test_run_ranks_writes_each_ranks_workspace(rng):
    from graphbuild.passes import partition

    table = rng.standard_normal((12, 6)).astype(np.float32)
    ids = np.array([4, 0])
    buffers = [np.zeros(12, np.float32), np.zeros(12, np.float32)]
    reference.run_ranks(partition(_workspace_network(table, 2)), [{"ids": ids, "workspace": b} for b in buffers])
    for buffer in buffers:
        np.testing.assert_array_equal(buffer.reshape(2, 6), table[ids])
