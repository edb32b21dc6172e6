"""The lean executor: plans cached per input shapes, reused buffers, the output policy, ORT collectives."""

from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest

import graphbuild as gb
from graphbuild import dtypes
from graphbuild import functional as F
from graphbuild.runtime.collectives import CollectiveRun, HostCopy, SessionCache
from graphbuild.runtime import plan as plan_module
from graphbuild.runtime.plan import SegmentRun
from graphbuild.runtime.schedule import CollectiveStep, combine_host
from graphbuild.runtime.ortvalues import allocate, host_view

CPU = ["CPUExecutionProvider"]


def norm_engine(tmp_path, table, tp_size, sharding_dim, *, use_plugin=True):
    """embedding (tp) -> rms_norm: two segments per rank around one collective."""
    net = gb.Network("norm")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        emb = F.embedding(ids, gb.constant(table, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte")
        net.mark_output(emb, "emb")
        net.mark_output(F.rms_norm(emb, gb.constant(np.full(table.shape[1], 2.0, table.dtype))), "normed")
    return gb.build(net, tmp_path / f"e{tp_size}{sharding_dim}{use_plugin}", providers=CPU, use_plugin=use_plugin)


def rms_norm(x, weight, eps=1e-6):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (2, 0), (3, 1)])
def test_results_survive_later_calls_and_plans_are_reused(tmp_path, rng, tp_size, sharding_dim):
    table = rng.standard_normal((13, 6)).astype(np.float32)
    engine = norm_engine(tmp_path, table, tp_size, sharding_dim)
    first_ids, second_ids = rng.integers(0, 13, size=5), rng.integers(0, 13, size=5)
    first = engine.run({"ids": first_ids})
    plan = next(iter(engine._executor._plans.values()))
    buffers = [v.data_ptr() for run in plan.runs for v in getattr(run, "outputs", [])]
    second = engine.run({"ids": second_ids})
    np.testing.assert_array_equal(first["emb"], table[first_ids])  # not overwritten by the second call
    np.testing.assert_array_equal(second["emb"], table[second_ids])
    np.testing.assert_allclose(second["normed"], rms_norm(table[second_ids], 2.0), rtol=1e-5)
    assert engine._executor.plans == 1
    assert [v.data_ptr() for run in plan.runs for v in getattr(run, "outputs", [])] == buffers, "buffers are reused, not reallocated"
    assert all(v.device_name().lower() == "cpu" for run in plan.runs for v in getattr(run, "outputs", []))
    engine.run({"ids": rng.integers(0, 13, size=9)})
    assert engine._executor.plans == 2


def test_plans_are_bounded_least_recently_used_first(tmp_path, rng):
    table = rng.standard_normal((9, 4)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 2, 0)
    engine._executor._max_plans = 2
    for n in (1, 2, 3, 2):
        ids = rng.integers(0, 9, size=n)
        np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])
    assert [key[0] for key in engine._executor._plans] == [(3,), (2,)]


def test_out_receives_outputs_in_place(tmp_path, rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 2, 1)
    ids = rng.integers(0, 10, size=7)
    target = np.full((7, 4), np.nan, np.float32)
    result = engine.run({"ids": ids}, out={"emb": target})
    assert result["emb"] is target
    np.testing.assert_array_equal(target, table[ids])
    np.testing.assert_allclose(result["normed"], rms_norm(table[ids], 2.0), rtol=1e-5)
    with pytest.raises(gb.InputError, match=r"out\['emb'\] must be a writable numpy array of float32\(7, 4\), got float32\(7, 5\)"):
        engine.run({"ids": ids}, out={"emb": np.zeros((7, 5), np.float32)})
    with pytest.raises(gb.InputError, match=r"out names unknown output\(s\) \['nope'\]"):
        engine.run({"ids": ids}, out={"nope": target})


