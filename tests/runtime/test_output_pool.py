"""Pooled output memory: returned arrays stay valid and independent, and memory is reused once dropped."""

from __future__ import annotations

import gc
import threading

import ml_dtypes
import numpy as np
import pytest

import graphbuild as gb
from graphbuild import dtypes
from graphbuild import functional as F
from graphbuild.runtime import plan as plan_module
from graphbuild.runtime.pool import BufferPool

CPU = ["CPUExecutionProvider"]


@pytest.fixture(autouse=True)
def _pool_every_output(monkeypatch):
    monkeypatch.setattr(plan_module, "DIRECT_MIN_BYTES", 0)  # small tables, pooled like large ones


def lookup_engine(tmp_path, table, tp_size=1, sharding_dim=0, use_plugin=True):
    net = gb.Network("lookup")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        net.mark_output(F.embedding(ids, gb.constant(table, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte"), "emb")
    return gb.build(net, tmp_path / f"lookup{tp_size}{sharding_dim}{use_plugin}", providers=CPU, use_plugin=use_plugin)


def pools(engine):
    plan = next(iter(engine._executor._plans.values()))
    return [slot.pool for slot in plan.slots[0] if slot.pool is not None]  # rank 0's, which engine.run returns


@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (2, 1), (3, 0)])
def test_dropped_results_give_their_memory_back(tmp_path, rng, tp_size, sharding_dim):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table, tp_size, sharding_dim)
    calls = [rng.integers(0, 20, size=6) for _ in range(30)]
    for ids in calls:
        np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])  # dropped at once
    (pool,) = pools(engine)
    assert pool.allocations <= 2, f"{pool.allocations} allocations for 30 calls whose results were dropped"
    result = None
    for ids in calls:  # a loop that keeps the last result: two blocks alternate
        result = engine.run({"ids": ids})["emb"]
        np.testing.assert_array_equal(result, table[ids])
    assert pool.allocations <= 3


@pytest.mark.parametrize("tp_size,sharding_dim", [(2, 0), (3, 1)])
def test_every_ranks_pool_stays_small_when_only_rank_0_is_returned(tmp_path, rng, tp_size, sharding_dim):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table, tp_size, sharding_dim)
    for _ in range(20):
        ids = rng.integers(0, 20, size=6)
        np.testing.assert_array_equal(engine.run({"ids": ids})["emb"], table[ids])
    plan = next(iter(engine._executor._plans.values()))
    every = [slot.pool for slots in plan.slots for slot in slots if slot.pool is not None]
    assert len(every) == tp_size
    assert all(pool.allocations <= 2 for pool in every), [pool.allocations for pool in every]
    assert not any(block.taken for pool in every for block in pool._blocks), "a block was taken and never given back"


def test_held_results_stay_valid_and_independent(tmp_path, rng):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table)
    calls = [rng.integers(0, 20, size=6) for _ in range(6)]
    held = [engine.run({"ids": ids})["emb"] for ids in calls]
    for ids, result in zip(calls, held):
        np.testing.assert_array_equal(result, table[ids])
    assert not any(np.shares_memory(a, b) for i, a in enumerate(held) for b in held[i + 1 :])
    (pool,) = pools(engine)
    assert pool.allocations >= 5, "arrays the caller holds are never handed out again"
    held[2][0, 0] = 1234.0  # the caller's to write
    np.testing.assert_array_equal(engine.run({"ids": calls[0]})["emb"], table[calls[0]])
    assert held[2][0, 0] == 1234.0


def test_a_view_keeps_its_memory_out_of_the_pool(tmp_path, rng):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table)
    first = rng.integers(0, 20, size=6)
    view = engine.run({"ids": first})["emb"][2:, ::2]  # the full array is dropped, a view survives
    gc.collect()
    for _ in range(5):
        engine.run({"ids": rng.integers(0, 20, size=6)})
    np.testing.assert_array_equal(view, table[first][2:, ::2])
    (pool,) = pools(engine)
    allocated = pool.allocations
    del view
    for _ in range(5):
        engine.run({"ids": rng.integers(0, 20, size=6)})
    assert pool.allocations == allocated, "the block came back when its last view died"


def test_failed_calls_do_not_leak_blocks(tmp_path, rng):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table)
    engine.run({"ids": np.arange(6)})
    (pool,) = pools(engine)
    for _ in range(10):
        with pytest.raises(gb.OutOfRangeIdError):
            engine.run({"ids": np.array([1, 2, 3, 4, 5, 99])})
    engine.run({"ids": np.arange(6)})
    assert pool.allocations <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_pool_hands_out_aligned_arrays_of_its_dtype(dtype):
    pool = BufferPool((5, 7), dtypes.as_dtype(np.dtype(dtype).name if dtype is not ml_dtypes.bfloat16 else "bfloat16"))
    block = pool.take()
    array = pool.hand_out(block)
    assert array.dtype == np.dtype(dtype) and array.shape == (5, 7) and array.flags.writeable and array.flags.c_contiguous
    assert array.ctypes.data % 64 == 0
    assert (pool.allocations, pool.free) == (1, 0)
    del array
    assert pool.free == 1 and pool.take() is block and pool.allocations == 1


def test_pool_keeps_a_bounded_number_of_free_blocks_and_releases_them_on_close():
    pool = BufferPool((4,), dtypes.float32, keep=2)
    arrays = [pool.hand_out(pool.take()) for _ in range(5)]
    assert pool.free == 0
    del arrays
    assert pool.free == 5
    again = pool.take()  # reuses one and drops the free blocks beyond two
    assert pool.free == 2 and pool.allocations == 5
    pool.put(again)
    pool.close()
    kept = pool.hand_out(pool.take())
    assert pool.free == 0
    del kept
    assert pool.free == 0, "a closed pool keeps nothing"


def test_arrays_released_in_other_threads_come_back(tmp_path, rng):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table)
    results = [engine.run({"ids": rng.integers(0, 20, size=6)})["emb"] for _ in range(2)]
    (pool,) = pools(engine)
    worker = threading.Thread(target=results.clear)
    worker.start()
    worker.join()
    assert pool.free == 2


def test_plans_dropped_release_their_pools(tmp_path, rng):
    table = rng.standard_normal((20, 8)).astype(np.float32)
    engine = lookup_engine(tmp_path, table)
    engine._executor._max_plans = 1
    engine.run({"ids": np.arange(4)})
    engine.run({"ids": np.arange(4)})
    (pool,) = pools(engine)
    assert pool.free == 1
    engine.run({"ids": np.arange(5)})  # another shape: the first plan is dropped
    assert pool.free == 0
