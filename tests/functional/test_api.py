"""The public functional API: documented, no builtin-shadowing names, node names honoured."""

from __future__ import annotations

import builtins
import inspect

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F

CORE = [
    "add", "sub", "mul", "div", "equal", "less", "where", "cast", "identity",
    "matmul", "relu", "silu", "gelu", "softmax", "layer_norm", "rms_norm",
    "reshape", "transpose", "concat", "split", "slice_tensor", "gather", "unsqueeze", "squeeze",
    "linear", "sqrt", "exp", "log", "tanh", "erf", "sigmoid", "absolute", "neg", "power", "maximum", "minimum",
    "reduce_sum", "reduce_mean", "reduce_max", "arange_like",
]  # fmt: skip


def test_exports_cover_the_core_ops():
    assert set(CORE) <= set(F.__all__)
    assert all(callable(getattr(F, name)) for name in F.__all__)


@pytest.mark.parametrize("name", CORE)
def test_documented_with_a_name_keyword_and_no_builtin_shadowing(name):
    fn = getattr(F, name)
    assert not hasattr(builtins, name), f"F.{name} shadows a builtin"
    assert fn.__doc__ and fn.__doc__.strip(), f"F.{name} has no docstring"
    parameter = inspect.signature(fn).parameters.get("name")
    assert parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None


def test_node_names_are_scoped_and_unique():
    net = gb.Network("names")
    with net:
        x = net.add_input("x", "float32", (2, 4))
        with net.scope("block"):
            first = F.relu(x, name="act")
            second = F.relu(first, name="act")
            third = F.softmax(second)
    assert [first.name, second.name, third.name] == ["block/act", "block/act_1", "block/softmax_0"]


INDEXES = [
    (slice(None), 1),
    (slice(None), slice(1, None)),
    (Ellipsis, slice(None, None, -2)),
    (-1,),
    (0, Ellipsis, 2),
    (None, slice(None), -2, None),
    (slice(-3, None), None, 0, slice(1, 3)),
    (1, 2, 3),
]


@pytest.mark.parametrize("key", INDEXES, ids=repr)
def test_basic_indexing_matches_numpy(key, rng, tmp_path):
    array = rng.standard_normal((3, 4, 5)).astype("float32")
    net = gb.Network("index")
    with net:
        x = net.add_input("x", "float32", ("n", 4, 5))
        y = x[key]
        net.mark_output(y, "y")
    expected = array[key]
    assert len(y.shape) == expected.ndim
    np.testing.assert_array_equal(gb.reference.run(net, {"x": array})["y"], expected)
    np.testing.assert_array_equal(gb.build(net, tmp_path / "e").run({"x": array})["y"], expected)


@pytest.mark.parametrize(
    "key, message",
    [
        ((0, 0, 0, 0), "4 indices for a tensor of rank 3"),
        ((Ellipsis, Ellipsis), "only have one ellipsis"),
        ((slice(None), 4), "index 4 is out of bounds for axis 1 with size 4"),
        ((slice(None), slice(None), -6), "index -6 is out of bounds for axis 2 with size 5"),
        (([0, 1],), "unsupported index \\[0, 1\\] \\(list\\).*functional.gather"),
    ],
)
def test_bad_indexes_are_named(key, message):
    net = gb.Network("index")
    with net:
        x = net.add_input("x", "float32", ("n", 4, 5))
        with pytest.raises(gb.GraphConstructionError, match=message):
            x[key]


def test_instance_ids_are_unique_across_embeddings_and_collectives():
    net = gb.Network("ids")
    with net:
        ids = net.add_input("ids", "int64", (3,))
        table = gb.constant(np.zeros((4, 2), np.float32), name="table")
        looked_up = F.embedding(ids, table, instance_id=1, name="wte")
        summed = F.allreduce(looked_up, group=[0], name="sum")  # assigned: skips the taken 1
        assert summed.value.producer.attrs["instance_id"] not in (None, 1)
        with pytest.raises(gb.GraphConstructionError, match=r"allgather: instance_id=1 is already used in network 'ids'"):
            F.allgather(summed, group=[0], instance_id=1)
        with pytest.raises(gb.GraphConstructionError, match=r"embedding 'again': instance_id=1 is already used"):
            F.embedding(ids, table, instance_id=1, name="again")


def test_attributes_are_plain_python_data():
    net = gb.Network("plain")
    with net:
        x = net.add_input("x", "float32", (2, 3))
        gathered = F.allgather(x, group=[np.int64(0), np.int64(1)], axis=np.int64(-1), name="gather")
    attrs = gathered.value.producer.attrs
    assert attrs["group"] == (0, 1) and all(type(r) is int for r in attrs["group"]) and type(attrs["axis"]) is int
