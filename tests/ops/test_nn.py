"""nn ops (matmul, activations, softmax, norms): shape rules, evaluators vs textbook formulas in
float64, and ONNX Runtime vs the evaluator across float32/float16/bfloat16."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F

FLOATS = [gb.float32, gb.float16, gb.bfloat16]
NUMERIC = FLOATS + [gb.int32, gb.int64]
erf = np.vectorize(math.erf, otypes=[np.float64])


def unary_network(fn, dtype, shape, **kwargs):
    net = gb.Network("unary")
    with net:
        x = net.add_input("x", dtype, shape)
        net.mark_output(fn(x, **kwargs), "y")
    return net


# ------------------------------------------------------------------------------------ matmul
MATMUL_SHAPES = [
    (("batch", "seq", 16), (16, 8), ("batch", "seq", 8)),
    ((4,), (4, 3), (3,)),
    ((2, 4), (4,), (2,)),
    ((4,), (4,), ()),
    ((2, 1, 3, 4), (5, 4, 6), (2, 5, 3, 6)),
    (("b", "m", "k"), ("b", "k", "n"), ("b", "m", "n")),
]


@pytest.mark.parametrize("shape_a,shape_b,expected", MATMUL_SHAPES)
def test_matmul_shapes(shape_a, shape_b, expected):
    net = gb.Network("mm")
    with net:
        a = net.add_input("a", "float32", shape_a)
        b = net.add_input("b", "float32", shape_b)
        assert (a @ b).shape == expected


@pytest.mark.parametrize(
    "shape_a,shape_b,problem",
    [
        ((2, 3), (4, 5), "contracting dims differ: 3 (last of (2, 3)) vs 4 (second to last of (4, 5))"),
        ((2, "hidden"), (16, 5), "contracting dims differ: 'hidden' (last of (2, hidden)) vs 16"),
        ((3,), (4,), "contracting dims differ: 3 (last of (3,)) vs 4 (only of (4,))"),
        ((), (4,), "operands must be at least 1-D, got shapes () and (4,)"),
        ((2, 3, 4), (5, 4, 6), "cannot broadcast shapes (2,) and (5,)"),
    ],
)
def test_matmul_errors(shape_a, shape_b, problem):
    net = gb.Network("mm")
    with net:
        a = net.add_input("a", "float32", shape_a)
        b = net.add_input("b", "float32", shape_b)
        with pytest.raises(gb.GraphConstructionError) as error:
            F.matmul(a, b, name="proj")
    assert str(error.value).startswith(f"matmul 'proj': {problem}")


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
@pytest.mark.parametrize("shape_a,shape_b,concrete", [(MATMUL_SHAPES[0][0], MATMUL_SHAPES[0][1], ((2, 3, 16), (16, 8)))] + [(a, b, (a, b)) for a, b, _ in MATMUL_SHAPES[1:5]])
def test_matmul_values(dtype, shape_a, shape_b, concrete, make_array, close, engine_check):
    net = gb.Network("mm")
    with net:
        a = net.add_input("a", dtype, shape_a)
        b = net.add_input("b", dtype, shape_b)
        net.mark_output(a @ b, "y")
    feeds = {"a": make_array(concrete[0], dtype), "b": make_array(concrete[1], dtype)}
    out = engine_check(net, feeds)["y"]
    if dtype.is_float:
        expected = np.matmul(feeds["a"].astype(np.float64), feeds["b"].astype(np.float64))
        close(out, expected, dtype)
    else:
        np.testing.assert_array_equal(out, np.matmul(feeds["a"].astype(np.int64), feeds["b"].astype(np.int64)).astype(dtype.numpy))


# ------------------------------------------------------------------------------------ activations
@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
def test_relu(dtype, make_array, engine_check):
    net = unary_network(F.relu, dtype, ("n", 7))
    x = make_array((3, 7), dtype)
    out = engine_check(net, {"x": x})["y"]
    np.testing.assert_array_equal(out.astype(np.float64), np.where(x.astype(np.float64) > 0, x.astype(np.float64), 0.0))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_silu(dtype, make_array, close, engine_check):
    x = make_array((4, 9), dtype, scale=4.0)
    out = engine_check(unary_network(F.silu, dtype, ("n", 9)), {"x": x})["y"]
    wide = x.astype(np.float64)
    close(out, wide / (1.0 + np.exp(-wide)), dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("opset", [17, 21], ids=lambda o: f"opset{o}")  # the Gelu op from 20, its formula before
def test_gelu(dtype, approximate, opset, make_array, close, engine_check):
    x = make_array((5, 8), dtype, scale=3.0)
    net = unary_network(F.gelu, dtype, (5, "d"), approximate=approximate)
    assert net.outputs["y"].producer.attrs == {"approximate": approximate}
    out = engine_check(net, {"x": x}, opset)["y"]
    w = x.astype(np.float64)
    if approximate == "none":
        expected = 0.5 * w * (1.0 + erf(w / math.sqrt(2.0)))
    else:
        expected = 0.5 * w * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (w + 0.044715 * w**3)))
    close(out, expected, dtype)


def test_activation_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"gelu 'g': approximate must be 'none' \(exact, erf\) or 'tanh', got 'fast'"):
        unary_network(F.gelu, gb.float32, (2,), approximate="fast", name="g")
    with pytest.raises(gb.GraphConstructionError, match=r"silu 's': the input must be one of float32, float16, bfloat16, got int32"):
        unary_network(F.silu, gb.int32, (2,), name="s")
    with pytest.raises(gb.GraphConstructionError, match=r"relu 'r': the input must be one of .*, got bool"):
        unary_network(F.relu, gb.dtypes.bool_, (2,), name="r")


# ------------------------------------------------------------------------------------ softmax
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(dtype, axis, make_array, close, engine_check):
    x = make_array((3, 4, 5), dtype, scale=3.0)
    net = unary_network(F.softmax, dtype, ("a", 4, "c"), axis=axis)
    assert net.outputs["y"].shape == ("a", 4, "c")
    out = engine_check(net, {"x": x})["y"]
    w = x.astype(np.float64)
    e = np.exp(w - w.max(axis=axis, keepdims=True))
    close(out, e / e.sum(axis=axis, keepdims=True), dtype)


def test_softmax_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"softmax 'sm': axis=3 is out of range for rank 2 \(valid: -2..1\)"):
        unary_network(F.softmax, gb.float32, (2, 3), axis=3, name="sm")
    with pytest.raises(gb.GraphConstructionError, match=r"softmax 'sm': the input must be one of float32, float16, bfloat16, got int64"):
        unary_network(F.softmax, gb.int64, (2, 3), name="sm")


# ------------------------------------------------------------------------------------ norms
def norm_network(fn, dtype, shape, with_bias, **kwargs):
    net = gb.Network("norm")
    with net:
        x = net.add_input("x", dtype, shape)
        w = net.add_input("w", dtype, (shape[-1],))
        args = [x, w] + ([net.add_input("b", dtype, (shape[-1],))] if with_bias else [])
        net.mark_output(fn(*args, **kwargs), "y")
    return net


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_layer_norm(dtype, with_bias, make_array, close, engine_check):
    net = norm_network(F.layer_norm, dtype, ("batch", "seq", 32), with_bias, eps=1e-3)
    assert net.outputs["y"].shape == ("batch", "seq", 32)
    feeds = {"x": make_array((2, 3, 32), dtype, scale=2.0) + dtype.numpy.type(0.5), "w": make_array((32,), dtype)}
    if with_bias:
        feeds["b"] = make_array((32,), dtype)
    out = engine_check(net, feeds)["y"]
    x, w = feeds["x"].astype(np.float64), feeds["w"].astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-3) * w + (feeds["b"].astype(np.float64) if with_bias else 0.0)
    close(out, expected, dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("opset", [17, 21], ids=lambda o: f"opset{o}")  # ReduceMean's axes: attribute, then input
def test_rms_norm(dtype, opset, make_array, close, engine_check):
    net = norm_network(F.rms_norm, dtype, ("tokens", 24), False, eps=1e-5)
    feeds = {"x": make_array((5, 24), dtype, scale=3.0), "w": make_array((24,), dtype)}
    out = engine_check(net, feeds, opset)["y"]
    x, w = feeds["x"].astype(np.float64), feeds["w"].astype(np.float64)
    close(out, x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-5) * w, dtype)


def test_norm_errors():
    net = gb.Network("norm")
    with net:
        x = net.add_input("x", "float16", ("n", "hidden"))
        wrong = net.add_input("wrong", "float16", (8,))
        other = net.add_input("other", "float32", ("hidden",))
        with pytest.raises(gb.GraphConstructionError, match=r"layer_norm 'ln': weight must have shape \(hidden,\) to match the last axis of input \(n, hidden\), got \(8,\)"):
            F.layer_norm(x, wrong, name="ln")
        with pytest.raises(gb.GraphConstructionError, match=r"rms_norm 'rms': the input and its weight/bias must share one dtype, got x float16, other float32"):
            F.rms_norm(x, other, name="rms")
        weight = net.add_input("weight", "float16", ("hidden",))
        with pytest.raises(gb.GraphConstructionError, match=r"rms_norm 'rms_1': eps must be a non-negative float, got -1 "):
            F.rms_norm(x, weight, eps=-1, name="rms_1")
