"""The shared symbolic-dim rules of ``graphbuild.ops.common`` and the registry entries' shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphbuild.errors import ShapeInferenceError
from graphbuild.ops import registered_ops
from graphbuild.ops.common import broadcast_shapes, normalize_axes, normalize_axis

CORE_OPS = [
    "add", "sub", "mul", "div", "equal", "less", "where", "cast", "identity",
    "matmul", "relu", "silu", "gelu", "softmax", "layer_norm", "rms_norm",
    "reshape", "transpose", "concat", "split", "slice", "gather", "unsqueeze", "squeeze",
    "linear", "sqrt", "exp", "log", "tanh", "erf", "sigmoid", "absolute", "neg", "power", "maximum", "minimum",
    "reduce_sum", "reduce_mean", "reduce_max", "arange_like",
]  # fmt: skip

shapes = st.lists(st.integers(1, 4), max_size=4).map(tuple)


@given(st.lists(shapes, min_size=1, max_size=3))
def test_static_broadcasting_agrees_with_numpy(shape_list):
    try:
        expected = np.broadcast_shapes(*shape_list)
    except ValueError:
        with pytest.raises(ShapeInferenceError, match="cannot broadcast shapes"):
            broadcast_shapes(*shape_list)
    else:
        assert broadcast_shapes(*shape_list) == expected


@pytest.mark.parametrize(
    "shape_list,expected",
    [
        ([("n",), (1,)], ("n",)),
        ([("n",), ("n",)], ("n",)),
        ([("n",), (5,)], (5,)),
        ([(5,), ("n",)], (5,)),
        ([("a", 1, "c"), (1, "b", 1), (1,)], ("a", "b", "c")),
        ([("n", 1), (1, 1)], ("n", 1)),
    ],
)
def test_symbolic_broadcasting(shape_list, expected):
    assert broadcast_shapes(*shape_list) == expected


def test_symbolic_broadcasting_errors():
    with pytest.raises(ShapeInferenceError, match=r"cannot broadcast shapes \(a,\) and \(b,\): axis -1 has sizes 'a' and 'b'"):
        broadcast_shapes(("a",), ("b",))
    with pytest.raises(ShapeInferenceError, match=r"\(2, n\) and \(3, n\): axis -2 has sizes 2 and 3"):
        broadcast_shapes((2, "n"), (3, "n"))


def test_axis_normalization():
    assert normalize_axis(-1, 3) == 2 and normalize_axes((0, -1), 2) == (0, 1)
    with pytest.raises(ShapeInferenceError, match=r"axis=3 is out of range for rank 3 \(valid: -3..2\)"):
        normalize_axis(3, 3)
    with pytest.raises(ShapeInferenceError, match=r"axis must be an int, got True"):
        normalize_axis(True, 3)
    with pytest.raises(ShapeInferenceError, match=r"axes \[1, -1\] names an axis twice"):
        normalize_axes([1, -1], 2)


@pytest.mark.parametrize("op", CORE_OPS)
def test_every_core_op_is_complete(op):
    opdef = registered_ops()[op]
    assert opdef.infer and opdef.evaluate and opdef.lower, f"{op} lacks a rule, an evaluator or a lowering"
    assert opdef.domain == "" and not opdef.collective and opdef.foldable and opdef.doc
