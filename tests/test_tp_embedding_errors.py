"""Out-of-range ids: the same error from the reference interpreter, the plugin and the lowered path."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F


def make_network(table: np.ndarray, tp_size: int, sharding_dim: int, out_of_range: str = "error", id_dtype: str = "int64") -> gb.Network:
    net = gb.Network("errors")
    with net:
        ids = net.add_input("input_ids", id_dtype, ("batch", "seq"))
        weight = gb.constant(table, name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=tp_size, sharding_dim=sharding_dim, out_of_range=out_of_range, name="wte"), "emb")
    return net


BAD_IDS = [
    pytest.param(-1, id="negative"),
    pytest.param(11, id="past-vocab"),
    pytest.param(10, id="padded-tail"),  # V=10 over tp 3/4 pads the last shard: ids 10, 11 are padding
    pytest.param(2**40, id="huge"),
]


@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "lowered"])
@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (2, 0), (3, 0), (4, 0), (2, 1), (3, 1)])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_out_of_range_id_names_id_and_position(tmp_path, rng, use_plugin, tp_size, sharding_dim, bad):
    table = rng.standard_normal((10, 6)).astype(np.float32)
    net = make_network(table, tp_size, sharding_dim)
    engine = gb.build(net, tmp_path / "e", use_plugin=use_plugin)
    ids = rng.integers(0, 10, size=(2, 4)).astype(np.int64)
    ids[1, 2] = bad
    ids[1, 3] = -7  # a later bad id: the first one (flat position 6) is reported
    expected = f"embedding 'wte': id {bad} at flat position 6 is outside the vocabulary [0, 10)"
    with pytest.raises(gb.OutOfRangeIdError) as engine_error:
        engine.run({"input_ids": ids})
    assert str(engine_error.value) == expected
    with pytest.raises(gb.OutOfRangeIdError) as reference_error:
        gb.reference.run(net, {"input_ids": ids})
    assert str(reference_error.value) == expected
    good = np.abs(ids) % 10
    np.testing.assert_array_equal(engine.run({"input_ids": good})["emb"], table[good])  # still usable


@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "lowered"])
@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (3, 0), (2, 1)])
def test_zero_rows_are_an_explicit_opt_in(tmp_path, rng, use_plugin, tp_size, sharding_dim):
    table = rng.standard_normal((10, 6)).astype(np.float16)
    net = make_network(table, tp_size, sharding_dim, out_of_range="zero", id_dtype="int32")
    engine = gb.build(net, tmp_path / "e", use_plugin=use_plugin)
    ids = np.array([[3, -1, 10, 9, 2**31 - 1]], dtype=np.int32)
    out = engine.run({"input_ids": ids})["emb"]
    valid = (ids >= 0) & (ids < 10)
    expected = np.where(valid[..., None], table[np.where(valid, ids, 0)], 0).astype(np.float16)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(gb.reference.run(net, {"input_ids": ids})["emb"], expected)
