"""ShapeInferencePass: re-runs shape rules, updates stale types, reports outputs, honours pins."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.errors import PassError, ShapeInferenceError
from graphbuild.passes import PassManager, ShapeInferencePass


def network() -> gb.Network:
    net = gb.Network("shapes")
    with net:
        x = net.add_input("x", "float32", ("n", 4))
        bias = gb.constant(np.arange(4, dtype=np.float32), name="bias")
        hidden = F.add(x, bias, name="hidden")
        net.mark_output(F.relu(hidden, name="act"), "y")
    return net


def test_fresh_network_is_unchanged():
    net = network()
    result = ShapeInferencePass()(net)
    assert not result.modified
    assert result.stats == {"nodes_checked": 2, "types_changed": 0, "outputs_changed": []}


def test_specialised_input_shape_flows_downstream():
    net = network()
    net.inputs["x"].shape = (3, 4)
    result = ShapeInferencePass()(net)
    assert result.modified
    assert [v.shape for n in net.nodes for v in n.outputs] == [(3, 4), (3, 4)]
    assert result.stats["types_changed"] == 2
    assert result.stats["outputs_changed"] == ["y: float32(n, 4) -> float32(3, 4)"]
    assert not ShapeInferencePass()(net).modified


def test_a_rule_that_now_fails_names_the_node():
    net = network()
    net.inputs["x"].dtype = gb.float16
    with pytest.raises(ShapeInferenceError, match=r"add 'hidden': operands must share one dtype, got x float16, bias float32.*created at test_infer_shapes.py"):
        ShapeInferencePass()(net)
    with pytest.raises(PassError, match=r"pass 'infer_shapes' failed after \[\]: add 'hidden'"):
        PassManager([ShapeInferencePass()]).run(net)


def test_pinned_types_conflict_clearly():
    net = network()
    act = net.find_node("act")
    act.meta["declared_types"] = [("float32", ("n", 4))]
    assert not ShapeInferencePass()(net).modified
    net.inputs["x"].shape = (3, 4)
    with pytest.raises(
        ShapeInferenceError,
        match=r"relu 'act': output 0 'act' is pinned to float32\(n, 4\) \(node.meta\['declared_types'\]\) but its shape rule infers float32\(3, 4\)",
    ):
        ShapeInferencePass()(net)


def test_unpinned_outputs_take_what_inference_says():
    net = network()
    net.find_node("act").meta["declared_types"] = [None]
    net.inputs["x"].shape = ("batch", 4)
    result = ShapeInferencePass()(net)
    assert result.stats["outputs_changed"] == ["y: float32(n, 4) -> float32(batch, 4)"]
    assert net.outputs["y"].shape == ("batch", 4)
