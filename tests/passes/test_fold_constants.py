"""ConstantFoldingPass: all-constant subgraphs become constants named like the values they replace."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference
from graphbuild.errors import ShapeInferenceError
from graphbuild.ops.registry import OpDef, TensorType, create_node, register
from graphbuild.passes import ConstantFoldingPass, verify_network


def _infer_same(node):
    x = node.inputs[0]
    return [TensorType(x.dtype, x.shape)]


# An op whose evaluator disagrees with its shape rule (a bug the pass must report, not hide).
register(OpDef("test_fold_bad_evaluator", infer=_infer_same, evaluate=lambda node, inputs: [inputs[0].astype(np.float64)]))


def test_constant_chain_folds_into_one_constant(rng):
    a = rng.standard_normal((2, 3)).astype(np.float32)
    net = gb.Network("fold")
    with net:
        x = net.add_input("x", "float32", (2, 3))
        w = gb.constant(a, name="w")
        scaled = F.mul(w, 3.0, name="scaled")
        shifted = F.sub(scaled, 1.0, name="shifted")
        net.mark_output(F.add(x, shifted, name="y"), "y")
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    expected = reference.run(net, feeds)["y"]

    result = ConstantFoldingPass()(net)
    assert result.modified
    assert result.stats == {"folded": 2, "constants_added": 1, "skipped_large": 0, "evaluation_failed": 0}
    assert [n.name for n in net.nodes] == ["y"]
    folded = net.constants["shifted"]
    assert net.find_node("y").inputs[1] is folded
    assert folded.uses == ((net.find_node("y"), 1),)
    np.testing.assert_array_equal(folded.const, a * np.float32(3) - np.float32(1))
    verify_network(net)
    np.testing.assert_array_equal(reference.run(net, feeds)["y"], expected)
    assert not ConstantFoldingPass()(net).modified


def test_graph_outputs_may_become_constants(rng):
    net = gb.Network("out")
    with net:
        x = net.add_input("x", "float32", (4,))
        c = gb.constant(rng.standard_normal(4).astype(np.float32), name="c")
        doubled = F.add(c, c, name="doubled")
        net.mark_output(doubled, "doubled")
        net.mark_output(F.mul(x, doubled, name="prod"), "prod")
    ConstantFoldingPass()(net)
    assert net.outputs["doubled"] is net.constants["doubled"]
    assert net.find_node("prod").inputs[1] is net.constants["doubled"]
    np.testing.assert_array_equal(net.outputs["doubled"].const, c.value.const * 2)
    verify_network(net)


def test_folded_values_read_twice_become_one_constant(rng):
    net = gb.Network("shared")
    with net:
        x = net.add_input("x", "float32", (3,))
        c = F.relu(gb.constant(rng.standard_normal(3).astype(np.float32)), name="c")
        out = F.add(F.mul(x, c, name="m"), F.add(c, 1.0, name="c1"), name="out")
        net.mark_output(out, "out")
    result = ConstantFoldingPass()(net)
    assert result.stats["folded"] == 2 and result.stats["constants_added"] == 2
    assert {n.name for n in net.nodes} == {"m", "out"}
    assert net.find_node("m").inputs[1] is net.constants["c"]
    assert net.find_node("out").inputs[1] is net.constants["c1"]
    verify_network(net)


def test_nothing_to_fold():
    net = gb.Network("none")
    with net:
        x = net.add_input("x", "float32", (3,))
        net.mark_output(F.relu(x), "y")
    result = ConstantFoldingPass()(net)
    assert not result.modified and result.stats["folded"] == 0


def test_non_foldable_ops_stay(rng):
    net = gb.Network("emb")
    with net:
        ids = gb.constant(np.array([1, 2], np.int64), name="ids")
        table = gb.constant(rng.standard_normal((4, 3)).astype(np.float32), name="table")
        net.mark_output(F.embedding(ids, table, name="wte"), "emb")
    assert not ConstantFoldingPass()(net).modified
    assert [n.op for n in net.nodes] == ["embedding"]


def test_large_outputs_are_not_folded(rng):
    net = gb.Network("large")
    with net:
        c = gb.constant(rng.standard_normal((8, 8)).astype(np.float32), name="c")
        net.mark_output(F.transpose(c, name="t"), "t")
    result = ConstantFoldingPass(max_elements=63)(net)
    assert not result.modified and result.stats["skipped_large"] == 1
    assert ConstantFoldingPass(max_elements=64)(net).modified


def test_evaluation_failures_are_left_for_run_time():
    net = gb.Network("div")
    with net:
        a = gb.constant(np.array([4, 5], np.int32), name="a")
        zero = gb.constant(np.array([2, 0], np.int32), name="zero")
        net.mark_output(F.div(a, zero, name="d"), "d")
    result = ConstantFoldingPass()(net)
    assert not result.modified and result.stats["evaluation_failed"] == 1
    assert "integer division by zero" in net.find_node("d").meta["fold_skipped"]


def test_an_evaluator_that_disagrees_with_its_shape_rule_is_reported(rng):
    net = gb.Network("bad")
    with net:
        c = gb.constant(rng.standard_normal(3).astype(np.float32), name="c")
        out = create_node(net, "test_fold_bad_evaluator", [c.value], name="bad").output
        net.mark_output(out, "out")
    with pytest.raises(ShapeInferenceError, match=r"test_fold_bad_evaluator 'bad': the evaluator returned float64\(3,\) for 'bad' float32\(3,\)"):
        ConstantFoldingPass()(net)
