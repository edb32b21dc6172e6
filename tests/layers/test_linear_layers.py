"""Tensor-parallel linear layers (ColumnLinear, QKVColumnLinear, RowLinear, LMHead): weight
loaders slice the checkpoint tensor per rank, and rank-local networks at tp 1..4 compute what a
plain numpy linear layer computes."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import layers
from graphbuild.errors import CheckpointError, GraphConstructionError

TP_SIZES = [1, 2, 3, 4]
ATOL = dict(rtol=1e-5, atol=1e-5)


def linear_ref(x, weight, bias=None):
    y = x.astype(np.float64) @ weight.astype(np.float64).T
    return y if bias is None else y + bias


# ----------------------------------------------------------------------------- weight loaders
def test_column_and_row_loaders_slice_array_split_style(rng):
    full = rng.standard_normal((7, 5)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    expected_rows = [(0, 2), (2, 4), (4, 6), (6, 7)]  # 7 over 4 ranks: 2, 2, 2, 1
    for rank, (start, stop) in enumerate(expected_rows):
        col = layers.ColumnLinear(5, 7, tp_size=4, tp_rank=rank)
        assert col.weight.full_shape == (7, 5) and col.bias.full_shape == (7,)
        col.weight.load(full)
        col.bias.load(bias)
        np.testing.assert_array_equal(col.weight.data, full[start:stop])
        np.testing.assert_array_equal(col.bias.data, bias[start:stop])
    full_row = rng.standard_normal((5, 7)).astype(np.float32)
    for rank, (start, stop) in enumerate(expected_rows):
        row = layers.RowLinear(7, 5, tp_size=4, tp_rank=rank)
        assert row.weight.full_shape == (5, 7)
        row.weight.load(full_row)
        row.bias.load(bias[:5])
        np.testing.assert_array_equal(row.weight.data, full_row[:, start:stop])
        np.testing.assert_array_equal(row.bias.data, bias[:5])  # replicated


def test_qkv_loader_takes_the_fused_tensor_and_keeps_this_ranks_heads_of_each(rng):
    heads, size, hidden = 4, 2, 3  # q rows 0..7, k rows 8..15, v rows 16..23
    full = rng.standard_normal((3 * heads * size, hidden)).astype(np.float32)
    qkv = layers.QKVColumnLinear(hidden, heads, size, tp_size=2, tp_rank=1)
    assert qkv.weight.full_shape == (24, 3)
    qkv.weight.load(full)
    np.testing.assert_array_equal(qkv.weight.data, np.concatenate([full[4:8], full[12:16], full[20:24]]))
    bias = np.arange(24, dtype=np.float32)
    qkv.bias.load(bias)
    np.testing.assert_array_equal(qkv.bias.data, [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23])


def test_lm_head_and_embedding_loaders_pad_the_last_vocab_shard(rng):
    table = rng.standard_normal((10, 3)).astype(np.float32)
    head = layers.LMHead(3, 10, tp_size=3, tp_rank=2, bias=True)
    emb = layers.Embedding(10, 3, tp_size=3, tp_rank=2, seed=0)
    for param in (head.weight, emb.weight):
        assert param.full_shape == (10, 3)
        param.load(table)
        np.testing.assert_array_equal(param.data[:2], table[8:10])
        assert not param.data[2:].any() and param.shape == (4, 3)
    head.bias.load(np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(head.bias.data, [8, 9, 0, 0])
    hidden_split = layers.Embedding(10, 5, tp_size=2, tp_rank=1, sharding_dim=1, seed=0)
    wide = rng.standard_normal((10, 5)).astype(np.float32)
    hidden_split.weight.load(wide)
    np.testing.assert_array_equal(hidden_split.weight.data, wide[:, 3:])
    logical = layers.Embedding(10, 3, tp_size=2, seed=0)  # logical mode holds the whole table
    logical.weight.load(table)
    np.testing.assert_array_equal(logical.weight.data, table)


def test_loading_a_checkpoint_tensor_of_the_wrong_shape_is_an_error(rng):
    col = layers.ColumnLinear(5, 7, tp_size=2, tp_rank=0)
    with pytest.raises(CheckpointError, match=r"'fc.weight' in ckpt: checkpoint tensor has shape \[4, 5\], expected \[7, 5\]"):
        col.weight.load(np.zeros((4, 5), np.float32), what="'fc.weight' in ckpt")


def test_same_seed_gives_slices_of_one_logical_weight():
    full = layers.ColumnLinear(4, 6, seed=3).weight.data
    pieces = [layers.ColumnLinear(4, 6, seed=3, tp_size=3, tp_rank=r).weight.data for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(pieces), full)


# ----------------------------------------------------------------------------- forward at tp 1..4
@pytest.mark.parametrize("tp_size", TP_SIZES)
@pytest.mark.parametrize("gather_output", [True, False])
def test_column_linear(tp_size, gather_output, rng, tp_run, weights_for):
    inputs = {"x": ("float32", ("batch", "seq", 5))}
    build = lambda m: layers.ColumnLinear(5, 7, gather_output=gather_output, **m.tp_kwargs())  # noqa: E731
    weights = weights_for(build(layers.Mapping()))
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    outs = tp_run(build, inputs, {"x": x}, tp_size, weights)
    expected = linear_ref(x, weights["weight"], weights["bias"])
    if gather_output:
        for out in outs:
            np.testing.assert_allclose(out, expected, **ATOL)
    else:  # each rank holds its array_split share of the 7 features
        np.testing.assert_allclose(np.concatenate(outs, axis=-1), expected, **ATOL)
        assert [o.shape[-1] for o in outs] == [len(s) for s in np.array_split(np.arange(7), tp_size)]


@pytest.mark.parametrize("tp_size", TP_SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_column_then_row_linear_adds_the_bias_once(tp_size, bias, rng, tp_run, weights_for):
    class Pair(layers.Module):
        def __init__(self, m):
            super().__init__()
            self.fc = layers.ColumnLinear(6, 7, gather_output=False, bias=bias, seed=1, **m.tp_kwargs())
            self.proj = layers.RowLinear(7, 4, bias=bias, seed=2, **m.tp_kwargs())

        def forward(self, x):
            return self.proj(self.fc(x))

    weights = weights_for(Pair(layers.Mapping()))
    x = rng.standard_normal((3, 6)).astype(np.float32)
    outs = tp_run(Pair, {"x": ("float32", ("tokens", 6))}, {"x": x}, tp_size, weights)
    hidden = linear_ref(x, weights["fc.weight"], weights.get("fc.bias"))
    expected = linear_ref(hidden, weights["proj.weight"], weights.get("proj.bias"))
    for out in outs:
        np.testing.assert_allclose(out, expected, **ATOL)


@pytest.mark.parametrize("tp_size", TP_SIZES)
@pytest.mark.parametrize("vocab", [12, 10])  # 10 does not divide by 3 or 4: padded shards
def test_lm_head_returns_exactly_the_vocab(tp_size, vocab, rng, tp_run, weights_for):
    build = lambda m: layers.LMHead(6, vocab, bias=True, **m.tp_kwargs())  # noqa: E731
    weights = weights_for(build(layers.Mapping()))
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    outs = tp_run(build, {"x": ("float32", ("batch", "seq", 6))}, {"x": x}, tp_size, weights)
    expected = linear_ref(x, weights["weight"], weights["bias"])
    for out in outs:
        assert out.shape == (2, 3, vocab)
        np.testing.assert_allclose(out, expected, **ATOL)


class TiedLM(layers.Module):
    def __init__(self, m, vocab=10, hidden=6):
        super().__init__()
        self.wte = layers.Embedding(vocab, hidden, seed=0, **m.tp_kwargs())
        self.lm_head = layers.LMHead(hidden, vocab, tied_embedding=self.wte, **m.tp_kwargs())

    def forward(self, ids):
        return self.lm_head(self.wte(ids))


def test_tied_head_shares_the_embedding_parameter():
    model = TiedLM(layers.Mapping(3, 1))
    assert model.lm_head.weight is model.wte.weight
    assert [name for name, _ in model.named_parameters()] == ["wte.weight"]


@pytest.mark.parametrize("tp_size", TP_SIZES)
def test_tied_embedding_and_lm_head_with_vocab_not_divisible(tp_size, rng, tp_run, weights_for, tmp_path):
    weights = weights_for(TiedLM(layers.Mapping()))
    ids = rng.integers(0, 10, size=(2, 4))
    engine_dir = tmp_path / "tied" if tp_size in (1, 3) else None  # two engines; the rest through the reference
    outs = tp_run(TiedLM, {"ids": ("int64", ("batch", "seq"))}, {"ids": ids}, tp_size, weights, engine_dir=engine_dir)
    table = weights["wte.weight"].astype(np.float64)
    expected = table[ids] @ table.T
    for out in outs:
        assert out.shape == (2, 4, 10)  # never the padded 12 columns
        np.testing.assert_allclose(out, expected, **ATOL)


# ----------------------------------------------------------------------------- errors
def test_tp_without_rank_is_refused_with_a_hint():
    with pytest.raises(GraphConstructionError, match=r"ColumnLinear 'fc': tp_size=2 needs tp_rank: .*one network per rank"):
        layers.ColumnLinear(4, 4, tp_size=2, name="fc")
    for make in (lambda: layers.RowLinear(4, 4, tp_size=2), lambda: layers.LMHead(4, 9, tp_size=3), lambda: layers.MLP(4, 8, tp_size=2)):
        with pytest.raises(GraphConstructionError, match=r"needs tp_rank"):
            make()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: layers.ColumnLinear(4, 3, tp_size=4, tp_rank=0, name="fc"), r"ColumnLinear 'fc': out_features=3 cannot be split over tp_size=4"),
        (lambda: layers.RowLinear(2, 3, tp_size=3, tp_rank=0), r"RowLinear: in_features=2 cannot be split over tp_size=3"),
        (lambda: layers.QKVColumnLinear(8, 6, 2, tp_size=4, tp_rank=0), r"QKVColumnLinear: num_heads=6 is not divisible by tp_size=4"),
        (lambda: layers.ColumnLinear(0, 3), r"ColumnLinear: in_features must be a positive int, got 0"),
        (lambda: layers.ColumnLinear(4, 3, dtype="int32"), r"dtype must be float32, float16 or bfloat16, got int32"),
        (lambda: layers.ColumnLinear(4, 4, tp_size=2, tp_rank=2), r"tp_rank=2 is outside tp_group \[0, 1\]"),
    ],
)
def test_bad_layer_arguments(make, message):
    with pytest.raises(GraphConstructionError, match=message):
        make()


@pytest.mark.parametrize(
    "emb_kwargs, message",
    [
        ({"sharding_dim": 1}, r"tied embedding must be split over the vocabulary \(sharding_dim=0\).*got sharding_dim=1"),
        ({"num_embeddings": 11}, r"cannot tie to an embedding with num_embeddings=11; this head has 10"),
        ({"tp_rank": 0}, r"cannot tie to an embedding with tp_rank=0; this head has 1"),
        ({"dtype": "float16"}, r"cannot tie to an embedding with dtype=gb.float16; this head has gb.float32"),
    ],
)
def test_tied_embedding_must_match(emb_kwargs, message):
    args = {"num_embeddings": 10, "embedding_dim": 4, "tp_size": 2, "tp_rank": 1, "seed": 0, **emb_kwargs}
    emb = layers.Embedding(**args)
    with pytest.raises(GraphConstructionError, match=message):
        layers.LMHead(4, 10, tp_size=2, tp_rank=1, tied_embedding=emb, name="lm_head")


def test_layers_of_two_ranks_in_one_network_are_refused():
    net = gb.Network("mixed")
    with net:
        x = net.add_input("x", "float32", (2, 2))  # each rank reads 2 of the 4 input features
        layers.RowLinear(4, 4, tp_size=2, tp_rank=0)(x)
        with pytest.raises(GraphConstructionError, match=r"RowLinear 'r1': network 'mixed' is already marked tp_position=0, but this layer is rank 1"):
            layers.RowLinear(4, 4, tp_size=2, tp_rank=1, name="r1")(x)


def test_no_init_gives_zero_weights_of_the_right_shapes(rng):
    with layers.no_init():
        col = layers.ColumnLinear(4, 6, tp_size=2, tp_rank=1, seed=3)
        emb = layers.Embedding(10, 4, tp_size=3, tp_rank=2, seed=3)
        given = layers.Embedding(3, 2, weight=np.ones((3, 2), np.float32))
    assert col.weight.shape == (3, 4) and not col.weight.data.any()
    assert emb.weight.shape == (4, 4) and not emb.weight.data.any()
    np.testing.assert_array_equal(given.weight.data, 1.0)  # a given table is still used
    assert layers.ColumnLinear(4, 6, seed=3).weight.data.any()  # outside the block: random again


def test_loaded_parameters_own_their_data(rng):
    full = rng.standard_normal((8, 6)).astype(np.float32)
    layer = layers.ColumnLinear(6, 8, tp_size=2, tp_rank=1, gather_output=False)
    layer.weight.load(full)
    assert not np.shares_memory(layer.weight.data, full)
    expected = full[4:].copy()
    full[:] = 0  # the checkpoint buffer is reused or unmapped
    np.testing.assert_array_equal(layer.weight.data, expected)
