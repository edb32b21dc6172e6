"""The public functional API: documented, no builtin-shadowing names, node names honoured."""

from __future__ import annotations

import builtins
import inspect

import pytest

import graphbuild as gb
from graphbuild import functional as F

CORE = [
    "add", "sub", "mul", "div", "equal", "less", "where", "cast", "identity",
    "matmul", "relu", "silu", "gelu", "softmax", "layer_norm", "rms_norm",
    "reshape", "transpose", "concat", "split", "slice_tensor", "gather", "unsqueeze", "squeeze",
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