@pytest.mark.parametrize("use_plugin", [True, False])
def test_an_error_leaves_the_engine_usable(tmp_path, rng, use_plugin):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 2, 0, use_plugin=use_plugin)
    with pytest.raises(gb.OutOfRangeIdError, match=r"id 8 at flat position 1"):
        engine.run({"ids": np.array([0, 8, 1])})  # the first call with these shapes
    assert engine._executor.plans == 0, "a plan that failed while being made is not kept"
    ids = np.array([3, 7, 0])
    np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])
    with pytest.raises(gb.OutOfRangeIdError, match=r"id -1 at flat position 2"):
        engine.run({"ids": np.array([1, 2, -1])})  # the cached plan
    np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])


def test_many_segments_match_the_reference(tmp_path, rng):
    net = gb.Network("stack")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        x = net.add_input("x", "float32", ("n", 6))
        for b in range(3):
            ids_b = F.where(F.less(x[:, 0], 0.0), ids, ids)
            table = gb.constant(rng.standard_normal((11, 6)).astype(np.float32))
            x = F.relu(x + F.embedding(ids_b, table, tp_size=2, sharding_dim=b % 2)) * 0.5
        net.mark_output(x, "y")
    engine = gb.build(net, tmp_path / "stack", providers=CPU)
    steps = engine.manifest.ranks[0].steps
    assert [s.kind for s in steps] == ["segment", "collective"] * 3 + ["segment"]
    for _ in range(2):
        feeds = {"ids": rng.integers(0, 11, size=4), "x": rng.standard_normal((4, 6)).astype(np.float32)}
        np.testing.assert_allclose(engine.run(feeds)["y"], gb.reference.run(net, feeds)["y"], rtol=1e-6)


def test_concurrent_calls_are_serialized(tmp_path, rng):
    table = rng.standard_normal((50, 8)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 2, 0)
    batches = [rng.integers(0, 50, size=6) for _ in range(8)]
    failures = []

    def worker(ids):
        for _ in range(20):
            if not np.array_equal(engine.run({"ids": ids})["emb"], table[ids]):
                failures.append(ids)

    threads = [threading.Thread(target=worker, args=(ids,)) for ids in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def _ortvalues(arrays):
    values = []
    for array in arrays:
        value = allocate(array.shape, dtypes.as_dtype(array.dtype), "cpu")
        value.update_inplace(array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array)
        values.append(value)
    return values


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int32, np.int64, np.bool_])
def test_allreduce_model_sums_in_rank_order_like_numpy(rng, dtype):
    arrays = [(rng.standard_normal((4, 5)) * 50).astype(dtype) for _ in range(3)]
    expected = arrays[0].copy()
    for array in arrays[1:]:
        expected = (expected + array).astype(dtype)  # numpy rounds after every addition
    spec = CollectiveStep("allreduce", "ar", 0, (0, 1, 2), "x", "y")
    run = CollectiveRun(spec, _ortvalues(arrays), SessionCache(CPU, 1), "cpu")
    run.run()
    result = host_view(run.output)
    assert result.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result.view(np.uint8), expected.view(np.uint8))


def test_allgather_model_concatenates_uneven_parts(rng):
    arrays = [rng.standard_normal((2, 3, width)).astype(np.float16) for width in (3, 2, 2)]
    spec = CollectiveStep("allgather", "ag", 0, (0, 1, 2), "x", "y", axis=-1, sizes=(3, 2, 2))
    run = CollectiveRun(spec, _ortvalues(arrays), SessionCache(CPU, 1), "cpu")
    run.run()
    np.testing.assert_array_equal(host_view(run.output), np.concatenate(arrays, axis=-1))
    bad = CollectiveStep("allgather", "ag", 0, (0, 1, 2), "x", "y", axis=-1, sizes=(2, 2, 3))
    with pytest.raises(gb.ExecutionError, match=r"allgather 'ag': ranks contributed sizes \[3, 2, 2\] along axis 2, expected \[2, 2, 3\]"):
        CollectiveRun(bad, _ortvalues(arrays), SessionCache(CPU, 1), "cpu")


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.bool_])
def test_host_copy_returns_fresh_arrays(rng, dtype):
    array = (rng.standard_normal((3, 4)) * 4).astype(dtype)
    (value,) = _ortvalues([array])
    copy = HostCopy(value, SessionCache(CPU, 1))
    first = copy.run()
    np.testing.assert_array_equal(first.view(np.uint8), array.view(np.uint8))
    out = np.empty_like(array)
    assert copy.run(out) is out
    np.testing.assert_array_equal(out.view(np.uint8), array.view(np.uint8))
    assert first.ctypes.data != value.data_ptr()


