"""Engines on ONNX Runtime's CUDA execution provider: the core test matrix, errors, a wide model.

The matrix is the one of tests/test_tp_embedding_matrix.py (tp_size 1 to 4 in process,
sharding_dim 0 and 1, float32/float16/bfloat16 tables, int32 and int64 ids of ranks 0 to 3 with
empty ids, even and uneven table sizes, plugin and standard-ONNX lowering, logical and rank-local
networks), built and run with the CUDA provider only and compared bit for bit with numpy. Every
session is checked to run on CUDA and every TPEmbedding node to have run there (conftest.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F

pytestmark = pytest.mark.gpu

CUDA = ["CUDAExecutionProvider"]


def _load_matrix_module():
    """The CPU matrix test module, whose builders, feeds and comparison this file reuses."""
    path = Path(__file__).resolve().parents[1] / "test_tp_embedding_matrix.py"
    spec = importlib.util.spec_from_file_location("graphbuild_tests_tp_embedding_matrix", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_matrix = _load_matrix_module()
DTYPES, CASES, ID_SHAPES = _matrix.DTYPES, _matrix.CASES, _matrix.ID_SHAPES
make_tables, make_network, make_feeds, assert_bitwise = _matrix.make_tables, _matrix.make_network, _matrix.make_feeds, _matrix.assert_bitwise


@pytest.mark.parametrize("tp_size,sharding_dim,dtype,use_plugin,mode", CASES, ids=lambda v: str(v))
def test_matrix_on_cuda(on_cuda, tmp_path, rng, tp_size, sharding_dim, dtype, use_plugin, mode):
    tables = make_tables(rng, tp_size, dtype)
    if mode == "logical":
        network = make_network(tables, tp_size, sharding_dim)
    else:
        network = [make_network(tables, tp_size, sharding_dim, tp_rank=r) for r in range(tp_size)]
    engine = gb.build(network, tmp_path / "engine", use_plugin=use_plugin, providers=CUDA)
    smallest_vocab = min(t.shape[0] for t in tables.values())
    for empty in (False, True):
        feeds = make_feeds(rng, smallest_vocab, empty)
        outputs = engine.run(feeds)
        for key, table in tables.items():
            for r in range(len(ID_SHAPES)):
                ids = feeds[f"ids{r}"]
                assert_bitwise(outputs[f"{key}_out{r}"], table[ids], f"{key} ids{r} shape {ids.shape}")
    if use_plugin:
        on_cuda.check("TPEmbedding", at_least=2 * len(ID_SHAPES) * tp_size)
    else:
        # The lookup Gathers run on CUDA; ONNX Runtime may keep small index arithmetic on the CPU.
        on_cuda.check("Gather", at_least=tp_size, exclusive=False)


def error_network(table: np.ndarray, tp_size: int, sharding_dim: int, out_of_range: str = "error") -> gb.Network:
    net = gb.Network("cuda_errors")
    with net:
        ids = net.add_input("input_ids", "int64", ("batch", "seq"))
        weight = gb.constant(table, name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=tp_size, sharding_dim=sharding_dim, out_of_range=out_of_range, name="wte"), "emb")
    return net


@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "lowered"])
@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (2, 0), (3, 0), (4, 0), (2, 1), (3, 1)])
@pytest.mark.parametrize("bad", [-1, 11, 10, 2**40], ids=["negative", "past-vocab", "padded-tail", "huge"])
def test_out_of_range_error_matches_cpu(on_cuda, tmp_path, rng, use_plugin, tp_size, sharding_dim, bad):
    table = rng.standard_normal((10, 6)).astype(np.float32)
    net = error_network(table, tp_size, sharding_dim)
    engine = gb.build(net, tmp_path / "e", use_plugin=use_plugin, providers=CUDA)
    ids = rng.integers(0, 10, size=(2, 4)).astype(np.int64)
    ids[1, 2] = bad
    ids[1, 3] = -7
    expected = f"embedding 'wte': id {bad} at flat position 6 is outside the vocabulary [0, 10)"
    with pytest.raises(gb.OutOfRangeIdError) as cuda_error:
        engine.run({"input_ids": ids})
    assert str(cuda_error.value) == expected
    with pytest.raises(gb.OutOfRangeIdError) as reference_error:  # the CPU engines' text (tests/)
        gb.reference.run(net, {"input_ids": ids})
    assert str(reference_error.value) == expected
    good = np.abs(ids) % 10
    np.testing.assert_array_equal(engine.run({"input_ids": good})["emb"], table[good])  # still usable
    if use_plugin:
        on_cuda.check("TPEmbedding", at_least=tp_size)
    else:
        on_cuda.check("Gather", at_least=1, exclusive=False)


@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (3, 0), (2, 1)])
def test_zero_rows_opt_in(on_cuda, tmp_path, rng, tp_size, sharding_dim):
    table = rng.standard_normal((10, 6)).astype(np.float16)
    engine = gb.build(error_network(table, tp_size, sharding_dim, out_of_range="zero"), tmp_path / "e", providers=CUDA)
    ids = np.array([[3, -1, 10, 9, 2**40]], dtype=np.int64)
    valid = (ids >= 0) & (ids < 10)
    expected = np.where(valid[..., None], table[np.where(valid, ids, 0)], 0).astype(np.float16)
    np.testing.assert_array_equal(engine.run({"input_ids": ids})["emb"], expected)
    on_cuda.check("TPEmbedding", at_least=tp_size)


@pytest.mark.parametrize("tp_size,sharding_dim", [(2, 0), (2, 1), (4, 1)])
def test_wide_rows_many_tokens(on_cuda, tmp_path, rng, tp_size, sharding_dim):
    # Rows of 512+ bytes and 4096 ids per rank take the warp-per-row launch.
    vocab, hidden = 5_003, 2_048
    table = (rng.standard_normal((vocab, hidden)) + 0.5).astype(ml_dtypes.bfloat16)
    engine = gb.build(error_network(table, tp_size, sharding_dim), tmp_path / "e", providers=CUDA)
    ids = rng.integers(0, vocab, size=(8, 512))
    np.testing.assert_array_equal(engine.run({"input_ids": ids})["emb"].astype(np.float32), table[ids].astype(np.float32))
    ids[5, 100] = vocab
    ids[7, 3] = -1
    with pytest.raises(gb.OutOfRangeIdError) as raised:
        engine.run({"input_ids": ids})
    assert str(raised.value) == f"embedding 'wte': id {vocab} at flat position {5 * 512 + 100} is outside the vocabulary [0, {vocab})"
    on_cuda.check("TPEmbedding", at_least=tp_size + 1)  # the failed run stops at the first rank
