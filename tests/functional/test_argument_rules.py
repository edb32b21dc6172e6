"""Careless arguments get a GraphConstructionError naming the argument and the user's line.

One rule for integers everywhere: Python or numpy ints, never bools, floats or strings.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import layers
from graphbuild.errors import GraphConstructionError, PartitionError
from graphbuild.passes import partition

HERE = os.path.basename(__file__)


def _network():
    net = gb.Network("args")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        table = gb.constant(np.arange(24, dtype=np.float32).reshape(6, 4), name="t")
    return net, ids, table


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instance_id": "abc"}, r"instance_id must be an int, got 'abc' \(str\)"),
        ({"instance_id": 7.5}, r"instance_id must be an int, got 7.5 \(float\)"),
        ({"instance_id": True}, r"instance_id must be an int, got True \(bool\)"),
        ({"vocab_size": 5.5}, r"vocab_size must be an int, got 5.5 \(float\)"),
        ({"sharding_dim": True}, r"sharding_dim must be an int, got True \(bool\)"),
        ({"sharding_dim": 2}, r"sharding_dim must be 0 or 1, got 2"),
        ({"tp_size": 2.0}, r"tp_size must be an int, got 2.0 \(float\)"),
        ({"tp_size": 0}, r"tp_size must be at least 1, got 0"),
        ({"tp_size": 2, "tp_group": [0, 1.0]}, r"tp_group must list ints, got \[0, 1.0\]"),
        ({"tp_size": 2, "tp_rank": "1"}, r"tp_rank must be an int, got '1' \(str\)"),
        ({"embedding_dim": "4"}, r"embedding_dim must be an int, got '4' \(str\)"),
        ({"out_of_range": "clip"}, r"out_of_range must be 'error' or 'zero', got 'clip'"),
    ],
)
def test_embedding_arguments_follow_one_rule(kwargs, message):
    net, ids, table = _network()
    with pytest.raises(GraphConstructionError, match=message) as raised:
        F.embedding(ids, table, name="wte", **kwargs)
    assert f"(created at {HERE}:" in str(raised.value)
    assert str(raised.value).startswith("embedding 'wte': ")
    assert net.nodes == [], "nothing was added"


def test_numpy_integers_are_integers():
    net, ids, table = _network()
    out = F.embedding(ids, table, tp_size=np.int64(2), tp_group=np.array([0, 1]), sharding_dim=np.int32(1), instance_id=np.int64(7), vocab_size=np.int16(5))
    attrs = out.value.producer.attrs
    assert (attrs["tp_size"], attrs["tp_group"], attrs["sharding_dim"], attrs["instance_id"], attrs["vocab_size"]) == (2, (0, 1), 1, 7, 5)
    assert all(type(v) is int for v in (attrs["tp_size"], attrs["sharding_dim"], attrs["instance_id"], attrs["vocab_size"]))
    assert all(type(v) is int for v in attrs["tp_group"])


def test_instance_id_7_5_does_not_pass_as_7():
    net, ids, table = _network()
    F.embedding(ids, table, tp_size=2, instance_id=7)
    with pytest.raises(GraphConstructionError, match="instance_id must be an int, got 7.5"):
        F.embedding(ids, table, tp_size=2, instance_id=7.5)


def test_collective_arguments_follow_the_rule():
    net, ids, _ = _network()
    with net:
        x = net.add_input("x", "float32", ("n", 4))
    with pytest.raises(GraphConstructionError, match=r"allreduce: instance_id must be an int, got 1.5 \(float\)"):
        F.allreduce(x, [0, 1], instance_id=1.5)
    with pytest.raises(GraphConstructionError, match=r"allgather 'g': axis must be an int, got True \(bool\)"):
        F.allgather(x, [0, 1], axis=True, name="g")
    with pytest.raises(GraphConstructionError, match=r"allreduce: group must list ints"):
        F.allreduce(x, [0, "1"])


@pytest.mark.parametrize("padding_idx", [1.5, True, "1"])
def test_padding_idx_is_an_int(padding_idx):
    with pytest.raises(GraphConstructionError, match="padding_idx must be an int"):
        layers.Embedding(6, 4, padding_idx=padding_idx)


def test_numpy_padding_idx():
    assert layers.Embedding(6, 4, padding_idx=np.int64(-1), seed=0).padding_idx == 5


# --------------------------------------------------------------------------- the user's line


def test_tp_rank_outside_the_group_names_the_line():
    net, ids, table = _network()
    with net:
        shard = gb.constant(np.zeros((3, 4), np.float32))
    with pytest.raises(GraphConstructionError, match=r"tp_rank=3 is outside tp_group \[0, 1\] \(tp_size=2\)") as raised:
        F.embedding(ids, shard, tp_size=2, tp_rank=3, vocab_size=6, name="wte")
    assert f"(created at {HERE}:" in str(raised.value)


def test_a_duplicate_instance_id_names_the_line():
    net, ids, table = _network()
    F.embedding(ids, table, tp_size=2, instance_id=3)
    with pytest.raises(GraphConstructionError, match=r"instance_id=3 is already used in network 'args'") as raised:
        F.embedding(ids, table, tp_size=2, instance_id=3)
    assert f"(created at {HERE}:" in str(raised.value)


def test_mixed_tp_sizes_name_the_line():
    net, ids, table = _network()
    F.embedding(ids, table, tp_size=2, name="a")
    F.embedding(ids, table, tp_size=3, name="b")
    with pytest.raises(PartitionError, match=r"embedding 'a' has tp_size=2 but embedding 'b' has tp_size=3") as raised:
        partition(net)
    assert f"(created at {HERE}:" in str(raised.value)


# ------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["", 7, None])
def test_an_input_needs_a_name(name):
    net = gb.Network("names")
    with pytest.raises(GraphConstructionError, match=r"input name must be a non-empty string"):
        net.add_input(name, "float32", (2,))
    assert net.inputs == {}


def test_constants_and_outputs_need_non_empty_names():
    net = gb.Network("names")
    with net:
        x = net.add_input("x", "float32", (2,))
        with pytest.raises(GraphConstructionError, match=r"constant name must be a non-empty string"):
            gb.constant(np.zeros(2, np.float32), name="")
        with pytest.raises(GraphConstructionError, match=r"output name must be a non-empty string"):
            net.mark_output(x, "")


# ---------------------------------------------------------------------------------- float64


def test_a_float64_table_is_refused_not_narrowed():
    net, ids, _ = _network()
    with net:
        with pytest.raises(GraphConstructionError, match=r"constant 'wte' is a float64 array of shape \(6, 4\); .* pass dtype='float32'"):
            gb.constant(np.ones((6, 4)), name="wte")
        assert "wte" not in net.constants
        explicit = gb.constant(np.ones((6, 4)), name="wte", dtype="float32")
        literal = gb.constant([0.5, 1.5])
    assert explicit.dtype == gb.float32 and literal.dtype == gb.float32, "an explicit dtype and Python floats are fine"
    with net:
        table = net.add_input("table", "float32", (6, 4))
    net.mark_output(F.embedding(ids, table), "e")
    with pytest.raises(gb.InputError, match=r"input 'table' must be float32, got float64"):
        gb.reference.run(net, {"ids": np.array([1]), "table": np.ones((6, 4))})
