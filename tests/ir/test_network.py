"""The IR: values, nodes, networks, names, context and copies."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.ir import Namespace


def embedding_network(rng, name="net"):
    net = gb.Network(name)
    with net:
        ids = net.add_input("input_ids", "int64", ("batch", "seq"))
        weight = gb.constant(rng.standard_normal((10, 4)).astype(np.float32), name="wte.weight")
        out = F.embedding(ids, weight, tp_size=2, name="wte")
        net.mark_output(out, "emb")
    return net, ids, weight, out


def test_values_know_type_producer_and_uses(rng):
    net, ids, weight, out = embedding_network(rng)
    node = out.value.producer
    assert node.op == "embedding" and node.domain == "graphbuild" and node.name == "wte"
    assert out.shape == ("batch", "seq", 4) and out.dtype is gb.float32
    assert ids.value.uses == ((node, 0),) and weight.value.uses == ((node, 1),)
    assert ids.value.is_input and weight.value.is_constant and not out.value.is_input
    assert node.origin is not None and node.origin[0] == __file__, "creation site points at user code"
    assert "test_network.py" in node.where()


def test_tensor_identity_semantics(rng):
    net, ids, _, out = embedding_network(rng)
    assert out.value.tensor() is out
    assert len({ids, out}) == 2 and ids != out
    with pytest.raises(gb.GraphConstructionError, match="no truth value"):
        bool(out)


def test_no_current_network_gives_a_hint():
    with pytest.raises(gb.GraphBuildError, match=r"with net:"):
        gb.constant(np.ones(3, np.float32))


def test_context_is_restored_after_errors_and_nesting():
    outer, inner = gb.Network("outer"), gb.Network("inner")
    with outer:
        with pytest.raises(RuntimeError):
            with inner:
                raise RuntimeError("boom")
        assert gb.current_network() is outer
    with pytest.raises(gb.GraphBuildError):
        gb.current_network()


def test_context_is_per_thread():
    net = gb.Network("main")
    seen = []
    with net:
        thread = threading.Thread(target=lambda: seen.append(gb.ir.network._CURRENT.get()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_node_names_follow_scope_and_counter_rules(rng):
    net = gb.Network("names")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        table = gb.constant(rng.standard_normal((5, 2)).astype(np.float32), name="t")
        a = F.embedding(ids, table)
        b = F.embedding(ids, table)
        with net.scope("layer0"):
            c = F.embedding(ids, table)
            d = F.embedding(ids, table, name="tok")
            e = F.embedding(ids, table, name="tok")
    assert [t.value.producer.name for t in (a, b, c, d, e)] == ["embedding_0", "embedding_1", "layer0/embedding_0", "layer0/tok", "layer0/tok_1"]
    assert [t.name for t in (a, d)] == ["embedding_0", "layer0/tok"]


def test_namespace_rules():
    names = Namespace()
    assert names.claim("x") == "x" and names.claim("x") == "x_1" and names.claim("x") == "x_2"
    assert names.numbered("add") == "add_0" and names.numbered("add") == "add_1"
    names.claim("mul_0")
    assert names.numbered("mul") == "mul_1"


def test_duplicate_user_names_are_errors(rng):
    net = gb.Network("dups")
    with net:
        net.add_input("x", "int64", (3,))
        with pytest.raises(gb.GraphConstructionError, match="input name 'x' is already used"):
            net.add_input("x", "int64", (3,))
        with pytest.raises(gb.GraphConstructionError, match="constant name 'x' is already used"):
            gb.constant(np.ones(2, np.float32), name="x")


@pytest.mark.parametrize("shape,message", [((-1,), "negative"), ((2.5,), "must be a non-negative int"), (("not a name",), "identifier")])
def test_bad_input_shapes(shape, message):
    with pytest.raises(gb.GraphConstructionError, match=message):
        gb.Network().add_input("x", "float32", shape)


def test_unsupported_dtype():
    with pytest.raises(gb.GraphConstructionError, match="unsupported dtype 'complex64'"):
        gb.Network().add_input("x", "complex64", (1,))


def test_inputs_from_another_network_are_rejected(rng):
    _, ids, _, _ = embedding_network(rng, "a")
    other = gb.Network("b")
    with other:
        table = gb.constant(np.ones((3, 2), np.float32))
        with pytest.raises(gb.GraphConstructionError, match=r"input 1 'const_0' float32\(3, 2\) belongs to network 'b', not 'a'"):
            F.embedding(ids, table)


def test_copy_is_independent_and_shares_payloads(rng):
    net, _, weight, _ = embedding_network(rng)
    twin = net.copy()
    assert str(twin) == str(net)
    assert twin.constants["wte.weight"].const is weight.value.const
    twin.nodes[0].attrs["tp_size"] = 99
    assert net.nodes[0].attrs["tp_size"] == 2
    assert twin.outputs["emb"].producer is twin.nodes[0]


def test_replace_and_remove_keep_use_lists_right(rng):
    net, ids, weight, out = embedding_network(rng)
    with net:
        ids2 = net.add_input("ids2", "int64", ("batch", "seq"))
    node = out.value.producer
    net.replace_all_uses(ids.value, ids2.value)
    assert ids.value.uses == () and ids2.value.uses == ((node, 0),)
    with pytest.raises(gb.GraphConstructionError, match="still read by a graph output"):
        net.remove_nodes([node])
    del net.outputs["emb"]
    assert net.remove_nodes([node]) == 1
    assert net.nodes == [] and ids2.value.uses == () and weight.value.uses == ()
    net.remove_constant(weight.value)
    assert "wte.weight" not in net.constants


def test_printing_shows_every_node(rng):
    net, *_ = embedding_network(rng)
    text = str(net)
    assert "input  %input_ids: int64(batch, seq)" in text
    assert "%wte: float32(batch, seq, 4) = embedding(%input_ids, %wte.weight)" in text
    assert "output %emb = %wte" in text


def test_to_networkx_mirrors_values_ops_and_edges():
    import networkx as nx

    net = gb.Network("g")
    with net:
        x = net.add_input("x", "float32", ("n", 4))
        w = gb.constant(np.ones((4, 4), np.float32), name="w")
        y = F.relu(x @ w)
        net.mark_output(y, "y")
        net.mark_output(x @ w, "z")
    graph = net.to_networkx()
    ops = [n for n, data in graph.nodes(data=True) if data["kind"] == "op"]
    assert sorted(graph.nodes[n]["op"] for n in ops) == ["matmul", "matmul", "relu"]
    assert graph.nodes["%x"]["kind"] == "input" and graph.nodes["%w"]["kind"] == "constant"
    # every op reads its inputs and writes its outputs: 2+2+1 reads, 3 writes
    assert graph.number_of_edges() == 8
    assert nx.is_directed_acyclic_graph(graph)
    order = [graph.nodes[n]["op"] for n in nx.topological_sort(graph) if graph.nodes[n]["kind"] == "op"]
    assert order.index("relu") > min(i for i, op in enumerate(order) if op == "matmul")
    assert graph.nodes[f"%{y.name}"]["outputs"] == "y"


# ------------------------------------------------------------------------------------ cycles


def _chain():
    net = gb.Network("cyc")
    with net:
        x = net.add_input("x", "float32", ("n",))
        a = F.relu(x, name="a")
        b = F.add(a, 1.0, name="b")
        net.mark_output(b, "y")
    return net, x, a, b


def test_a_rewrite_that_makes_a_cycle_is_refused():
    net, x, a, b = _chain()
    before = str(net)
    with pytest.raises(gb.GraphConstructionError, match=r"replacing 'a' float32\(n,\) by 'b' float32\(n,\) would make a cycle: 'b' float32\(n,\) is computed from 'a' float32\(n,\) through add 'b'") as raised:
        net.replace_all_uses(a.value, b.value)
    assert "(created at test_network.py:" in str(raised.value)
    assert str(net) == before, "nothing changed"
    with pytest.raises(gb.GraphConstructionError, match="would make a cycle"):
        net.replace_all_uses(x.value, b.value)
    net.replace_all_uses(b.value, a.value)  # the other way round is fine: b is left unread
    assert net.outputs["y"] is a.value


def test_the_verifier_names_a_cycle_and_copy_and_reference_refuse_it():
    from graphbuild.passes import verify_network

    net, x, a, b = _chain()
    a.value.producer.replace_input(0, b.value)  # by hand: relu reads add, add reads relu
    with pytest.raises(gb.VerificationError, match=r"nodes form a cycle: relu 'a' -> add 'b' -> relu 'a'"):
        verify_network(net)
    with pytest.raises(gb.GraphConstructionError, match=r"cannot copy relu 'a': it reads 'b' float32\(n,\) before it is defined"):
        net.copy()
    with pytest.raises(gb.ExecutionError, match=r"relu 'a' reads 'b' float32\(n,\) before it is computed"):
        gb.reference.run(net, {"x": np.ones(2, np.float32)})
    with pytest.raises(gb.GraphConstructionError, match="cannot copy"):
        gb.build(net, "unused")
