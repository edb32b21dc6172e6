"""The IR verifier catches every corruption we can provoke by hand, all at once, with hints."""

from __future__ import annotations

import re

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.errors import VerificationError
from graphbuild.passes import VerifyPass, verify_network


def network(rng) -> gb.Network:
    net = gb.Network("v")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        weight = gb.constant(rng.standard_normal((6, 4)).astype(np.float32), name="wte.weight")
        emb = F.embedding(ids, weight, tp_size=2, name="wte")
        hidden = F.relu(emb, name="act")
        net.mark_output(F.add(hidden, emb, name="sum"), "out")
    return net


def problems(net: gb.Network) -> list[str]:
    with pytest.raises(VerificationError) as info:
        verify_network(net)
    message = str(info.value)
    lines = [line[4:] for line in message.splitlines() if line.startswith("  - ")]
    count = int(re.search(r"\((\d+) problems?\)", message).group(1))
    assert count == len(lines)
    assert all("; hint: " in line for line in lines), "every problem carries a hint"
    return lines


def test_a_valid_network_passes_and_the_pass_changes_nothing(rng):
    net = network(rng)
    result = VerifyPass()(net)
    assert not result.modified and result.network is net
    assert result.stats == {"nodes": 3}


def test_nodes_out_of_topological_order(rng):
    net = network(rng)
    net.nodes[1], net.nodes[2] = net.nodes[2], net.nodes[1]
    (problem,) = problems(net)
    assert "add 'sum' (position 1): input 0 'act' float32(n, 4) is produced by relu 'act', which comes later in net.nodes" in problem
    assert "insert at a later index" in problem


def test_node_of_another_network_and_foreign_inputs(rng):
    net, other = network(rng), network(rng)
    net.nodes.append(other.nodes[1])
    found = problems(net)
    assert any("relu 'act' (position 3) belongs to network 'v'" in p for p in found)
    assert any("relu 'act' (position 3): input 0 'wte' float32(n, 4) belongs to network 'v'" in p for p in found)
    assert any("node name 'act' is used by relu 'act' and relu 'act'" in p for p in found)


def test_duplicate_node_and_value_names(rng):
    net = network(rng)
    net.nodes[1].name = "wte"
    net.nodes[2].output.name = "act"
    found = problems(net)
    assert any("node name 'wte' is used by embedding 'wte' and relu 'wte'" in p for p in found)
    assert any("value name 'act' is used by" in p and "claim names through net.value_names" in p for p in found)


def test_names_outside_the_namespace(rng):
    net = network(rng)
    net.nodes[2].name = "renamed"
    net.constants["wte.weight"].name = "w2"
    found = problems(net)
    assert any("node name 'renamed' is not registered in net.node_names" in p for p in found)
    assert any("constant registered under 'wte.weight' is named 'w2'" in p for p in found)


def test_use_lists_must_match_inputs_both_ways(rng):
    net = network(rng)
    emb = net.nodes[0].output
    act = net.nodes[1]
    emb._uses.remove((act, 0))  # missing use
    emb._uses.append((net.nodes[2], 0))  # wrong index: add reads 'act' at 0
    emb._uses.append((net.nodes[2], 1))  # duplicate
    found = problems(net)
    assert any("relu 'act' reads 'wte' float32(n, 4) as input 0, but the value's use list misses it" in p for p in found)
    assert any("lists a use by add 'sum' input 0, which reads another value" in p for p in found)
    assert any("lists the use (add 'sum', 1) twice" in p for p in found)


def test_use_by_a_removed_node(rng):
    net = network(rng)
    dead = net.nodes.pop(1)  # removed without unlinking, and its output still read
    found = problems(net)
    assert any(f"lists a use by {dead.describe()}, which is not in net.nodes" in p for p in found)
    assert any("input 0 'act' float32(n, 4) is produced by relu 'act', which is not in net.nodes (removed?)" in p for p in found)