def test_segment_runs_bind_device_buffers_once(tmp_path, rng):
    table = rng.standard_normal((6, 4)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 2, 0)
    engine.run({"ids": np.array([1, 5])})
    plan = next(iter(engine._executor._plans.values()))
    segments = [run for run in plan.runs if isinstance(run, SegmentRun)]
    collectives = [run for run in plan.runs if isinstance(run, CollectiveRun)]
    assert len(segments) == 4 and len(collectives) == 1
    # the second segment of each rank reads the collective's one result buffer
    assert all(any(v is collectives[0].output for v in run.inputs) for run in segments[2:])
    assert isinstance(collectives[0].session, ort.InferenceSession)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.bool_])
@pytest.mark.parametrize("op", ["allreduce", "allgather"])
def test_host_combine_matches_the_collective_models(rng, op, dtype):
    """The runtime's numpy semantics (for executors that combine on the host) and its ONNX models agree bitwise."""
    arrays = [(rng.standard_normal((2, 3)) * 50).astype(dtype) for _ in range(3)]
    step = CollectiveStep(op, "c", 0, (0, 1, 2), "x", "y", axis=0)
    model = CollectiveRun(step, _ortvalues(arrays), SessionCache(CPU, 1), "cpu")
    model.run()
    if op == "allgather":
        expected = np.concatenate(arrays, axis=0)
    else:
        expected = arrays[0]
        for array in arrays[1:]:
            expected = (expected | array) if dtype == np.bool_ else (expected.astype(np.float32) + array.astype(np.float32)).astype(dtype)
    host = combine_host(step, arrays)
    assert host.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(host.view(np.uint8), expected.view(np.uint8))
    np.testing.assert_array_equal(host_view(model.output).view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_final_outputs_are_written_straight_into_the_returned_arrays(tmp_path, rng, dtype, monkeypatch):
    """A tp 1 lookup: after the first call the segment writes into the caller's (or a fresh) array."""
    monkeypatch.setattr(plan_module, "DIRECT_MIN_BYTES", 0)  # large outputs only, by default
    table = rng.standard_normal((12, 8)).astype(dtypes.as_dtype(dtype).numpy)
    net = gb.Network("direct")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        net.mark_output(F.embedding(ids, gb.constant(table, name="wte"), name="wte"), "emb")
    engine = gb.build(net, tmp_path / "direct", providers=CPU)
    calls = [rng.integers(0, 12, size=6) for _ in range(4)]
    results = [engine.run({"ids": ids})["emb"] for ids in calls[:3]]
    plan = next(iter(engine._executor._plans.values()))
    assert [(d.rank, d.name) for d in plan.direct] == [(0, "emb")]
    for ids, result in zip(calls, results):  # none overwritten by a later call
        np.testing.assert_array_equal(result, table[ids])
    assert results[1].ctypes.data % 64 == 0, "fresh outputs are 64-byte aligned, as ORT's own buffers"
    target = np.full((6, 8), np.nan, table.dtype)
    assert engine.run({"ids": calls[3]}, out={"emb": target})["emb"] is target
    np.testing.assert_array_equal(target, table[calls[3]])
    strided = np.zeros((6, 16), table.dtype)[:, ::2]  # not contiguous: filled by a copy
    engine.run({"ids": calls[0]}, out={"emb": strided})
    np.testing.assert_array_equal(strided, table[calls[0]])
    np.testing.assert_array_equal(target, table[calls[3]])  # an earlier out= array is no longer written


def test_small_outputs_are_copied_out(tmp_path, rng):
    table = rng.standard_normal((12, 8)).astype(np.float32)
    engine = norm_engine(tmp_path, table, 1, 0)
    for _ in range(2):
        ids = rng.integers(0, 12, size=5)
        np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])
    assert next(iter(engine._executor._plans.values())).direct == []
