"""Issue 5 item 2 on a GPU: intermediates and collectives stay on the device, only outputs come back.

Every test here carries the ``gpu`` marker; the conftest skips them, with the reason, when there is
no CUDA device or onnxruntime has no CUDA provider. The same code path runs on the CPU provider in
``test_buffers.py``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.runtime.collectives import CollectiveRun, SessionCache
from graphbuild.runtime.plan import SegmentRun
from graphbuild.runtime.schedule import CollectiveStep
from graphbuild.runtime.ortvalues import allocate

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]

pytestmark = pytest.mark.gpu


def _engine(tmp_path, table, tp_size, sharding_dim, use_plugin=True):
    net = gb.Network("gpu")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        emb = F.embedding(ids, gb.constant(table, name="wte"), tp_size=tp_size, sharding_dim=sharding_dim, name="wte")
        net.mark_output(emb * 2.0, "twice")
    gb.build(net, tmp_path / "e", use_plugin=use_plugin, providers=["CPUExecutionProvider"])
    return gb.Engine.load(tmp_path / "e", providers=CUDA)


def _device(value) -> str:
    return value.device_name().lower()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("tp_size,sharding_dim", [(2, 0), (3, 1), (4, 0)])
def test_intermediates_and_collectives_stay_on_the_device(tmp_path, rng, dtype, tp_size, sharding_dim):
    table = rng.standard_normal((37, 10)).astype(dtype)
    engine = _engine(tmp_path, table, tp_size, sharding_dim)
    assert engine._executor.device == "cuda"
    for _ in range(2):  # the first call makes the plan, the second reuses it
        ids = rng.integers(0, 37, size=12)
        out = engine.run({"ids": ids})["twice"]
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out.view(np.uint8), (table[ids] * np.array(2, dtype)).astype(dtype).view(np.uint8))
    plan = next(iter(engine._executor._plans.values()))
    segments = [run for run in plan.runs if isinstance(run, SegmentRun)]
    collectives = [run for run in plan.runs if isinstance(run, CollectiveRun)]
    assert segments and collectives
    assert {_device(v) for run in segments for v in run.outputs} == {"cuda"}
    assert {_device(v) for run in segments for v in run.inputs} == {"cuda"}
    assert {_device(run.output) for run in collectives} == {"cuda"}
    assert {_device(buffer) for _, buffer in plan.feed_buffers} == {"cuda"}


@pytest.mark.parametrize("use_plugin", [True, False])
def test_out_of_range_ids_on_the_device_are_the_same_error(tmp_path, rng, use_plugin):
    table = rng.standard_normal((8, 4)).astype(np.float32)
    engine = _engine(tmp_path, table, 2, 0, use_plugin)
    with pytest.raises(gb.OutOfRangeIdError, match=r"id 9 at flat position 2"):
        engine.run({"ids": np.array([0, 1, 9])})
    ids = np.array([7, 0, 3])
    np.testing.assert_array_equal(engine.run({"ids": ids})["twice"], table[ids] * 2)


def test_device_collectives_match_numpy(rng):
    arrays = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    values = []
    for array in arrays:
        value = allocate(array.shape, gb.dtypes.float32, "cuda")
        value.update_inplace(array)
        values.append(value)
    sessions = SessionCache(CUDA, None)
    reduce = CollectiveRun(CollectiveStep("allreduce", "ar", 0, (0, 1, 2, 3), "x", "y"), values, sessions, "cuda")
    gather = CollectiveRun(CollectiveStep("allgather", "ag", 1, (0, 1, 2, 3), "x", "y", axis=0), values, sessions, "cuda")
    reduce.run()
    gather.run()
    assert _device(reduce.output) == _device(gather.output) == "cuda"
    np.testing.assert_allclose(reduce.output.numpy(), ((arrays[0] + arrays[1]) + arrays[2]) + arrays[3], rtol=1e-6)
    np.testing.assert_array_equal(gather.output.numpy(), np.concatenate(arrays, axis=0))
