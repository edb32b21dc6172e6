"""Math, reduction, ``linear`` and ``arange_like`` ops: shape rules, evaluators vs float64 numpy
formulas, and ONNX Runtime vs the evaluator across dtypes and opsets."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F

FLOATS = [gb.float32, gb.float16, gb.bfloat16]
NUMERIC = FLOATS + [gb.int32, gb.int64]
erf = np.vectorize(math.erf, otypes=[np.float64])

UNARY = {
    "sqrt": (F.sqrt, np.sqrt, "positive"),
    "exp": (F.exp, np.exp, "any"),
    "log": (F.log, np.log, "positive"),
    "tanh": (F.tanh, np.tanh, "any"),
    "erf": (F.erf, erf, "any"),
    "sigmoid": (F.sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x)), "any"),
}


def network(fn, dtypes_shapes, **kwargs):
    net = gb.Network("op")
    with net:
        args = [net.add_input(f"x{i}", dtype, shape) for i, (dtype, shape) in enumerate(dtypes_shapes)]
        net.mark_output(fn(*args, **kwargs), "y")
    return net


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("op", sorted(UNARY))
def test_float_unary(op, dtype, make_array, close, engine_check):
    fn, formula, domain = UNARY[op]
    x = make_array((3, 7), dtype, scale=2.0)
    if domain == "positive":
        x = np.abs(x) + dtype.numpy.type(0.25)
    out = engine_check(network(fn, [(dtype, ("n", 7))]), {"x0": x}, 17 if dtype == gb.float32 else 21)["y"]
    close(out, formula(x.astype(np.float64)), dtype)


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
def test_absolute_and_neg_are_exact(dtype, make_array, engine_check):
    x = make_array((4, 5), dtype)
    for fn, formula in ((F.absolute, np.abs), (F.neg, np.negative)):
        out = engine_check(network(fn, [(dtype, (4, 5))]), {"x0": x})["y"]
        np.testing.assert_array_equal(out, formula(x))


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
def test_maximum_minimum_broadcast(dtype, make_array, engine_check):
    a, b = make_array((2, 3, 4), dtype), make_array((3, 1), dtype)
    for fn, formula in ((F.maximum, np.maximum), (F.minimum, np.minimum)):
        net = network(fn, [(dtype, ("b", 3, 4)), (dtype, (3, 1))])
        assert net.outputs["y"].shape == ("b", 3, 4)
        out = engine_check(net, {"x0": a, "x1": b})["y"]
        np.testing.assert_array_equal(out, formula(a, b))


def test_maximum_with_a_scalar(rng):
    net = gb.Network("op")
    with net:
        x = net.add_input("x", "float32", (5,))
        net.mark_output(F.maximum(x, 1e-3), "y")
    x_np = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_array_equal(gb.reference.run(net, {"x": x_np})["y"], np.maximum(x_np, np.float32(1e-3)))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_power(dtype, make_array, close, engine_check):
    base = np.abs(make_array((3, 4), dtype)) + dtype.numpy.type(0.5)
    exponent = make_array((4,), dtype)
    out = engine_check(network(F.power, [(dtype, (3, 4)), (dtype, (4,))]), {"x0": base, "x1": exponent})["y"]
    close(out, np.power(base.astype(np.float64), exponent.astype(np.float64)), dtype)


def test_elementwise_math_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"sqrt 's': the input must be one of float32, float16, bfloat16, got int64"):
        network(F.sqrt, [(gb.int64, (2,))], name="s")
    with pytest.raises(gb.GraphConstructionError, match=r"maximum 'm': operands must share one dtype"):
        network(F.maximum, [(gb.float32, (2,)), (gb.float16, (2,))], name="m")
    with pytest.raises(gb.GraphConstructionError, match=r"power 'p': the input|power 'p': operands must be one of float32"):
        network(F.power, [(gb.int32, (2,)), (gb.int32, (2,))], name="p")


# ------------------------------------------------------------------------------------ reductions
REDUCTIONS = {"reduce_sum": (F.reduce_sum, np.sum), "reduce_mean": (F.reduce_mean, np.mean), "reduce_max": (F.reduce_max, np.max)}


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@pytest.mark.parametrize("axes, keepdims, shape", [(-1, False, ("b", "s")), ((0, 2), True, (1, "s", 1)), (None, False, ())])
@pytest.mark.parametrize("opset", [17, 18, 21], ids=lambda o: f"opset{o}")  # axes: attribute, then input
def test_reductions_float32(op, axes, keepdims, shape, opset, make_array, close, engine_check):
    fn, formula = REDUCTIONS[op]
    net = network(fn, [(gb.float32, ("b", "s", 6))], axes=axes, keepdims=keepdims)
    assert net.outputs["y"].shape == shape
    x = make_array((2, 3, 6), gb.float32)
    out = engine_check(net, {"x0": x}, opset)["y"]
    close(out, formula(x.astype(np.float64), axis=axes, keepdims=keepdims), gb.float32)


@pytest.mark.parametrize("dtype", [gb.float16, gb.bfloat16, gb.int32, gb.int64], ids=str)
def test_reductions_other_dtypes(dtype, make_array, close, engine_check):
    x = make_array((3, 5), dtype)
    for op, (fn, formula) in REDUCTIONS.items():
        if op == "reduce_mean" and not dtype.is_float:
            continue
        out = engine_check(network(fn, [(dtype, (3, 5))], axes=1), {"x0": x})["y"]
        expected = formula(x.astype(np.float64), axis=1)
        if dtype.is_float:
            close(out, expected, dtype)
        else:
            np.testing.assert_array_equal(out, expected.astype(dtype.numpy))


def test_reduction_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"reduce_mean 'r': the input must be one of float32, float16, bfloat16, got int32"):
        network(F.reduce_mean, [(gb.int32, (2, 3))], axes=0, name="r")
    with pytest.raises(gb.GraphConstructionError, match=r"reduce_sum 'r': axes entry=2 is out of range for rank 2"):
        network(F.reduce_sum, [(gb.float32, (2, 3))], axes=2, name="r")
    with pytest.raises(gb.GraphConstructionError, match=r"reduce_sum 'r': axes \[0, -2\] names an axis twice"):
        network(F.reduce_sum, [(gb.float32, (2, 3))], axes=[0, -2], name="r")


# ------------------------------------------------------------------------------------ linear, matmul transposes
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear(dtype, with_bias, make_array, close, engine_check):
    specs = [(dtype, ("b", "s", 8)), (dtype, (5, 8))] + ([(dtype, (5,))] if with_bias else [])
    net = network(F.linear, specs)
    assert net.outputs["y"].shape == ("b", "s", 5)
    feeds = {"x0": make_array((2, 3, 8), dtype), "x1": make_array((5, 8), dtype)}
    if with_bias:
        feeds["x2"] = make_array((5,), dtype)
    out = engine_check(net, feeds)["y"]
    expected = feeds["x0"].astype(np.float64) @ feeds["x1"].astype(np.float64).T
    if with_bias:
        expected = expected + feeds["x2"].astype(np.float64)
    close(out, expected, dtype)


def test_linear_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"linear 'fc': weight \(8, 5\) has in_features 5, but the input \(2, 8\) has 8"):
        network(F.linear, [(gb.float32, (2, 8)), (gb.float32, (8, 5))], name="fc")
    with pytest.raises(gb.GraphConstructionError, match=r"linear 'fc': bias must have shape \(5,\) \(out_features\), got \(8,\)"):
        network(F.linear, [(gb.float32, (2, 8)), (gb.float32, (5, 8)), (gb.float32, (8,))], name="fc")


def test_matmul_transposes(make_array, close, engine_check):
    net = network(lambda a, b: F.matmul(a, b, transpose_a=True, transpose_b=True), [(gb.float32, ("b", 4, 3)), (gb.float32, ("b", 5, 4))])
    assert net.outputs["y"].shape == ("b", 3, 5)
    a, b = make_array((2, 4, 3), gb.float32), make_array((2, 5, 4), gb.float32)
    out = engine_check(net, {"x0": a, "x1": b})["y"]
    close(out, np.swapaxes(a, -1, -2).astype(np.float64) @ np.swapaxes(b, -1, -2).astype(np.float64), gb.float32)
    with pytest.raises(gb.GraphConstructionError, match=r"matmul 'mm': transpose_b needs an operand of at least 2 dims"):
        network(lambda a, b: F.matmul(a, b, transpose_b=True, name="mm"), [(gb.float32, (3, 4)), (gb.float32, (4,))])


# ------------------------------------------------------------------------------------ arange_like
@pytest.mark.parametrize("dtype", ["int64", "int32"])
@pytest.mark.parametrize("opset", [17, 21], ids=lambda o: f"opset{o}")
def test_arange_like_symbolic_and_static(dtype, opset, make_array, engine_check):
    net = gb.Network("op")
    with net:
        x = net.add_input("x", "float32", ("batch", "seq", 4))
        net.mark_output(F.arange_like(x, 1, dtype=dtype), "positions")
        net.mark_output(F.arange_like(x, -1, dtype=dtype), "columns")
    assert net.outputs["positions"].shape == ("seq",)
    out = engine_check(net, {"x": make_array((2, 5, 4), gb.float32)}, opset)
    np.testing.assert_array_equal(out["positions"], np.arange(5, dtype=dtype))
    np.testing.assert_array_equal(out["columns"], np.arange(4, dtype=dtype))


def test_arange_like_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"arange_like 'a': dtype must be int32 or int64, got float32"):
        network(lambda x: F.arange_like(x, 0, dtype="float32", name="a"), [(gb.float32, (3,))])
    with pytest.raises(gb.GraphConstructionError, match=r"arange_like 'a': axis=1 is out of range for rank 1"):
        network(lambda x: F.arange_like(x, 1, name="a"), [(gb.float32, (3,))])