def test_outputs_must_be_values_of_this_network(rng):
    net, other = network(rng), network(rng)
    net.outputs["stray"] = other.nodes[1].output
    net.outputs["junk"] = "act"  # type: ignore[assignment]
    found = problems(net)
    assert any("output 'stray' is 'act' float32(n, 4), belongs to network 'v'" in p for p in found)
    assert any("output 'junk' is a str, not a Value" in p for p in found)


def test_unregistered_ops_and_wrong_domains(rng):
    net = network(rng)
    net.nodes[1].op = "no_such_op"
    net.nodes[2].domain = "graphbuild"
    found = problems(net)
    assert any("no_such_op 'act' (position 1): unknown op 'no_such_op'" in p and "register the op" in p for p in found)
    assert any("add 'sum' (position 2): domain 'graphbuild' differs from the registry's ''" in p for p in found)


def test_attributes_must_be_plain_data(rng):
    net = network(rng)
    net.nodes[0].attrs["tp_size"] = np.int64(2)
    net.nodes[1].attrs["table"] = np.zeros(3)
    net.nodes[2].attrs["nested"] = (1, [2, net])
    found = problems(net)
    assert any("attribute 'tp_size' is not plain data (numpy.int64" in p and "int()/float()" in p for p in found)
    assert any("attribute 'table' is not plain data (numpy.ndarray" in p for p in found)
    assert any("attribute 'nested' is not plain data (graphbuild.ir.network.Network" in p for p in found)


def test_collective_instance_ids_are_unique_ints(rng):
    net = network(rng)
    with net:
        extra = F.allreduce(net.nodes[2].output, [0, 1], name="sum_all")
        net.mark_output(extra, "all")
    extra.value.producer.attrs["instance_id"] = 0  # the embedding's
    found = problems(net)
    assert found == [
        "allreduce 'sum_all' and embedding 'wte' share instance_id=0; hint: instance_ids identify collectives across ranks; "
        "take a fresh one from net.new_instance_id()"
    ]
    extra.value.producer.attrs["instance_id"] = "zero"
    assert "allreduce 'sum_all': instance_id is 'zero', not an int" in problems(net)[0]


def test_input_and_constant_kinds(rng):
    net = network(rng)
    net.inputs["ids"].const = np.zeros(3, np.int64)
    net.constants["wte.weight"].const = None
    found = problems(net)
    assert any("input 'ids' int64(n,) carries a constant payload" in p for p in found)
    assert any("constant 'wte.weight' float32(6, 4) has no payload" in p for p in found)


def test_every_problem_is_collected(rng):
    net = network(rng)
    net.nodes[0].attrs["tp_size"] = np.int32(2)
    net.nodes[1].op = "no_such_op"
    net.nodes[2].name = "wte"
    net.nodes[2].output.name = "elsewhere"
    assert len(problems(net)) == 4  # attribute, op, duplicate node name, unregistered value name


def _long(length: int, op) -> gb.Network:
    net = gb.Network("long")
    with net:
        x = net.add_input("x", "float32", ("n",))
        for _ in range(length):
            x = op(x)
        net.mark_output(x, "y")
    return net


def test_verification_is_linear(doubling_ratio):
    ratio = doubling_ratio(lambda n: (lambda net=_long(n, lambda x: F.add(x, 1.0)): verify_network(net)), 1000)
    assert ratio < 2.2, f"twice the nodes cost {ratio:.2f} times the calls"


def test_reporting_misordered_nodes_is_linear(doubling_ratio):
    def step_for(n: int):
        net = _long(n, F.relu)
        net.nodes.reverse()  # every node but the first now reads a value produced later
        return lambda: problems(net)

    ratio = doubling_ratio(step_for, 1000)
    assert ratio < 2.2, f"twice the nodes cost {ratio:.2f} times the calls"
    net = _long(8000, F.relu)
    net.nodes.reverse()
    found = problems(net)
    assert len(found) == 7999 and all("which comes later in net.nodes" in p for p in found)
