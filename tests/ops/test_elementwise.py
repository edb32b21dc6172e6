"""Elementwise ops: shape/dtype rules with symbolic dims, evaluators vs independent numpy, and the
ONNX lowering run in ONNX Runtime vs the evaluator."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference

NUMERIC = [gb.float32, gb.float16, gb.bfloat16, gb.int32, gb.int64]
ALL = NUMERIC + [gb.dtypes.bool_]
FLOAT64_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def binary_network(op, dtype, shape_a, shape_b, b_dtype=None, name="node"):
    net = gb.Network(op)
    with net:
        a = net.add_input("a", dtype, shape_a)
        b = net.add_input("b", b_dtype or dtype, shape_b)
        net.mark_output(getattr(F, op)(a, b, name=name), "y")
    return net


@pytest.mark.parametrize(
    "shape_a,shape_b,expected",
    [
        (("batch", "seq", 4), (4,), ("batch", "seq", 4)),
        (("batch", 1), (1, "seq"), ("batch", "seq")),
        (("n",), (3,), (3,)),
        ((1,), ("n",), ("n",)),
        (("n", 1), ("n", 5), ("n", 5)),
        ((), (2, 3), (2, 3)),
    ],
)
def test_broadcasting_with_symbols(shape_a, shape_b, expected):
    net = binary_network("add", gb.float32, shape_a, shape_b)
    assert net.outputs["y"].shape == expected
    assert net.outputs["y"].dtype is gb.float32


@pytest.mark.parametrize(
    "shape_a,shape_b,problem",
    [
        ((2, 3), (4, 3), "cannot broadcast shapes (2, 3) and (4, 3): axis -2 has sizes 2 and 4"),
        (("a", 3), ("b", 3), "cannot broadcast shapes (a, 3) and (b, 3): axis -2 has sizes 'a' and 'b'"),
    ],
)
def test_broadcast_errors_name_the_node_and_both_shapes(shape_a, shape_b, problem):
    with pytest.raises(gb.GraphConstructionError) as error:
        binary_network("mul", gb.float32, shape_a, shape_b, name="scale")
    message = str(error.value)
    assert message.startswith(f"mul 'scale': {problem}")
    assert "test_elementwise.py" in message, "the user's creation site is appended"


def test_no_implicit_promotion():
    with pytest.raises(gb.GraphConstructionError, match=r"add 'node': operands must share one dtype, got a float32, b float16; insert an explicit cast"):
        binary_network("add", gb.float32, (2,), (2,), b_dtype=gb.float16)


def test_arithmetic_refuses_bool():
    with pytest.raises(gb.GraphConstructionError, match=r"sub 'node': operands must be one of float32, .*, got bool"):
        binary_network("sub", "bool", (2,), (2,))


def nonzero(make_array, shape, dtype):
    array = make_array(shape, dtype)
    return np.where(array == 0, np.ones((), dtype.numpy), array)


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_arithmetic_values(op, dtype, make_array, close, engine_check):
    net = binary_network(op, dtype, ("batch", 1, 5), (3, 1))
    a = make_array((2, 1, 5), dtype)
    b = nonzero(make_array, (3, 1), dtype)
    out = engine_check(net, {"a": a, "b": b})["y"]
    if dtype.is_float:
        expected = FLOAT64_OPS[op](a.astype(np.float64), b.astype(np.float64))
    elif op == "div":
        expected = np.trunc(a.astype(np.float64) / b.astype(np.float64)).astype(dtype.numpy)
    else:
        expected = FLOAT64_OPS[op](a.astype(np.int64), b.astype(np.int64)).astype(dtype.numpy)
    close(out, expected, dtype)


def test_integer_division_truncates_toward_zero_and_refuses_zero():
    net = binary_network("div", gb.int32, (4,), (4,), name="d")
    a = np.array([-7, 7, -7, 7], np.int32)
    b = np.array([2, -2, -2, 2], np.int32)
    np.testing.assert_array_equal(reference.run(net, {"a": a, "b": b})["y"], [-3, -3, 3, 3])
    with pytest.raises(gb.ExecutionError, match="div 'd': integer division by zero"):
        reference.run(net, {"a": a, "b": np.array([1, 0, 1, 1], np.int32)})


@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("op", ["equal", "less"])
def test_comparisons(op, dtype, make_array, engine_check):
    if op == "less" and dtype == gb.dtypes.bool_:
        with pytest.raises(gb.GraphConstructionError, match="less 'node': operands must be one of"):
            binary_network(op, dtype, (3,), (3,))
        return
    net = binary_network(op, dtype, ("n", 4), (4,))
    a = make_array((3, 4), dtype)
    b = a[1].copy()  # row 1 is equal, the others random
    out = engine_check(net, {"a": a, "b": b})["y"]
    assert out.dtype == np.bool_ and net.outputs["y"].dtype == gb.dtypes.bool_
    wide = (lambda x: x.astype(np.float64)) if dtype != gb.dtypes.bool_ else (lambda x: x)
    expected = wide(a) == wide(b) if op == "equal" else wide(a) < wide(b)
    np.testing.assert_array_equal(out, expected)
    assert out[1].all() == (op == "equal")


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_where_broadcasts_three_ways(dtype, make_array, rng, engine_check):
    net = gb.Network("where")
    with net:
        cond = net.add_input("cond", "bool", ("batch", 1))
        x = net.add_input("x", dtype, (1, 4))
        y = net.add_input("y", dtype, ("batch", 4))
        net.mark_output(F.where(cond, x, y), "out")
    assert net.outputs["out"].shape == ("batch", 4)
    feeds = {"cond": rng.random((3, 1)) < 0.5, "x": make_array((1, 4), dtype), "y": make_array((3, 4), dtype)}
    feeds["cond"][0, 0], feeds["cond"][1, 0] = True, False
    out = engine_check(net, feeds)["out"]
    for row in range(3):
        source = feeds["x"][0] if feeds["cond"][row, 0] else feeds["y"][row]
        np.testing.assert_array_equal(out[row], source)


def test_where_errors():
    net = gb.Network("where")
    with net:
        cond = net.add_input("cond", "int32", (2,))
        x = net.add_input("x", "float32", (2,))
        y = net.add_input("y", "float16", (2,))
        with pytest.raises(gb.GraphConstructionError, match=r"where 'w': the condition must be bool, got int32"):
            F.where(cond, x, x, name="w")
        flag = net.add_input("flag", "bool", (2,))
        with pytest.raises(gb.GraphConstructionError, match=r"where 'pick': the two branches must share one dtype, got x float32, y float16"):
            F.where(flag, x, y, name="pick")


def expected_cast(x: np.ndarray, target: gb.DType) -> np.ndarray:
    """Independent conversion rules: truncation toward zero, != 0 for bool, else rounding."""
    if target == gb.dtypes.bool_:
        return x.astype(np.float64) != 0 if x.dtype != np.bool_ else x
    if target.is_int and x.dtype.kind not in "iub":
        return np.trunc(x.astype(np.float64)).astype(target.numpy)
    return x.astype(target.numpy)


@pytest.mark.parametrize("target", ALL, ids=str)
@pytest.mark.parametrize("source", ALL, ids=str)
def test_cast_every_pair(source, target, make_array, engine_check):
    net = gb.Network("cast")
    with net:
        x = net.add_input("x", source, ("n", 3))
        y = F.cast(x, target.name, name="convert")
        net.mark_output(y, "y")
    assert y.dtype is target and y.shape == ("n", 3)
    assert y.value.producer.attrs == {"to": target.name}
    data = make_array((4, 3), source, scale=20.0)
    out = engine_check(net, {"x": data})["y"]
    np.testing.assert_array_equal(out.astype(np.float64), expected_cast(data, target).astype(np.float64))


def test_cast_refuses_unknown_dtype():
    net = gb.Network("cast")
    with net:
        x = net.add_input("x", "float32", (2,))
        with pytest.raises(gb.GraphConstructionError, match="cast 'wide': unsupported dtype 'float64'"):
            F.cast(x, "float64", name="wide")


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_identity(dtype, make_array, engine_check):
    net = gb.Network("identity")
    with net:
        x = net.add_input("x", dtype, ("n", 2))
        y = F.identity(x, name="copy")
        net.mark_output(y, "y")
    assert y.shape == ("n", 2) and y.dtype is dtype and y.name == "copy"
    data = make_array((3, 2), dtype)
    np.testing.assert_array_equal(engine_check(net, {"x": data})["y"], data)


def zero_dimensional_network():
    net = gb.Network("scalars")
    with net:
        x = net.add_input("x", "float16", ())
        v = net.add_input("v", "int32", (4,))
        i = net.add_input("i", "int64", ())
        outputs = {
            "add": x + 1,
            "where": F.where(F.less(x, 0.0), x, 1.0),
            "relu": F.relu(F.gather(v, i)),
            "dot": F.matmul(v, v),
            "gelu": F.gelu(x),
            "roundtrip": F.squeeze(F.unsqueeze(x, 0)),
        }
        for name, tensor in outputs.items():
            assert tensor.shape == (), name
            net.mark_output(tensor, name)
    feeds = {"x": np.array(-1.5, np.float16), "v": np.array([1, -2, 3, 7], np.int32), "i": np.array(-1)}
    return net, feeds


def test_zero_dimensional_tensors_in_the_reference():
    net, feeds = zero_dimensional_network()
    out = reference.run(net, feeds)
    assert all(isinstance(a, np.ndarray) and a.shape == () for a in out.values())
    assert out["add"] == np.float16(-0.5) and out["where"] == np.float16(-1.5)
    assert out["relu"] == 7 and out["dot"] == 63


def test_zero_dimensional_tensors_in_the_engine(engine_check):
    engine_check(*zero_dimensional_network())
