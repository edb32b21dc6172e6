"""Pass infrastructure: Pass, PassResult, PassManager (errors, verify_each, fixed point, stats)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.errors import PassError, ShapeInferenceError, VerificationError
from graphbuild.passes import (
    ConstantFoldingPass,
    DeadCodeEliminationPass,
    Pass,
    PassManager,
    PassResult,
    ShapeInferencePass,
    VerifyPass,
    default_pipeline,
)


def small_network() -> gb.Network:
    net = gb.Network("small")
    with net:
        x = net.add_input("x", "float32", ("n", 4))
        net.mark_output(F.add(x, 1.0, name="y"), "y")
    return net


class CountdownPass(Pass):
    """Reports a change ``times`` times, then none."""

    name = "countdown"

    def __init__(self, times: int) -> None:
        self.left = times

    def call(self, net):
        self.left -= 1
        return PassResult(net, self.left >= 0, {"calls": 1, "seen": [self.left]})


class FailingPass(Pass):
    def call(self, net):
        raise ShapeInferenceError("add 'y': operands must share one dtype")


class BreakUseListPass(Pass):
    name = "break_uses"

    def call(self, net):
        node = net.nodes[0]
        node.inputs[0]._uses.clear()  # corrupt on purpose
        return PassResult(net, True)


def test_pass_result_is_frozen():
    result = PassResult(small_network(), False)
    assert result.stats == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.modified = True  # type: ignore[misc]


def test_pass_names_default_to_snake_case_and_can_be_set():
    assert FailingPass.name == "failing"
    assert BreakUseListPass.name == "break_uses"
    assert [p.name for p in default_pipeline().passes] == ["verify", "infer_shapes", "fold_constants", "eliminate_dead_code"]
    assert [type(p) for p in default_pipeline().passes] == [VerifyPass, ShapeInferencePass, ConstantFoldingPass, DeadCodeEliminationPass]


def test_requires_and_ensures_run_around_call():
    calls = []

    class CheckedPass(Pass):
        def requires(self, net):
            calls.append("requires")

        def call(self, net):
            calls.append("call")
            return PassResult(net, False)

        def ensures(self, net):
            calls.append("ensures")
            raise VerificationError("ensures: something is off")

    with pytest.raises(VerificationError, match="something is off"):
        CheckedPass()(small_network())
    assert calls == ["requires", "call", "ensures"]


def test_a_pass_must_return_a_pass_result():
    class SloppyPass(Pass):
        def call(self, net):
            return net

    with pytest.raises(PassError, match=r"pass 'sloppy' returned Network; call\(net\) must return a PassResult"):
        SloppyPass()(small_network())


def test_manager_names_the_failing_pass_and_those_before_it():
    manager = PassManager([VerifyPass(), ShapeInferencePass(), FailingPass(), DeadCodeEliminationPass()])
    with pytest.raises(PassError, match=r"^pass 'failing' failed after \[verify, infer_shapes\]: add 'y': operands must share one dtype$") as info:
        manager.run(small_network())
    assert isinstance(info.value.__cause__, ShapeInferenceError)


def test_verify_each_names_the_pass_that_broke_an_invariant():
    manager = PassManager([ShapeInferencePass(), BreakUseListPass(), DeadCodeEliminationPass()], verify_each=True)
    with pytest.raises(PassError, match=r"(?s)pass 'break_uses' broke an IR invariant \(passes run: \[infer_shapes, break_uses\]\).*use list misses it") as info:
        manager.run(small_network())
    assert isinstance(info.value.__cause__, VerificationError)
    # without verify_each, the corruption goes unnoticed by the manager
    assert PassManager([BreakUseListPass()]).run(small_network()).modified


def test_verify_each_checks_the_input_before_blaming_a_pass():
    net = small_network()
    net.nodes[0].name = "renamed_behind_the_namespace"
    with pytest.raises(PassError, match="(?s)the input network fails verification before any pass ran: .*not registered in net.node_names"):
        PassManager([ShapeInferencePass()], verify_each=True).run(net)


def test_stats_are_aggregated_per_pass_name():
    result = PassManager([CountdownPass(2), VerifyPass()], fixed_point=True).run(small_network())
    assert result.modified
    assert result.stats["countdown"] == {"calls": 3, "seen": [1, 0, -1]}
    assert result.stats["verify"] == {"nodes": 3}
    assert result.stats["pass_manager"] == {"iterations": 3, "converged": True}


def test_fixed_point_is_bounded():
    result = PassManager([CountdownPass(100)], fixed_point=True, max_iterations=4).run(small_network())
    assert result.stats["pass_manager"] == {"iterations": 4, "converged": False}
    assert result.stats["countdown"]["calls"] == 4


def test_without_fixed_point_the_list_runs_once():
    result = PassManager([CountdownPass(5)]).run(small_network())
    assert result.modified and result.stats["countdown"]["calls"] == 1


def test_manager_rejects_classes_and_bad_bounds():
    with pytest.raises(PassError, match="expects Pass instances, got <class .*VerifyPass'>; did you pass the class"):
        PassManager([VerifyPass])  # type: ignore[list-item]
    with pytest.raises(PassError, match="max_iterations must be at least 1, got 0"):
        PassManager([], max_iterations=0)


def test_default_pipeline_verifies_folds_and_cleans(rng):
    net = gb.Network("pipeline")
    with net:
        x = net.add_input("x", "float32", ("n", 3))
        bias = gb.constant(rng.standard_normal(3).astype(np.float32), name="bias")
        scaled = F.mul(bias, 2.0, name="scaled")  # folds
        F.relu(x, name="dead")  # removed
        net.mark_output(F.add(x, scaled, name="y"), "y")
    result = default_pipeline(verify_each=True).run(net)
    assert result.modified
    assert [n.op for n in net.nodes] == ["add"]
    assert result.stats["fold_constants"]["folded"] == 1
    assert result.stats["eliminate_dead_code"]["removed_nodes"] == 1
    assert set(net.constants) == {"scaled"}
    np.testing.assert_array_equal(net.constants["scaled"].const, bias.value.const * 2)
    again = default_pipeline(verify_each=True).run(net)
    assert not again.modified


# ----------------------------------------------------------------------------- nesting and phases


class CopyingPass(Pass):
    """Returns a copy instead of editing in place."""

    in_place = False

    def call(self, net):
        return PassResult(net.copy(), False)


def test_pass_managers_nest_and_say_whether_they_work_in_place():
    inner = PassManager([CountdownPass(1), DeadCodeEliminationPass()], name="inner")
    assert isinstance(inner, Pass) and inner.name == "inner" and inner.in_place
    outer = PassManager([VerifyPass(), inner, CopyingPass()])
    assert not outer.in_place, "one pass that returns a new network makes the pipeline not in place"
    net = small_network()
    result = outer.run(net)
    assert result.network is not net and [n.name for n in result.network.nodes] == ["y"]
    assert result.stats["inner"]["countdown"] == {"calls": 1, "seen": [0]}
    assert set(outer.seconds) == {"verify", "countdown", "eliminate_dead_code", "copying"}


def test_a_failure_inside_a_nested_manager_names_both():
    outer = PassManager([VerifyPass(), PassManager([FailingPass()], name="inner")])
    with pytest.raises(PassError, match=r"pass 'inner' failed after \[verify\]: pass 'failing' failed after \[\]"):
        outer.run(small_network())


def test_phases_run_in_order_and_time_each():
    from graphbuild.passes import Phase, Phases

    @dataclasses.dataclass
    class State:
        networks: list
        log: list

    runner = Phases([Phase("first", lambda s: s.log.append("first")), Phase("optimize", passes=default_pipeline(), report_passes=True), Phase("last", lambda s: s.log.append("last"))])
    state = runner.run(State([small_network(), small_network()], []))
    assert state.log == ["first", "last"] and runner.names == ["first", "optimize", "last"]
    assert set(runner.seconds) == {"first", "verify", "infer_shapes", "fold_constants", "eliminate_dead_code", "last"}


def test_build_reports_its_phases(tmp_path):
    from graphbuild.build import compile_engine, phases

    compiled = compile_engine(small_network())
    assert phases().names == ["copy", "optimize", "partition", "rank_dce", "segment", "lower_onnx"]
    assert set(compiled.phase_times) == {"copy", "verify", "infer_shapes", "fold_constants", "eliminate_dead_code", "partition", "rank_dce", "segment", "lower_onnx"}
    timings: dict = {}
    gb.build(small_network(), tmp_path / "e", timings=timings)
    assert set(timings) == set(compiled.phase_times) | {"write", "load"}
