"""The tensor-parallel embedding matrix, end to end through engines.

Every engine built here holds two tables (one whose vocab and hidden sizes divide tp_size, one whose
sizes do not) and four id inputs of ranks 0 to 3 alternating int64 and int32, so one build covers
both divisibility cases, both id dtypes, every id shape, and empty ids (a zero-sized dim at run
time). Builds vary tp_size (1-4), sharding_dim (0, 1), table dtype (float32, float16, bfloat16),
plugin vs standard-ONNX lowering, and logical vs rank-local mode. Expected values are plain numpy
fancy indexing of the full table; results must be bitwise equal (a vocab-split all-reduce adds
exact zeros, so it is exact too).
"""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.sharding import hidden_split_sizes, shard_table, vocab_shard_rows

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
ID_SHAPES = [(), ("n",), ("b", "s"), ("b3", "s3", "k")]  # independent dims: ids3 may be empty alone
ID_DTYPES = ["int64", "int32", "int64", "int32"]


def table_sizes(tp_size: int) -> dict[str, tuple[int, int]]:
    return {"even": (8 * tp_size, 4 * tp_size), "uneven": (8 * tp_size + 3, 4 * tp_size + 1)}


def make_tables(rng: np.random.Generator, tp_size: int, dtype: str) -> dict[str, np.ndarray]:
    return {
        key: (rng.standard_normal((vocab, hidden)) + 0.5).astype(DTYPES[dtype])
        for key, (vocab, hidden) in table_sizes(tp_size).items()
    }


def make_network(tables: dict[str, np.ndarray], tp_size: int, sharding_dim: int, tp_rank=None) -> gb.Network:
    """Logical network (tp_rank None) or one rank's view with pre-sharded tables."""
    net = gb.Network("matrix" if tp_rank is None else f"matrix.rank{tp_rank}")
    with net:
        ids = [net.add_input(f"ids{r}", ID_DTYPES[r], ID_SHAPES[r]) for r in range(len(ID_SHAPES))]
        for key, table in tables.items():
            vocab, hidden = table.shape
            if tp_rank is None:
                weight = gb.constant(table, name=f"{key}.weight")
            else:
                weight = gb.constant(shard_table(table, tp_size, tp_rank, sharding_dim), name=f"{key}.weight")
            for r, id_tensor in enumerate(ids):
                out = F.embedding(
                    id_tensor, weight, tp_size=tp_size, sharding_dim=sharding_dim, tp_rank=tp_rank,
                    vocab_size=vocab if tp_rank is not None else None,
                    embedding_dim=hidden if tp_rank is not None else None,
                    name=f"{key}{r}",
                )
                net.mark_output(out, f"{key}_out{r}")
    return net


def make_feeds(rng: np.random.Generator, vocab: int, empty: bool) -> dict[str, np.ndarray]:
    shapes = [(), (5,), (2, 3), (2, 0, 4) if empty else (2, 3, 2)]
    return {f"ids{r}": rng.integers(0, vocab, size=shape).astype(ID_DTYPES[r]) for r, shape in enumerate(shapes)}


def assert_bitwise(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    np.testing.assert_array_equal(actual.astype(np.float32), expected.astype(np.float32), err_msg=what)


CASES = list(itertools.product([1, 2, 3, 4], [0, 1], list(DTYPES), [True, False], ["logical", "rank-local"]))


@pytest.mark.parametrize("tp_size,sharding_dim,dtype,use_plugin,mode", CASES, ids=lambda v: str(v))
def test_tp_embedding_matrix(tmp_path, rng, tp_size, sharding_dim, dtype, use_plugin, mode):
    tables = make_tables(rng, tp_size, dtype)
    if mode == "logical":
        network = make_network(tables, tp_size, sharding_dim)
    else:
        network = [make_network(tables, tp_size, sharding_dim, tp_rank=r) for r in range(tp_size)]
    engine = gb.build(network, tmp_path / "engine", use_plugin=use_plugin, verify_each_pass=True)
    assert engine.tp_size == tp_size
    assert bool(engine.manifest.custom_ops) == use_plugin
    smallest_vocab = min(t.shape[0] for t in tables.values())
    for empty in (False, True):
        feeds = make_feeds(rng, smallest_vocab, empty)
        outputs = engine.run(feeds)
        for key, table in tables.items():
            for r in range(len(ID_SHAPES)):
                ids = feeds[f"ids{r}"]
                assert_bitwise(outputs[f"{key}_out{r}"], table[ids], f"{key} ids{r} shape {ids.shape}")


def test_every_rank_returns_the_full_result(tmp_path, rng):
    tables = make_tables(rng, 3, "float32")
    engine = gb.build(make_network(tables, 3, 0), tmp_path / "e")
    feeds = make_feeds(rng, 24, False)
    per_rank = engine.run_all_ranks(feeds)
    assert len(per_rank) == 3
    for outputs in per_rank[1:]:
        for name, value in outputs.items():
            np.testing.assert_array_equal(value, per_rank[0][name])


def test_shards_hold_ceil_rows_and_array_split_columns(tmp_path, rng):
    table = rng.standard_normal((10, 7)).astype(np.float32)
    assert vocab_shard_rows(10, 4) == 3
    assert hidden_split_sizes(7, 4) == [2, 2, 2, 1]
    padded = shard_table(table, 4, 3, 0)
    np.testing.assert_array_equal(padded[:1], table[9:])
    assert not padded[1:].any()
    np.testing.assert_array_equal(shard_table(table, 4, 3, 1), table[:, 6:])
