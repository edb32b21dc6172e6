"""Split and replicated embeddings in one tensor-parallel network, bitwise equal to numpy.

Every network runs four ways: ``gb.build`` with the plugin and without it (standard ONNX ops),
``reference.run`` on the logical network, and ``reference.run_ranks`` on the partitioned ranks;
every rank's output is compared with a numpy computation written here.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference
from graphbuild.passes import partition
from graphbuild.sharding import shard_table

VOCAB, POSITIONS, HIDDEN = 11, 6, 5


def _tables(rng):
    wte = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    wpe = rng.standard_normal((POSITIONS, HIDDEN)).astype(np.float32)
    return wte, wpe


def mixed(wte, wpe, tp_size, sharding_dim=0):
    """A split token table and a replicated position table (tp_size=1), added."""
    net = gb.Network("mixed")
    with net:
        ids = net.add_input("ids", "int64", ("batch", "seq"))
        pos = net.add_input("pos", "int64", ("batch", "seq"))
        a = F.embedding(ids, gb.constant(wte, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="tok")
        b = F.embedding(pos, gb.constant(wpe, name="wpe"), name="pos_emb")
        net.mark_output(a + b, "h")
    return net


def gpt2_like(wte, wpe, tp_size):
    """GPT-2's embedding and head, written logically: split wte, replicated wpe, tied LM head."""
    net = gb.Network("gpt2_like")
    with net:
        ids = net.add_input("ids", "int64", ("batch", "seq"))
        pos = net.add_input("pos", "int64", ("batch", "seq"))
        table = gb.constant(wte, name="wte.weight")
        h = F.embedding(ids, table, tp_size=tp_size, sharding_dim=0, name="wte") + F.embedding(pos, gb.constant(wpe, name="wpe.weight"), name="wpe")
        net.mark_output(h, "hidden")
        net.mark_output(F.matmul(h, F.transpose(table, [1, 0])), "logits")
    return net


def runtime_table(tp_size, sharding_dim, replicated_size):
    """A split embedding whose table is a network input, beside a replicated one of a runtime table."""
    net = gb.Network("runtime")
    with net:
        ids = net.add_input("ids", "int64", ("batch", "seq"))
        pos = net.add_input("pos", "int64", ("batch", "seq"))
        table = net.add_input("table", "float32", (VOCAB, HIDDEN))
        prompt = net.add_input("prompt", "float32", (POSITIONS, HIDDEN))
        a = F.embedding(ids, table, tp_size=tp_size, sharding_dim=sharding_dim, name="tok")
        b = F.embedding(pos, prompt, tp_size=replicated_size, name="prompt")
        net.mark_output(a + b, "h")
    return net


def _feeds(rng):
    return {"ids": rng.integers(0, VOCAB, size=(2, 4)), "pos": rng.integers(0, POSITIONS, size=(2, 4))}


def _check_everywhere(tmp_path, net, feeds, expected):
    """``expected`` from build (plugin on and off, every rank), reference.run and run_ranks (every rank)."""
    for name, want in expected.items():
        np.testing.assert_array_equal(reference.run(net, feeds)[name], want)
    ranks = partition(net)
    for out in reference.run_ranks(ranks, feeds):
        for name, want in expected.items():
            np.testing.assert_array_equal(out[name], want)
    for use_plugin in (True, False):
        engine = gb.build(net, tmp_path / f"plugin{int(use_plugin)}", use_plugin=use_plugin)
        assert engine.tp_size == len(ranks)
        for out in engine.run_all_ranks(feeds):
            for name, want in expected.items():
                np.testing.assert_array_equal(out[name], want)


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_a_replicated_table_beside_a_split_one(tmp_path, rng, tp_size, sharding_dim):
    wte, wpe = _tables(rng)
    feeds = _feeds(rng)
    net = mixed(wte, wpe, tp_size, sharding_dim)
    ranks = partition(net)
    assert len(ranks) == tp_size
    for rank in ranks:
        assert rank.find_node("pos_emb/lookup").attrs["vocab_start"] == 0
        assert rank.constants["wpe"].shape == (POSITIONS, HIDDEN), "every rank holds the whole replicated table"
        assert all(n.op != "allreduce" or n.name == "tok/allreduce" for n in rank.nodes), "the replicated table needs no collective"
    _check_everywhere(tmp_path, net, feeds, {"h": wte[feeds["ids"]] + wpe[feeds["pos"]]})


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
def test_gpt2_style_network_written_logically(tmp_path, rng, tp_size):
    wte, wpe = _tables(rng)
    feeds = _feeds(rng)
    net = gpt2_like(wte, wpe, tp_size)
    h = wte[feeds["ids"]] + wpe[feeds["pos"]]
    logits = reference.run(net, feeds)["logits"]
    np.testing.assert_allclose(logits, h @ wte.T, rtol=1e-5, atol=1e-5)  # matmul order is the runtime's
    if tp_size > 1:
        rank = partition(net)[1]
        assert rank.constants["wte.weight"].shape == (VOCAB, HIDDEN), "the tied head keeps the full table"
        assert rank.constants["wte.weight.vocab_shard"].shape == (-(-VOCAB // tp_size), HIDDEN)
    _check_everywhere(tmp_path, net, feeds, {"hidden": h})


@pytest.mark.parametrize("tp_size", [1, 2, 3, 4])
@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_an_embedding_of_a_runtime_table(tmp_path, rng, tp_size, sharding_dim):
    wte, wpe = _tables(rng)
    feeds = {**_feeds(rng), "table": wte, "prompt": wpe}
    net = runtime_table(tp_size, sharding_dim, 1)
    _check_everywhere(tmp_path, net, feeds, {"h": wte[feeds["ids"]] + wpe[feeds["pos"]]})


def test_a_runtime_table_split_further_than_its_rows(tmp_path, rng):
    """Eleven rows over four ranks of three: the last rank's rows lie past the vocabulary."""
    table = rng.standard_normal((4, HIDDEN)).astype(np.float32)
    net = gb.Network("tiny")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        weight = net.add_input("table", "float32", (4, HIDDEN))
        net.mark_output(F.embedding(ids, weight, tp_size=3, name="tok"), "h")
    feeds = {"ids": np.array([3, 0, 2, 1, 3]), "table": table}
    _check_everywhere(tmp_path, net, feeds, {"h": table[feeds["ids"]]})


@pytest.mark.parametrize("tp_size", [2, 3])
def test_rank_local_networks_with_a_replicated_table(tmp_path, rng, tp_size):
    wte, wpe = _tables(rng)
    feeds = _feeds(rng)
    networks = []
    for rank in reversed(range(tp_size)):  # any order
        net = gb.Network(f"local{rank}")
        with net:
            ids = net.add_input("ids", "int64", ("batch", "seq"))
            pos = net.add_input("pos", "int64", ("batch", "seq"))
            shard = gb.constant(shard_table(wte, tp_size, rank, 0), name="wte")
            a = F.embedding(ids, shard, tp_size=tp_size, tp_rank=rank, vocab_size=VOCAB, name="tok")
            b = F.embedding(pos, gb.constant(wpe, name="wpe"), name="pos_emb")
            net.mark_output(a + b, "h")
        networks.append(net)
    expected = wte[feeds["ids"]] + wpe[feeds["pos"]]
    for out in reference.run_ranks(networks, feeds):
        np.testing.assert_array_equal(out["h"], expected)
    for use_plugin in (True, False):
        engine = gb.build(networks, tmp_path / f"plugin{int(use_plugin)}", use_plugin=use_plugin)
        for out in engine.run_all_ranks(feeds):
            np.testing.assert_array_equal(out["h"], expected)
