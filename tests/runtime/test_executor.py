"""The local executor: rank-local builds, collectives, workspaces, feeds, providers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.runtime import default_providers
from graphbuild.sharding import shard_table


def rank_local_network(table: np.ndarray, tp_size: int, rank: int, sharding_dim: int, instance_id=None) -> gb.Network:
    net = gb.Network(f"local{rank}")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        shard = gb.constant(shard_table(table, tp_size, rank, sharding_dim), name="wte.weight")
        out = F.embedding(ids, shard, tp_size=tp_size, sharding_dim=sharding_dim, tp_rank=rank,
                          vocab_size=table.shape[0], embedding_dim=table.shape[1], instance_id=instance_id, name="wte")
        net.mark_output(out, "emb")
    return net


@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_rank_local_networks_build_into_one_engine(tmp_path, rng, sharding_dim):
    table = rng.standard_normal((11, 7)).astype(np.float32)
    nets = [rank_local_network(table, 3, r, sharding_dim) for r in (2, 0, 1)]  # any order
    engine = gb.build(nets, tmp_path / "e")
    ids = rng.integers(0, 11, size=9)
    np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])
    for outputs in gb.reference.run_ranks(sorted(nets, key=lambda n: n.name), {"ids": ids}):
        np.testing.assert_array_equal(outputs["emb"], table[ids])


def test_a_single_rank_local_network_is_refused_with_a_hint(tmp_path, rng):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    with pytest.raises(gb.PartitionError, match=r"rank 1 of a 2-rank group.*gb.build\(\[net_rank0, net_rank1"):
        gb.build(rank_local_network(table, 2, 1, 0), tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_rank_local_shard_of_the_wrong_size_is_refused(rng):
    net = gb.Network("bad")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        shard = gb.constant(rng.standard_normal((4, 4)).astype(np.float32))
        with pytest.raises(gb.GraphConstructionError, match=r"a vocab shard of 4 rows does not fit vocab_size=10 over tp_size=2 \(expected ceil\(10/2\) = 5 rows\)"):
            F.embedding(ids, shard, tp_size=2, tp_rank=0, vocab_size=10)


def test_symbolic_dims_must_agree_across_inputs(tmp_path, rng):
    net = gb.Network("two")
    with net:
        a = net.add_input("a", "int64", ("batch", "seq"))
        b = net.add_input("b", "int32", ("batch", 2))
        table = gb.constant(rng.standard_normal((5, 3)).astype(np.float32))
        net.mark_output(F.embedding(a, table), "ea")
        net.mark_output(F.embedding(b, table), "eb")
    engine = gb.build(net, tmp_path / "e")
    with pytest.raises(gb.InputError, match=r"symbolic dim 'batch' is 2 in input 'a' dim 0 but 3 in input 'b' dim 0"):
        engine.run({"a": np.zeros((2, 4), np.int64), "b": np.zeros((3, 2), np.int32)})
    with pytest.raises(gb.InputError, match=r"input 'b' dim 1 must be 2, got 5"):
        engine.run({"a": np.zeros((2, 4), np.int64), "b": np.zeros((2, 5), np.int32)})
    out = engine.run({"a": np.ones((2, 4), np.int64), "b": np.full((2, 2), 4, np.int32)})
    np.testing.assert_array_equal(out["eb"], np.broadcast_to(table.value.const[4], (2, 2, 3)))


def test_a_symbolic_dim_named_once_takes_any_size_and_equal_dtype_objects_are_accepted(tmp_path, rng):
    net = gb.Network("one")
    with net:
        ids = net.add_input("ids", "int64", ("batch", "seq"))
        table = gb.constant(rng.standard_normal((9, 3)).astype(np.float32))
        net.mark_output(F.embedding(ids, table), "emb")
    engine = gb.build(net, tmp_path / "e")
    for shape in [(1, 1), (3, 5), (5, 3), (1, 1)]:  # each size a new plan, then the first again
        feed = rng.integers(0, 9, size=shape)
        np.testing.assert_array_equal(engine.run({"ids": feed})["emb"], table.value.const[feed])
    # an int64 dtype that equals np.int64 without being numpy's own object takes the full check
    tagged = np.dtype(np.int64, metadata={"tag": 1})
    assert tagged == np.int64 and tagged is not np.dtype(np.int64)
    feed = np.array([[1, 8], [0, 4]], dtype=tagged)
    np.testing.assert_array_equal(engine.run({"ids": feed})["emb"], table.value.const[feed.astype(np.int64)])
    with pytest.raises(gb.InputError, match=r"input 'ids' must be int64, got int32"):
        engine.run({"ids": feed.astype(np.int32)})


def test_run_options_are_made_once_per_binding(tmp_path, rng):
    from graphbuild.runtime.session import binding_runner

    table = rng.standard_normal((6, 4)).astype(np.float32)
    net = gb.Network("r")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        net.mark_output(F.embedding(ids, gb.constant(table)), "emb")
    engine = gb.build(net, tmp_path / "e", providers=["CPUExecutionProvider"])
    engine.run({"ids": np.arange(3)})
    (plan,) = engine._executor._plans.values()
    (segment,) = plan.runs
    options = segment._call.args[-1]
    assert type(options).__name__ == "RunOptions"
    for ids in ([5, 0, 1], [2, 2, 4]):
        np.testing.assert_array_equal(engine.run({"ids": np.array(ids)})["emb"], table[ids])
    assert segment._call.args[-1] is options
    # the public method (an onnxruntime without the C++ entry point) gets the same options
    session, binding = segment.session, segment.binding
    run = binding_runner(type("Public", (), {"run_with_iobinding": session.run_with_iobinding})(), binding)
    run()
    assert type(run.args[-1]).__name__ == "RunOptions"


def test_workspace_receives_the_collective_result(tmp_path, rng):
    table = rng.standard_normal((12, 6)).astype(np.float32)
    net = gb.Network("ws")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        workspace = net.add_input("workspace", "float32", ("m",))
        weight = gb.constant(table, name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=2, workspace=workspace, name="wte"), "emb")
    engine = gb.build(net, tmp_path / "e")
    ids = np.array([1, 7, 11])
    buffer = np.zeros(64, np.float32)
    out = engine.run({"ids": ids, "workspace": buffer})["emb"]
    np.testing.assert_array_equal(out, table[ids])
    np.testing.assert_array_equal(buffer[:18].reshape(3, 6), table[ids]), "written in place"
    small = np.zeros(4, np.float32)
    np.testing.assert_array_equal(engine.run({"ids": ids, "workspace": small})["emb"], table[ids])


def test_bfloat16_through_segments_and_collectives(tmp_path, rng):
    table = rng.standard_normal((9, 5)).astype(ml_dtypes.bfloat16)
    net = gb.Network("bf16")
    with net:
        ids = net.add_input("ids", "int32", ("n",))
        net.mark_output(F.embedding(ids, gb.constant(table), tp_size=2, sharding_dim=1), "emb")
    out = gb.build(net, tmp_path / "e").run({"ids": np.array([0, 8, 3], np.int32)})["emb"]
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.view(np.uint16), table[[0, 8, 3]].view(np.uint16))


def test_providers(monkeypatch):
    assert default_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setenv("GRAPHBUILD_PROVIDERS", "CPUExecutionProvider")
    assert default_providers() == ["CPUExecutionProvider"]


def test_unknown_provider_is_a_configuration_error(tmp_path, rng):
    net = gb.Network("p")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        net.mark_output(F.embedding(ids, gb.constant(rng.standard_normal((3, 2)).astype(np.float32))), "e")
    gb.build(net, tmp_path / "e")
    with pytest.raises(gb.ConfigurationError, match=r"providers names 'NoSuchExecutionProvider', which this onnxruntime does not have"):
        gb.Engine.load(tmp_path / "e", providers=["NoSuchExecutionProvider"])


def test_rank_local_networks_must_agree_on_inputs_and_outputs(tmp_path, rng):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    nets = [rank_local_network(table, 2, r, 0) for r in range(2)]
    with nets[1]:
        nets[1].add_input("extra", "int64", ("n",))
    with pytest.raises(gb.GraphConstructionError, match=r"network 'local1' has inputs \{ids: int64 \(n,\), extra: int64 \(n,\)\} but network 'local0' has \{ids: int64 \(n,\)\}"):
        gb.build(nets, tmp_path / "e")
    assert not (tmp_path / "e").exists()
