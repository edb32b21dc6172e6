"""DeadCodeEliminationPass: removes what no output needs, keeps inputs, outputs and collectives."""

from __future__ import annotations


import numpy as np

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.passes import DeadCodeEliminationPass, verify_network


def test_dead_branches_and_constants_are_removed(rng):
    net = gb.Network("dce")
    with net:
        x = net.add_input("x", "float32", ("n", 3))
        unused_input = net.add_input("unused", "int64", ("n",))
        bias = gb.constant(rng.standard_normal(3).astype(np.float32), name="bias")
        gb.constant(np.zeros(2, np.float32), name="orphan")
        live = F.add(x, bias, name="live")
        dead = F.relu(F.mul(x, bias, name="dead_mul"), name="dead_relu")
        F.add(dead, gb.constant(np.ones(3, np.float32), name="dead_const"), name="dead_add")
        net.mark_output(live, "y")
    result = DeadCodeEliminationPass()(net)
    assert result.modified
    assert result.stats == {"removed_nodes": 3, "removed_constants": 2}
    assert [n.name for n in net.nodes] == ["live"]
    assert set(net.constants) == {"bias"}
    assert set(net.inputs) == {"x", "unused"}, "graph inputs are the interface; never removed"
    assert unused_input.value.uses == ()
    assert bias.value.uses == ((net.nodes[0], 1),)
    verify_network(net)
    again = DeadCodeEliminationPass()(net)
    assert not again.modified and again.stats == {"removed_nodes": 0, "removed_constants": 0}


def test_constant_outputs_and_inputs_as_outputs_are_kept():
    net = gb.Network("outs")
    with net:
        x = net.add_input("x", "float32", (2,))
        c = gb.constant(np.ones(2, np.float32), name="c")
        net.mark_output(c, "c")
        net.mark_output(x, "x_again")
    assert not DeadCodeEliminationPass()(net).modified
    assert set(net.constants) == {"c"}


def test_collectives_are_kept_even_when_unused(rng):
    """A rank cannot drop a collective on its own: the other ranks would wait for it."""
    net = gb.Network("local")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        shard = gb.constant(rng.standard_normal((3, 4)).astype(np.float32), name="wte.weight")
        emb = F.embedding(ids, shard, tp_size=2, tp_rank=0, vocab_size=6, name="wte")
        F.allreduce(F.relu(emb, name="act"), [0, 1], name="unused_sum")
        F.relu(emb, name="dead")
        net.mark_output(ids, "ids")
    result = DeadCodeEliminationPass()(net)
    assert [n.name for n in net.nodes] == ["wte", "act", "unused_sum"]
    assert result.stats["removed_nodes"] == 1


def chain(length: int) -> gb.Network:
    """``length`` live adds on an embedding, each with a dead multiply beside it."""
    net = gb.Network("chain")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        table = gb.constant(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), name="wte.weight")
        x = F.embedding(ids, table, tp_size=2, name="wte")
        for _ in range(length):
            x = F.add(x, 1.0)
            F.mul(x, 2.0)
        net.mark_output(x, "out")
    return net


def test_dce_is_linear_on_a_long_chain(doubling_ratio):
    net = chain(4000)
    assert len(net.nodes) == 8001
    result = DeadCodeEliminationPass()(net)
    assert result.stats == {"removed_nodes": 4000, "removed_constants": 4000}
    assert len(net.nodes) == 4001
    ratio = doubling_ratio(lambda n: (lambda net=chain(n): DeadCodeEliminationPass()(net)), 500)
    assert ratio < 2.2, f"twice the nodes cost {ratio:.2f} times the calls"
