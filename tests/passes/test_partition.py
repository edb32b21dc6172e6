"""Tensor-parallel partition: structure, names, numerics against numpy, rank-local checks, errors."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference
from graphbuild.errors import PartitionError
from graphbuild.ops import get_op
from graphbuild.passes import DeadCodeEliminationPass, infer_tp_size, partition, partition_ranks, rank_order, verify_network
from graphbuild.sharding import hidden_split_sizes, shard_table


def logical(table: np.ndarray, tp_size: int, sharding_dim: int = 0, *, tied_head: bool = False, name: str = "m", **kwargs) -> gb.Network:
    """ids → embedding 'wte' → + bias → (optionally) a tied LM head reading the full table."""
    vocab, dim = table.shape
    net = gb.Network(name)
    with net:
        ids = net.add_input("ids", "int64", ("b", "s"))
        weight = gb.constant(table, name="wte.weight")
        bias = gb.constant(np.linspace(-1, 1, dim, dtype=np.float32).astype(table.dtype), name="bias")
        emb = F.embedding(ids, weight, tp_size=tp_size, sharding_dim=sharding_dim, name="wte", **kwargs)
        hidden = F.add(emb, bias, name="hidden")
        net.mark_output(emb, "emb")
        net.mark_output(hidden, "hidden")
        if tied_head:
            net.mark_output(F.matmul(hidden, F.transpose(weight, name="wte.T"), name="lm_head"), "logits")
    return net


def rank_local(table: np.ndarray, tp_size: int, tp_rank: int, sharding_dim: int = 0, *, extra_allreduce: bool = False) -> gb.Network:
    vocab, dim = table.shape
    net = gb.Network(f"local{tp_rank}")
    with net:
        ids = net.add_input("ids", "int64", ("b", "s"))
        shard = gb.constant(shard_table(table, tp_size, tp_rank, sharding_dim), name="wte.weight")
        emb = F.embedding(ids, shard, tp_size=tp_size, sharding_dim=sharding_dim, tp_rank=tp_rank, vocab_size=vocab, embedding_dim=dim, name="wte")
        net.mark_output(emb, "emb")
        if extra_allreduce:
            net.mark_output(F.allreduce(F.relu(emb, name="act"), list(range(tp_size)), name="act_sum"), "act_sum")
    return net


def structure(net: gb.Network) -> list[tuple[str, str]]:
    return [(n.op, n.name) for n in net.nodes]


# ------------------------------------------------------------------------------------ tp size


def test_infer_tp_size(rng):
    table = rng.standard_normal((6, 4)).astype(np.float32)
    assert infer_tp_size(gb.Network("empty")) == 1
    assert infer_tp_size(logical(table, 3)) == 3
    assert infer_tp_size(rank_local(table, 2, 1)) == 2
    net = logical(table, 2)
    with net:
        F.embedding(net.inputs["ids"].tensor(), net.constants["wte.weight"].tensor(), tp_size=3, name="wpe")
    with pytest.raises(PartitionError, match=r"network 'm': embedding 'wte' has tp_size=2 but embedding 'wpe' has tp_size=3; every tensor-parallel op of a network must use one tp_size"):
        infer_tp_size(net)


# ---------------------------------------------------------------------------- logical structure


def test_vocab_split_structure_names_and_sharing(rng):
    table = rng.standard_normal((9, 4)).astype(np.float32)
    net = logical(table, 2)
    before = str(net)
    ranks = partition(net)
    assert str(net) == before, "the source network is not modified"
    assert [r.name for r in ranks] == ["m.rank0", "m.rank1"]
    for r, rank in enumerate(ranks):
        verify_network(rank)
        assert rank.meta == {"tp_position": r, "tp_size": 2, "tp_group": (0, 1), "source": "m"}
        assert structure(rank) == [("tp_embedding", "wte/lookup"), ("allreduce", "wte/allreduce"), ("add", "hidden")]
        lookup, allreduce, _ = rank.nodes
        assert lookup.attrs == {"name": "wte", "vocab_start": 5 * r, "vocab_size": 9, "out_of_range": "error", "tp_position": r, "tp_size": 2}
        assert allreduce.attrs == {"group": (0, 1), "instance_id": 0, "tp_position": r, "reduce": "sum"}
        assert allreduce.output.name == "wte", "the embedding's value keeps its name"
        assert rank.outputs["emb"] is allreduce.output and rank.outputs["hidden"].name == "hidden"
        assert rank.constants["bias"].const is net.constants["bias"].const, "replicated constants are shared"
        assert set(rank.constants) == {"wte.weight", "bias"}
        assert rank.constants["wte.weight"].shape == (5, 4)
    np.testing.assert_array_equal(ranks[0].constants["wte.weight"].const, table[:5])
    assert np.shares_memory(ranks[0].constants["wte.weight"].const, table), "an unpadded shard is a view"
    np.testing.assert_array_equal(ranks[1].constants["wte.weight"].const, np.concatenate([table[5:], np.zeros((1, 4), np.float32)]))


def test_hidden_split_structure(rng):
    table = rng.standard_normal((6, 7)).astype(np.float32)
    ranks = partition(logical(table, 3, sharding_dim=1))
    for r, rank in enumerate(ranks):
        assert structure(rank) == [("tp_embedding", "wte/lookup"), ("allgather", "wte/allgather"), ("add", "hidden")]
        lookup, gather, _ = rank.nodes
        assert lookup.attrs["vocab_start"] == 0 and lookup.output.shape == ("b", "s", hidden_split_sizes(7, 3)[r])
        assert gather.attrs == {"group": (0, 1, 2), "instance_id": 0, "tp_position": r, "axis": -1, "sizes": (3, 2, 2)}
        assert gather.output.name == "wte" and gather.output.shape == ("b", "s", 7)
    even = partition(logical(rng.standard_normal((6, 8)).astype(np.float32), 2, sharding_dim=1))
    assert even[0].nodes[1].attrs["sizes"] is None


def test_tp_size_one_is_a_lookup_of_the_full_table(rng):
    table = rng.standard_normal((5, 3)).astype(np.float32)
    net = logical(table, 1)
    (rank,) = partition(net)
    assert structure(rank) == [("tp_embedding", "wte/lookup"), ("add", "hidden")]
    assert rank.nodes[0].attrs["vocab_start"] == 0 and rank.nodes[0].output.name == "wte"
    assert rank.constants["wte.weight"].const is table, "no copy, no slice"
    assert rank.meta == {"tp_position": 0, "tp_size": 1, "tp_group": (0,), "source": "m"}


def test_tied_head_keeps_the_full_table(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    ranks = partition(logical(table, 2, tied_head=True))
    for r, rank in enumerate(ranks):
        assert rank.constants["wte.weight"].const is table
        assert rank.nodes[0].inputs[1] is rank.constants["wte.weight.vocab_shard"]
        np.testing.assert_array_equal(rank.constants["wte.weight.vocab_shard"].const, table[5 * r : 5 * r + 5])
        assert rank.find_node("wte.T").inputs[0] is rank.constants["wte.weight"]


def test_workspace_is_forwarded_to_the_collective(rng):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    net = gb.Network("ws")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        workspace = net.add_input("workspace", "float32", (64,))
        net.mark_output(F.embedding(ids, gb.constant(table), tp_size=2, workspace=workspace, name="wte"), "emb")
    for rank in partition(net):
        assert [v.name for v in rank.find_node("wte/allreduce").inputs] == ["wte/lookup", "workspace"]


def test_custom_tp_group(rng):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    ranks = partition(logical(table, 2, tp_group=[2, 3]))
    assert [r.meta["tp_group"] for r in ranks] == [(2, 3), (2, 3)]
    assert [r.nodes[1].attrs["tp_position"] for r in ranks] == [0, 1]
    ids = rng.integers(0, 8, size=(2, 3))
    for outputs in reference.run_ranks(ranks, {"ids": ids}):
        np.testing.assert_array_equal(outputs["emb"], table[ids])


def test_names_match_across_ranks(rng):
    table = rng.standard_normal((11, 5)).astype(np.float32)
    ranks = partition(logical(table, 4, tied_head=True))
    names = {tuple(n.name for n in r.nodes) for r in ranks}
    values = {tuple(v.name for v in r.values()) for r in ranks}
    assert len(names) == 1 and len(values) == 1


# ----------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
@pytest.mark.parametrize("sharding_dim", [0, 1])
@pytest.mark.parametrize("vocab,dim", [(11, 7), (12, 8)])
def test_logical_partition_matches_numpy(rng, tp_size, sharding_dim, vocab, dim):
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    net = logical(table, tp_size, sharding_dim, tied_head=True)
    ranks = partition(net)
    assert len(ranks) == tp_size
    ids = rng.integers(0, vocab, size=(3, 5))
    expected = reference.run(net, {"ids": ids})
    np.testing.assert_array_equal(expected["emb"], table[ids])
    np.testing.assert_allclose(expected["logits"], (table[ids] + net.constants["bias"].const) @ table.T, rtol=1e-5, atol=1e-5)
    for outputs in reference.run_ranks(ranks, {"ids": ids}):
        assert set(outputs) == {"emb", "hidden", "logits"}
        for name, value in expected.items():
            np.testing.assert_array_equal(outputs[name], value, err_msg=name)


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_rank_local_networks_match_numpy(rng, tp_size, sharding_dim):
    table = rng.standard_normal((11, 7)).astype(np.float32)
    nets = [rank_local(table, tp_size, r, sharding_dim, extra_allreduce=True) for r in range(tp_size)]
    ranks = partition_ranks(nets[::-1])
    assert [r.meta["tp_position"] for r in ranks] == list(range(tp_size))
    assert [r.name for r in ranks] == [f"local{r}" for r in range(tp_size)]
    ids = rng.integers(0, 11, size=(2, 4))
    for outputs in reference.run_ranks(ranks, {"ids": ids}):
        np.testing.assert_array_equal(outputs["emb"], table[ids])
        np.testing.assert_allclose(outputs["act_sum"], tp_size * np.maximum(table[ids], 0), rtol=1e-6)


def test_embeddings_sharing_a_table_over_different_vocab_sizes(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    for sharding_dim in (0, 1):
        net = gb.Network("shared")
        with net:
            ids = net.add_input("ids", "int64", ("n",))
            weight = gb.constant(table, name="wte.weight")
            small = F.embedding(ids, weight, tp_size=2, sharding_dim=sharding_dim, vocab_size=6, out_of_range="zero", name="small")
            full = F.embedding(ids, weight, tp_size=2, sharding_dim=sharding_dim, name="full")
            net.mark_output(small, "small")
            net.mark_output(full, "full")
        ids = rng.permutation(10)
        expected_small = np.where((ids < 6)[:, None], table[ids], 0)
        for outputs in reference.run_ranks(partition(net), {"ids": ids}):
            np.testing.assert_array_equal(outputs["full"], table[ids])
            np.testing.assert_array_equal(outputs["small"], expected_small)


def test_out_of_range_ids_keep_the_embedding_name(rng):
    table = rng.standard_normal((9, 4)).astype(np.float32)
    ranks = partition(logical(table, 2))
    with pytest.raises(gb.OutOfRangeIdError, match=r"embedding 'wte': id 9 at flat position 1 is outside the vocabulary \[0, 9\)"):
        reference.run_ranks(ranks, {"ids": np.array([[0, 9]])})


# --------------------------------------------------------------------------------- rank-local


def test_rank_local_partition_returns_one_network(rng):
    table = rng.standard_normal((11, 7)).astype(np.float32)
    (rank,) = partition(rank_local(table, 3, 2, extra_allreduce=True))
    assert rank.name == "local2"
    assert rank.meta == {"tp_position": 2, "tp_size": 3, "tp_group": (0, 1, 2), "source": "local2"}
    assert structure(rank) == [("tp_embedding", "wte/lookup"), ("allreduce", "wte/allreduce"), ("relu", "act"), ("allreduce", "act_sum")]
    assert rank.nodes[0].attrs["vocab_start"] == 8
    assert rank.find_node("act_sum").attrs["tp_position"] == 2, "user collectives get their position"
    again = partition(rank)
    assert structure(again[0]) == structure(rank) and again[0].meta == rank.meta


def test_rank_local_group_positions(rng):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    net = gb.Network("g")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        shard = gb.constant(shard_table(table, 2, 1, 0))
        net.mark_output(F.embedding(ids, shard, tp_size=2, tp_group=[4, 6], tp_rank=6, vocab_size=8, name="wte"), "emb")
    (rank,) = partition(net)
    assert rank.meta["tp_position"] == 1 and rank.meta["tp_group"] == (4, 6)
    assert rank.nodes[0].attrs["tp_position"] == 1 and rank.nodes[0].attrs["vocab_start"] == 4


def test_rank_local_feeds_follow_their_networks_into_group_order(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    group = [1, 0]  # position 0 is tp_rank 1

    def local(tp_rank: int) -> gb.Network:
        net = gb.Network(f"local{tp_rank}")
        with net:
            ids = net.add_input("ids", "int64", ("n",))
            offset = net.add_input("offset", "float32", (4,))
            shard = gb.constant(shard_table(table, 2, group.index(tp_rank), 0), name="wte.weight")
            emb = F.embedding(ids, shard, tp_size=2, tp_group=group, tp_rank=tp_rank, vocab_size=10, name="wte")
            net.mark_output(F.add(emb, offset, name="out"), "out")
        return net

    nets = [local(0), local(1)]
    assert rank_order(nets) == [1, 0]
    ids = rng.integers(0, 10, size=5)
    offsets = [rng.standard_normal(4).astype(np.float32) for _ in nets]
    outputs = reference.run_ranks(nets, [{"ids": ids, "offset": offset} for offset in offsets])
    for position, out in enumerate(outputs):  # rank order: network group[position] with its own feeds
        np.testing.assert_allclose(out["out"], table[ids] + offsets[group[position]], rtol=1e-6)


def test_rank_local_shard_of_the_wrong_shape(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    net = rank_local(table, 2, 0)
    node = net.find_node("wte")
    with net:
        node.replace_input(1, gb.constant(np.zeros((4, 4), np.float32), name="wrong").value)
    with pytest.raises(
        PartitionError,
        match=r"embedding 'wte': rank-local table 'wrong' has shape \(4, 4\), expected \(5, 4\) for rank 0 of a vocab split of vocab_size=10 over tp_size=2",
    ):
        partition(net)
    hidden = rank_local(table, 3, 2, sharding_dim=1)
    with hidden:
        hidden.find_node("wte").replace_input(1, gb.constant(np.zeros((10, 2), np.float32), name="wrong").value)
    with pytest.raises(PartitionError, match=r"expected \(10, 1\) for rank 2 of a hidden split of embedding_dim=4 over tp_size=3"):
        partition(hidden)


def test_rank_local_embeddings_must_agree_on_the_rank(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    net = rank_local(table, 2, 0)
    with net:
        shard = gb.constant(shard_table(table, 2, 1, 0), name="other")
        F.embedding(net.inputs["ids"].tensor(), shard, tp_size=2, tp_rank=1, vocab_size=10, name="wpe")
    with pytest.raises(PartitionError, match=r"embedding 'wte' is rank 0 \(position 0 in tp_group \[0, 1\]\) but embedding 'wpe' is rank 1.*must agree on the rank"):
        partition(net)


def test_one_network_uses_one_mode(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    net = rank_local(table, 2, 0)
    with net:
        F.embedding(net.inputs["ids"].tensor(), gb.constant(table, name="full"), tp_size=2, name="wpe")
    with pytest.raises(PartitionError, match=r"embedding 'wpe' is logical \(tp_rank=None\) but network 'local0' is rank-local"):
        partition(net)


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_a_runtime_table_is_sliced_at_run_time(rng, sharding_dim):
    net = gb.Network("w")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        weight = net.add_input("weight", "float32", (7, 5))
        net.mark_output(F.embedding(ids, weight, tp_size=3, sharding_dim=sharding_dim, name="wte"), "emb")
    ranks = partition(net)
    table = rng.standard_normal((7, 5)).astype(np.float32)
    expected = [shard_table(table, 3, p, sharding_dim) for p in range(3)]
    for p, rank in enumerate(ranks):
        shard = rank.find_node("wte/shard")
        assert shard.op == "slice" and shard.inputs[0] is rank.inputs["weight"]
        (got,) = get_op("slice").evaluate(shard, [table])
        rows = expected[p].shape[0] if sharding_dim == 1 else min(3, 7 - 3 * p)
        np.testing.assert_array_equal(got, expected[p][:rows])
    ids = np.array([0, 6, 3, 4, 2])
    for out in reference.run_ranks(ranks, {"ids": ids, "weight": table}):
        np.testing.assert_array_equal(out["emb"], table[ids])



def test_explicit_collectives_are_refused_in_logical_networks(rng):
    net = logical(rng.standard_normal((8, 4)).astype(np.float32), 2)
    with net:
        F.allreduce(net.outputs["hidden"].tensor(), [0, 1], name="extra")
    with pytest.raises(PartitionError, match=r"allreduce 'extra': explicit collectives belong in rank-local networks, but network 'm' is logical"):
        partition(net)


def test_asked_tp_size_must_match(rng):
    with pytest.raises(PartitionError, match=r"network 'm' has tp_size=2 \(from its embeddings and collectives\), but tp_size=4 was asked for"):
        partition(logical(rng.standard_normal((8, 4)).astype(np.float32), 2), tp_size=4)


def test_partition_ranks_checks_coverage_and_agreement(rng):
    table = rng.standard_normal((12, 4)).astype(np.float32)
    with pytest.raises(PartitionError, match=r"cover ranks \[0, 2\] of tp_group \[0, 1, 2\]; missing rank \[1\]"):
        partition_ranks([rank_local(table, 3, 0), rank_local(table, 3, 2)])
    with pytest.raises(PartitionError, match=r"networks 'local1' and 'local1' are both rank 1"):
        partition_ranks([rank_local(table, 2, 1), rank_local(table, 2, 1)])
    with pytest.raises(PartitionError, match=r"network 'local0' has tp_size=2, tp_group \[0, 1\] but network 'local1' has tp_size=3"):
        partition_ranks([rank_local(table, 2, 0), rank_local(table, 3, 1)])
    with pytest.raises(PartitionError, match=r"network 'm' is logical \(no embedding carries tp_rank\); pass it alone to partition\(\)"):
        partition_ranks([logical(table, 2)])
    with pytest.raises(PartitionError, match="expected one rank-local network per rank, got none"):
        partition_ranks([])


def test_partition_ranks_compares_collectives(rng):
    table = rng.standard_normal((12, 4)).astype(np.float32)
    with pytest.raises(
        PartitionError,
        match=r"rank 0 \(network 'local0'\) runs 1 collectives but rank 1 \(network 'local1'\) runs 2 \(the first unmatched one is allreduce 'act_sum' \(instance_id=1\) on rank 1",
    ):
        partition_ranks([rank_local(table, 2, 0), rank_local(table, 2, 1, extra_allreduce=True)])
    other = rank_local(table, 2, 1)
    other.find_node("wte").attrs["instance_id"] = 7
    with pytest.raises(
        PartitionError,
        match=r"collective #0 is allreduce 'wte/allreduce' \(instance_id=0\) on rank 0 \(network 'local0'\) but allreduce 'wte/allreduce' \(instance_id=7\) on rank 1",
    ):
        partition_ranks([rank_local(table, 2, 0), other])


# ------------------------------------------------------------------------------------ scaling


def _chain(length: int) -> gb.Network:
    net = gb.Network("chain")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        table = gb.constant(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), name="wte.weight")
        x = F.embedding(ids, table, tp_size=2, name="wte")
        for _ in range(length):
            x = F.add(x, 1.0)
            F.mul(x, 2.0)  # dead
        net.mark_output(x, "out")
    return net


def test_dce_and_partition_of_a_chain_are_linear(doubling_ratio):
    net = _chain(4000)
    assert len(net.nodes) == 8001
    DeadCodeEliminationPass()(net)
    ranks = partition(net)
    assert [len(r.nodes) for r in ranks] == [4002, 4002]
    out = reference.run_ranks(ranks, {"ids": np.array([3, 12])})
    np.testing.assert_allclose(out[1]["out"], net.constants["wte.weight"].const[[3, 12]] + 4000, rtol=1e-4)

    def step_for(n: int):
        chain = _chain(n)
        return lambda: partition(DeadCodeEliminationPass()(chain).network)

    ratio = doubling_ratio(step_for, 500)
    assert ratio < 2.2, f"twice the nodes cost {ratio:.2f} times the calls"
