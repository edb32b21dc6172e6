"""``graphbuild.layers``: Module/Parameter naming and the ``Embedding`` layer (init, padding_idx,
shapes, dtypes, rank-local shards), checked against numpy through the reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import layers, reference
from graphbuild.errors import GraphConstructionError
from graphbuild.sharding import shard_table


def _ids_network(name: str = "net", dtype: str = "int64"):
    net = gb.Network(name)
    with net:
        ids = net.add_input("input_ids", dtype=dtype, shape=("batch", "seq"))
    return net, ids


def _full_table(seed: int, vocab: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((vocab, dim), dtype=np.float32)


class Model(layers.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = layers.Embedding(20, 6, seed=1)
        self.extra = layers.Module()
        self.extra.pos = layers.Embedding(8, 6, seed=2)
        self.lm_head = self.wte  # tied: reachable twice, named once

    def forward(self, ids):
        return self.wte(ids) + self.extra.pos(ids)


# ----------------------------------------------------------------------------- names
def test_standalone_layer_names_weight_and_node_after_its_name():
    emb = layers.Embedding(10, 4, seed=0, name="wte")
    assert [name for name, _ in emb.named_parameters()] == ["wte.weight"]
    net, ids = _ids_network()
    emb(ids)
    assert list(net.constants) == ["wte.weight"]
    assert [node.name for node in net.nodes] == ["wte"]


def test_nested_modules_register_hierarchical_names_and_dedupe_tied_weights():
    model = Model()
    assert [name for name, _ in model.named_parameters()] == ["wte.weight", "extra.pos.weight"]
    assert [path for path, _ in model.named_modules()] == ["", "wte", "extra", "extra.pos"]
    assert set(model.state_dict()) == {"wte.weight", "extra.pos.weight"}
    assert model.num_parameters() == 20 * 6 + 8 * 6
    assert "(wte): Embedding(20, 6)" in repr(model)


def test_parameter_becomes_one_constant_per_network_named_by_path(rng):
    model = Model()
    net, ids = _ids_network()
    with net:
        net.mark_output(model(ids), "out")
        net.mark_output(model.wte(ids), "again")  # called on its own after the model: same constant
    assert sorted(net.constants) == ["extra.pos.weight", "wte.weight"]
    assert {n.name for n in net.nodes if n.op == "embedding"} >= {"wte", "extra.pos"}
    ids_np = rng.integers(0, 8, size=(2, 3))
    out = reference.run(net, {"input_ids": ids_np})
    expected = model.wte.weight.data[ids_np] + model.extra.pos.weight.data[ids_np]
    np.testing.assert_allclose(out["out"], expected, rtol=1e-6)
    # The same parameter in a second network becomes that network's constant too.
    other, other_ids = _ids_network("other")
    model.wte(other_ids)
    assert list(other.constants) == ["weight"]  # called on its own: no parent path, no name


def test_module_without_super_init_gets_a_hint():
    class Broken(layers.Module):
        def __init__(self) -> None:
            self.wte = layers.Embedding(4, 2, seed=0)

    with pytest.raises(GraphConstructionError, match=r"super\(\).__init__\(\)"):
        Broken()


def test_plain_module_forward_is_not_implemented():
    with pytest.raises(NotImplementedError):
        layers.Module()(1)


# ----------------------------------------------------------------------------- init and forward
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_init_is_seeded_normal_and_forward_matches_numpy(dtype, rng):
    emb = layers.Embedding(37, 5, dtype=dtype, seed=7, name="wte")
    expected_table = _full_table(7, 37, 5).astype(gb.dtypes.as_dtype(dtype).numpy)
    np.testing.assert_array_equal(emb.weight.data, expected_table)
    assert emb.weight.dtype.name == dtype
    net, ids = _ids_network()
    with net:
        y = emb(ids)
        net.mark_output(y, "embeddings")
    assert y.shape == ("batch", "seq", 5)
    assert y.dtype.name == dtype
    ids_np = rng.integers(0, 37, size=(3, 4))
    out = reference.run(net, {"input_ids": ids_np})["embeddings"]
    np.testing.assert_array_equal(out, expected_table[ids_np])


def test_different_seeds_give_different_tables():
    a = layers.Embedding(16, 4, seed=0).weight.data
    b = layers.Embedding(16, 4, seed=1).weight.data
    assert not np.array_equal(a, b)


def test_given_weight_is_used_as_is(rng):
    table = rng.standard_normal((9, 3)).astype(np.float32)
    emb = layers.Embedding(9, 3, weight=table, padding_idx=0)
    np.testing.assert_array_equal(emb.weight.data, table)  # PyTorch: _weight is not re-zeroed
    with pytest.raises(GraphConstructionError, match=r"weight has shape \[9, 4\], expected \[9, 3\]"):
        layers.Embedding(9, 3, weight=np.zeros((9, 4), np.float32))


@pytest.mark.parametrize("padding_idx, row", [(0, 0), (4, 4), (-1, 9), (-10, 0)])
def test_padding_idx_row_is_zero_and_negative_indices_count_from_the_end(padding_idx, row):
    emb = layers.Embedding(10, 4, padding_idx=padding_idx, seed=3)
    assert emb.padding_idx == row
    assert not emb.weight.data[row].any()
    others = np.delete(emb.weight.data, row, axis=0)
    assert np.all(np.abs(others).sum(axis=1) > 0)


@pytest.mark.parametrize("padding_idx", [10, -11])
def test_padding_idx_out_of_range_is_an_error(padding_idx):
    with pytest.raises(GraphConstructionError, match=rf"padding_idx={padding_idx} must be within num_embeddings"):
        layers.Embedding(10, 4, padding_idx=padding_idx)


def test_gradient_only_options_are_recorded():
    emb = layers.Embedding(10, 4, sparse=True, scale_grad_by_freq=True, seed=0)
    assert emb.sparse and emb.scale_grad_by_freq
    assert "sparse=True" in repr(emb)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_embeddings": 0}, "num_embeddings must be a positive int"),
        ({"embedding_dim": -1}, "embedding_dim must be a positive int"),
        ({"dtype": "int32"}, "dtype must be float32, float16 or bfloat16"),
        ({"sharding_dim": 2}, "sharding_dim must be 0"),
        ({"tp_size": 0}, "tp_size must be a positive int"),
        ({"tp_size": 2, "tp_rank": 3}, r"tp_rank=3 is outside tp_group \[0, 1\] \(tp_size=2\)"),
        ({"tp_size": 2, "tp_group": [0, 1, 2], "tp_rank": 0}, "has 3 ranks but tp_size=2"),
    ],
)
def test_bad_arguments_are_errors_naming_them(kwargs, message):
    args = {"num_embeddings": 10, "embedding_dim": 4, "seed": 0, "name": "wte", **kwargs}
    with pytest.raises(GraphConstructionError, match=message):
        layers.Embedding(**args)


def test_argument_errors_name_the_layer_in_both_modes():
    with pytest.raises(GraphConstructionError, match=r"Embedding 'wte': unsupported dtype 'int8'"):
        layers.Embedding(10, 4, dtype="int8", name="wte")
    # Logical mode checks tp_group at construction too, not first at forward.
    with pytest.raises(GraphConstructionError, match=r"Embedding 'wte': tp_group \[0, 1, 2\] has 3 ranks but tp_size=2"):
        layers.Embedding(10, 4, tp_size=2, tp_group=[0, 1, 2], name="wte")
    with pytest.raises(GraphConstructionError, match=r"Embedding 'wte': tp_group \[1, 1\] names a rank twice"):
        layers.Embedding(10, 4, tp_size=2, tp_group=[1, 1], tp_rank=1, name="wte")


def test_tp_arguments_reach_the_embedding_node():
    emb = layers.Embedding(10, 4, tp_size=2, tp_group=[3, 5], sharding_dim=1, seed=0, name="wte")
    net, ids = _ids_network()
    emb(ids)
    attrs = net.nodes[0].attrs
    assert (attrs["tp_size"], tuple(attrs["tp_group"]), attrs["sharding_dim"], attrs["tp_rank"]) == (2, (3, 5), 1, None)
    assert emb.weight.shape == (10, 4)  # logical mode holds the full table


# ----------------------------------------------------------------------------- rank-local
@pytest.mark.parametrize("sharding_dim, vocab, dim, tp_size", [(0, 10, 4, 3), (0, 12, 4, 4), (1, 7, 5, 2), (1, 7, 6, 3)])
def test_rank_local_layers_hold_the_logical_tables_shards(sharding_dim, vocab, dim, tp_size):
    full = layers.Embedding(vocab, dim, seed=5, padding_idx=vocab - 1).weight.data
    for rank in range(tp_size):
        emb = layers.Embedding(vocab, dim, seed=5, padding_idx=vocab - 1, tp_size=tp_size, sharding_dim=sharding_dim, tp_rank=rank)
        np.testing.assert_array_equal(emb.weight.data, shard_table(full, tp_size, rank, sharding_dim))
        assert emb.weight.shape == emb.shard_shape()


def test_rank_local_weight_may_be_the_full_table_or_the_shard(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    shard = shard_table(table, 3, 2, 0)  # 4 rows: ids 8, 9 and two zero rows of padding
    from_full = layers.Embedding(10, 4, tp_size=3, tp_rank=2, weight=table)
    from_shard = layers.Embedding(10, 4, tp_size=3, tp_rank=2, weight=shard)
    np.testing.assert_array_equal(from_full.weight.data, shard)
    np.testing.assert_array_equal(from_shard.weight.data, shard)
    with pytest.raises(GraphConstructionError, match=r"expected \[10, 4\] or this rank's shard \[4, 4\]"):
        layers.Embedding(10, 4, tp_size=3, tp_rank=2, weight=table[:5])


@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_rank_local_networks_built_together_equal_the_lookup(sharding_dim, rng, tmp_path):
    vocab, dim, tp_size = 11, 5, 2
    networks = []
    for rank in range(tp_size):
        emb = layers.Embedding(vocab, dim, seed=9, tp_size=tp_size, sharding_dim=sharding_dim, tp_rank=rank, name="wte")
        net, ids = _ids_network(f"rank{rank}")
        with net:
            net.mark_output(emb(ids), "embeddings")
        assert net.nodes[0].attrs["tp_rank"] == rank
        networks.append(net)
    ids_np = rng.integers(0, vocab, size=(2, 3))
    engine = gb.build(networks, tmp_path / "engine")
    assert engine.tp_size == tp_size
    expected = _full_table(9, vocab, dim)[ids_np]
    for out in engine.run_all_ranks({"input_ids": ids_np}):
        np.testing.assert_allclose(out["embeddings"], expected, rtol=1e-6, atol=1e-6)
