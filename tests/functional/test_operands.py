"""Python scalars as operands, and the ``Tensor`` operators that build ops."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference


@pytest.fixture
def net():
    network = gb.Network("operands")
    with network:
        yield network


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "int64"])
def test_scalars_take_the_tensor_dtype(net, dtype, rng):
    x = net.add_input("x", dtype, ("n",))
    y = 3 - x * 2 + 1
    assert y.dtype.name == dtype and y.shape == ("n",)
    constants = list(net.constants.values())
    assert len(constants) == 3 and all(c.dtype.name == dtype and c.shape == () for c in constants)
    net.mark_output(y, "y")
    data = rng.integers(-9, 9, size=5).astype(gb.dtypes.as_dtype(dtype).numpy)
    expected = 3 - data.astype(np.float64) * 2 + 1
    np.testing.assert_array_equal(reference.run(net, {"x": data})["y"].astype(np.float64), expected)


def test_operators_build_the_documented_ops(net):
    a = net.add_input("a", "float32", (2, 3))
    b = net.add_input("b", "float32", (3, 4))
    assert (a @ b).value.producer.op == "matmul"
    assert (a / 2).value.producer.op == "div" and (2 / a).value.producer.inputs[1] is a.value
    assert (-a).value.producer.op == "mul"
    assert a.cast("float16").dtype is gb.float16
    assert a.reshape(3, 2).shape == (3, 2) and a.reshape((6,)).shape == (6,)
    assert a.transpose().shape == (3, 2)


def test_bool_scalars_only_with_bool_tensors(net):
    flags = net.add_input("flags", "bool", (2,))
    assert F.equal(flags, True).dtype == gb.dtypes.bool_
    x = net.add_input("x", "float32", (2,))
    with pytest.raises(gb.GraphConstructionError, match=r"add: scalar True does not fit float32, the dtype of the other operand 'x' float32\(2,\)"):
        F.add(x, True)


@pytest.mark.parametrize(
    "dtype,scalar",
    [("int32", 0.5), ("int32", 2**31), ("int64", 2**63), ("float16", 1e6), ("bfloat16", 1e39), ("float32", 10**400)],
)
def test_scalars_that_do_not_fit(net, dtype, scalar):
    x = net.add_input("x", dtype, (2,))
    with pytest.raises(gb.GraphConstructionError, match=rf"mul: scalar .* does not fit {dtype}, the dtype of the other operand 'x'"):
        F.mul(x, scalar)


def test_inexact_float_scalars_round(net):
    x = net.add_input("x", "float16", (2,))
    y = F.add(x, 0.1)
    constant = y.value.producer.inputs[1].const
    assert constant.dtype == np.float16 and constant == np.float16(0.1)
    assert F.mul(x, float("inf")).dtype is gb.float16


def test_operand_errors(net):
    x = net.add_input("x", "float32", (2,))
    with pytest.raises(gb.GraphConstructionError, match=r"add: at least one operand must be a Tensor, got int, float"):
        F.add(1, 2.0)
    with pytest.raises(gb.GraphConstructionError, match=r"sub: expected a Tensor or a real scalar, got str"):
        F.sub(x, "1")
    with pytest.raises(gb.GraphConstructionError, match=r"expected a graphbuild Tensor, got list"):
        F.matmul(x, [1.0, 2.0])


def test_where_with_a_scalar_branch(net, rng):
    x = net.add_input("x", "bfloat16", ("n",))
    y = F.where(F.less(x, 0.0), 0.0, x, name="clamp")
    assert y.dtype is gb.bfloat16 and y.name == "clamp"
    net.mark_output(y, "y")
    data = rng.standard_normal(6).astype(gb.bfloat16.numpy)
    np.testing.assert_array_equal(reference.run(net, {"x": data})["y"], np.maximum(data, 0))
