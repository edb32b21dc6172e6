"""The TPEmbedding CUDA kernel inside ONNX Runtime's CUDA execution provider, one node at a time.

Each test builds a one-node model, runs it on the CUDA provider only (CPU fallback disabled, and
the profile checked: see conftest.py) and compares the bytes of the output with numpy. Row widths
cover every copy unit (16, 8, 4 and 2 bytes), id counts cover both launch shapes (few ids: one
thread per copy unit; many wide rows: one warp per row), and the id check covers many offenders
racing on the device, extreme ids, empty rows, concurrent runs and the session's next run.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

pytestmark = pytest.mark.gpu

ort = pytest.importorskip("onnxruntime")
InvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument

CUDA = "CUDAExecutionProvider"
NODE = "emb"
TABLE_DTYPES = {
    "float32": (np.float32, TensorProto.FLOAT),
    "float16": (np.float16, TensorProto.FLOAT16),
    "bfloat16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16),
}
ID_DTYPES = {"int32": (np.int32, TensorProto.INT32), "int64": (np.int64, TensorProto.INT64)}
# Widths whose rows take each copy unit: for 4-byte elements 1 -> 4 B, 2 -> 8 B, 3 -> 4 B,
# 4 -> 16 B, 1002 -> 8 B, 1004 -> 16 B; for 2-byte elements 1 and 3 and 1001 -> 2 B, 2 and 1002
# -> 4 B, 4 and 1004 -> 8 B, 8 and 1024 -> 16 B. Widths from 1001 have >= 32 units per row.
DIMS = [1, 2, 3, 4, 8, 1001, 1002, 1004, 1024]


def lookup_session(ids_dtype: str, table_dtype: str, **attributes) -> ort.InferenceSession:
    from graphbuild import plugin

    node = helper.make_node("TPEmbedding", ["ids", "table"], ["out"], name=NODE, domain="graphbuild", **attributes)
    graph = helper.make_graph(
        [node],
        "tp_embedding_cuda",
        [
            helper.make_tensor_value_info("ids", ID_DTYPES[ids_dtype][1], None),
            helper.make_tensor_value_info("table", TABLE_DTYPES[table_dtype][1], None),
        ],
        [helper.make_tensor_value_info("out", TABLE_DTYPES[table_dtype][1], None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("graphbuild", 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(plugin.library_path()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=[CUDA])


def reference(ids: np.ndarray, table: np.ndarray, vocab_size: int, vocab_start: int = 0) -> np.ndarray:
    """Rows of this shard for ids in [vocab_start, vocab_start + rows), zeros for any other id."""
    local = ids.astype(np.int64) - vocab_start
    in_shard = (ids >= 0) & (ids < vocab_size) & (local >= 0) & (local < table.shape[0])
    rows = table[np.where(in_shard, local, 0)] if table.shape[0] else np.zeros(ids.shape + table.shape[1:], table.dtype)
    return np.where(in_shard[..., None], rows, np.zeros((), table.dtype)).astype(table.dtype)


def assert_same_bytes(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, actual.shape, expected.shape)
    np.testing.assert_array_equal(
        np.ascontiguousarray(actual).view(np.uint8), np.ascontiguousarray(expected).view(np.uint8)
    )


def message(bad_id: int, position: int, vocab_size: int) -> str:
    return f"TPEmbedding '{NODE}': id {bad_id} at flat position {position} is outside the vocabulary [0, {vocab_size})"


def run(session: ort.InferenceSession, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """One run; feeds go through OrtValues because the numpy binding cannot take bfloat16."""
    from graphbuild.runtime.ortvalues import from_ortvalue, to_ortvalue

    feeds = {"ids": to_ortvalue(ids), "table": to_ortvalue(table)}
    (out,) = session.run_with_ort_values(["out"], feeds)
    return from_ortvalue(out)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
def test_lookup_matches_numpy(on_cuda, make_table, multiprocessors, rng, table_dtype, ids_dtype, dim):
    # A middle shard [700, 1900) of a 3000-id vocabulary: ids of other shards give zero rows.
    vocab, start, rows = 3_000, 700, 1_200
    session = lookup_session(ids_dtype, table_dtype, vocab_size=vocab, vocab_start=start)
    table = make_table(rng, rows, dim, TABLE_DTYPES[table_dtype][0])
    many = (multiprocessors * 8 + 5,)  # enough wide rows for the warp-per-row launch
    for shape in [(), (1,), (16,), (3, 7), (2, 3, 4), (0,), (4, 0), many]:
        ids = rng.integers(0, vocab, size=shape).astype(ID_DTYPES[ids_dtype][0])
        assert_same_bytes(run(session, ids, table), reference(ids, table, vocab, start))
    on_cuda.check(at_least=8)


@pytest.mark.parametrize("count", ["few", "many"])
@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
def test_first_out_of_range_id_is_reported_and_session_stays_usable(on_cuda, make_table, multiprocessors, rng, ids_dtype, count):
    session = lookup_session(ids_dtype, "float16", vocab_size=500)
    table = make_table(rng, 500, 1024, np.float16)
    dtype = ID_DTYPES[ids_dtype][0]
    size = 16 if count == "few" else multiprocessors * 16
    extreme = np.iinfo(dtype).min
    for trial in range(3):
        ids = rng.integers(0, 500, size=size).astype(dtype)
        first = int(rng.integers(0, size // 2))
        offenders = rng.choice(np.arange(first + 1, size), size=min(40, size - first - 1), replace=False)
        ids[offenders] = rng.choice([-1, 500, 501, extreme], size=offenders.size)  # racing on the device
        ids[first] = [500, -3, extreme][trial]
        with pytest.raises(InvalidArgument) as raised:
            run(session, ids.reshape(2, -1), table)
        assert message(int(ids[first]), first, 500) in str(raised.value)
        good = rng.integers(0, 500, size=(3, size)).astype(dtype)  # the next run is correct
        assert_same_bytes(run(session, good, table), reference(good, table, 500))
    on_cuda.check(at_least=6)


def test_int64_ids_beyond_int32_are_reported_exactly(on_cuda, make_table, rng):
    session = lookup_session("int64", "bfloat16", vocab_size=64)
    table = make_table(rng, 64, 8, ml_dtypes.bfloat16)
    ids = rng.integers(0, 64, size=(4, 5))
    ids[2, 3] = 2**40
    ids[3, 0] = -(2**62)
    with pytest.raises(InvalidArgument) as raised:
        run(session, ids, table)
    assert message(2**40, 13, 64) in str(raised.value)
    on_cuda.check(at_least=1)


def test_empty_rows_still_validate_ids(on_cuda, rng):
    session = lookup_session("int32", "float32", vocab_size=10)
    table = np.zeros((10, 0), np.float32)
    ids = rng.integers(0, 10, size=(3, 4)).astype(np.int32)
    assert run(session, ids, table).shape == (3, 4, 0)
    ids[1, 1] = 10
    with pytest.raises(InvalidArgument) as raised:
        run(session, ids, table)
    assert message(10, 5, 10) in str(raised.value)
    on_cuda.check(at_least=2)


@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
def test_zero_out_of_range_gives_zero_rows(on_cuda, make_table, multiprocessors, rng, table_dtype):
    session = lookup_session("int64", table_dtype, vocab_size=64, vocab_start=32, zero_out_of_range=1)
    table = make_table(rng, 32, 256, TABLE_DTYPES[table_dtype][0])
    for shape in [(16, 40), (multiprocessors * 9,)]:
        ids = rng.integers(-100, 200, size=shape)
        assert_same_bytes(run(session, ids, table), reference(ids, table, 64, 32))
    on_cuda.check(at_least=2)


def test_concurrent_runs_of_one_session_keep_their_own_results(on_cuda, make_table, rng):
    # The node's device word for the id check is shared by every run of the session: runs from
    # several threads must each see their own first bad position, and good runs no error.
    session = lookup_session("int64", "float16", vocab_size=300)
    table = make_table(rng, 300, 512, np.float16)
    cases = []
    for k in range(48):
        ids = rng.integers(0, 300, size=(8, 64))
        bad = None
        if k % 3 == 0:
            bad = int(rng.integers(0, ids.size))
            ids.reshape(-1)[bad] = 300 + k
        cases.append((ids, bad))
    barrier = threading.Barrier(8)

    def work(index: int) -> str:
        if index < 8:
            barrier.wait()
        ids, bad = cases[index]
        try:
            out = run(session, ids, table)
        except InvalidArgument as error:
            assert bad is not None and message(300 + index, bad, 300) in str(error), (index, str(error))
            return "error"
        assert bad is None, f"case {index}: bad id at {bad} not reported"
        assert_same_bytes(out, reference(ids, table, 300))
        return "ok"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(work, range(len(cases))))
    assert outcomes.count("error") == 16 and outcomes.count("ok") == 32
    on_cuda.check(at_least=48)
