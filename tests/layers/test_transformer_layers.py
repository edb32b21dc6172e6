"""Attention, MLP, GatedMLP, LayerNorm, RMSNorm and PositionEmbedding, built rank-local at tp 1..4
and compared with plain numpy implementations written here (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import layers, reference
from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError

TP_SIZES = [1, 2, 3, 4]
ATOL = dict(rtol=2e-5, atol=2e-5)
erf = np.vectorize(math.erf, otypes=[np.float64])


# ----------------------------------------------------------------------------- numpy references
def linear(x, w, b=None):
    y = x @ w.astype(np.float64).T
    return y if b is None else y + b


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_ref(x, w, heads, *, causal=False, bias=None, prefix=""):
    x = x.astype(np.float64)
    batch, seq, _ = x.shape
    q, k, v = np.split(linear(x, w[f"{prefix}qkv.weight"], w[f"{prefix}qkv.bias"]), 3, axis=-1)
    size = q.shape[-1] // heads
    q, k, v = (t.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = np.where(np.triu(np.ones((seq, seq), bool), 1), -np.inf, scores)
    context = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * size)
    return linear(context, w[f"{prefix}dense.weight"], w[f"{prefix}dense.bias"])


def gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def layer_norm_ref(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("tp_size", TP_SIZES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_attention_with_padding_mask(tp_size, causal, rng, tp_run, weights_for):
    heads, hidden = 12, 24  # 12 heads divide over 1, 2, 3 and 4 ranks
    build = lambda m: layers.Attention(hidden, heads, causal=causal, **m.tp_kwargs())  # noqa: E731
    weights = weights_for(build(layers.Mapping()), scale=0.3)
    x = rng.standard_normal((2, 5, hidden)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    inputs = {"x": ("float32", ("batch", "seq", hidden)), "mask": ("int64", ("batch", "seq"))}
    outs = tp_run(build, inputs, {"x": x, "mask": mask}, tp_size, weights, forward=lambda layer, x, m: layer(x, layers.padding_mask_bias(m)))
    bias = np.where(mask[:, None, None, :] == 1, 0.0, -np.inf)
    expected = attention_ref(x, weights, heads, causal=causal, bias=bias)
    for out in outs:
        np.testing.assert_allclose(out, expected, **ATOL)


def test_causal_attention_ignores_later_tokens(rng, weights_for):
    """Rows before position 3 do not change when tokens from 3 on do (numpy-free check of causality)."""
    attn = layers.Attention(8, 2, causal=True, seed=1)
    for name, param in attn.named_parameters():
        param.load(weights_for(attn)[name])
    net = gb.Network("causal")
    with net:
        x = net.add_input("x", "float32", (1, "seq", 8))
        net.mark_output(attn(x), "y")
    first = rng.standard_normal((1, 6, 8)).astype(np.float32)
    second = first.copy()
    second[:, 3:] = rng.standard_normal((1, 3, 8))
    a, b = (reference.run(net, {"x": v})["y"] for v in (first, second))
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert not np.allclose(a[:, 3:], b[:, 3:])


@pytest.mark.parametrize("tp_size", [2, 3])
def test_attention_engine_with_a_full_additive_mask(tp_size, rng, tp_run, weights_for, tmp_path):
    heads, hidden = 6, 12
    build = lambda m: layers.Attention(hidden, heads, causal=True, **m.tp_kwargs())  # noqa: E731
    weights = weights_for(build(layers.Mapping()), scale=0.3)
    x = rng.standard_normal((2, 4, hidden)).astype(np.float32)
    additive = (rng.standard_normal((2, 1, 4, 4)) * 2).astype(np.float32)
    inputs = {"x": ("float32", ("batch", "seq", hidden)), "bias": ("float32", ("batch", 1, "seq", "seq"))}
    outs = tp_run(build, inputs, {"x": x, "bias": additive}, tp_size, weights, engine_dir=tmp_path / "attn")
    expected = attention_ref(x, weights, heads, causal=True, bias=additive)
    for out in outs:
        np.testing.assert_allclose(out, expected, **ATOL)


def test_attention_errors():
    with pytest.raises(GraphConstructionError, match=r"Attention 'attn': num_heads=6 is not divisible by tp_size=4"):
        layers.Attention(24, 6, tp_size=4, tp_rank=0, name="attn")
    with pytest.raises(GraphConstructionError, match=r"Attention: hidden_size=10 is not divisible by num_heads=4; give head_size"):
        layers.Attention(10, 4)
    attn = layers.Attention(8, 2, name="attn")
    net = gb.Network("n")
    with net:
        x = net.add_input("x", "float32", (3, 8))
        with pytest.raises(GraphConstructionError, match=r"Attention 'attn': hidden_states must be \[batch, seq, hidden\], got shape \(3, 8\)"):
            attn(x)


def test_attention_with_explicit_head_size(rng, tp_run, weights_for):
    build = lambda m: layers.Attention(6, 4, head_size=3, **m.tp_kwargs())  # noqa: E731  (heads * size != hidden)
    weights = weights_for(build(layers.Mapping()), scale=0.3)
    assert weights["qkv.weight"].shape == (36, 6) and weights["dense.weight"].shape == (6, 12)
    x = rng.standard_normal((1, 3, 6)).astype(np.float32)
    for out in tp_run(build, {"x": ("float32", (1, "seq", 6))}, {"x": x}, 2, weights):
        np.testing.assert_allclose(out, attention_ref(x, weights, 4), **ATOL)


# ----------------------------------------------------------------------------- MLPs
@pytest.mark.parametrize("tp_size", TP_SIZES)
@pytest.mark.parametrize("hidden_act, approximate", [("gelu", "none"), ("gelu_new", "tanh")])
def test_mlp(tp_size, hidden_act, approximate, rng, tp_run, weights_for, tmp_path):
    build = lambda m: layers.MLP(6, 10, hidden_act=hidden_act, **m.tp_kwargs())  # noqa: E731  (10 over 3 or 4 is uneven)
    weights = weights_for(build(layers.Mapping()))
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    engine_dir = tmp_path / "mlp" if tp_size == 3 and approximate == "none" else None
    outs = tp_run(build, {"x": ("float32", ("batch", "seq", 6))}, {"x": x}, tp_size, weights, engine_dir=engine_dir)
    hidden = gelu(linear(x.astype(np.float64), weights["fc.weight"], weights["fc.bias"]), approximate)
    expected = linear(hidden, weights["proj.weight"], weights["proj.bias"])
    for out in outs:
        np.testing.assert_allclose(out, expected, **ATOL)


@pytest.mark.parametrize("tp_size", TP_SIZES)
def test_gated_mlp(tp_size, rng, tp_run, weights_for):
    build = lambda m: layers.GatedMLP(6, 9, **m.tp_kwargs())  # noqa: E731
    weights = weights_for(build(layers.Mapping()))
    assert sorted(weights) == ["fc.weight", "gate.weight", "proj.weight"]  # no biases by default
    x = rng.standard_normal((4, 6)).astype(np.float32)
    outs = tp_run(build, {"x": ("float32", ("tokens", 6))}, {"x": x}, tp_size, weights)
    x64 = x.astype(np.float64)
    gate = linear(x64, weights["gate.weight"])
    expected = linear(gate / (1 + np.exp(-gate)) * linear(x64, weights["fc.weight"]), weights["proj.weight"])
    for out in outs:
        np.testing.assert_allclose(out, expected, **ATOL)


def test_mlp_unknown_activation():
    with pytest.raises(GraphConstructionError, match=r"MLP 'mlp': unknown hidden_act 'gelu_fast'; choose one of gelu, gelu_new"):
        layers.MLP(4, 8, hidden_act="gelu_fast", name="mlp")


# ----------------------------------------------------------------------------- norms, positions, a block
class Block(layers.Module):
    """A BERT-style post-norm encoder block with learned positions."""

    def __init__(self, m, hidden=12, heads=12):
        super().__init__()
        tp = m.tp_kwargs()
        self.wpe = layers.PositionEmbedding(16, hidden, seed=3, **tp)
        self.attention = layers.Attention(hidden, heads, **tp)
        self.ln1 = layers.LayerNorm(hidden, eps=1e-12)
        self.mlp = layers.MLP(hidden, 20, **tp)
        self.ln2 = layers.RMSNorm(hidden, eps=1e-6)

    def forward(self, x, ids):
        x = x + self.wpe(ids)
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.mlp(x))


@pytest.mark.parametrize("tp_size", TP_SIZES)
def test_block_with_norms_and_derived_positions(tp_size, rng, tp_run, weights_for):
    weights = weights_for(Block(layers.Mapping()), scale=0.3)
    x = rng.standard_normal((2, 5, 12)).astype(np.float32)
    ids = rng.integers(0, 100, size=(2, 5))
    inputs = {"x": ("float32", ("batch", "seq", 12)), "ids": ("int64", ("batch", "seq"))}
    outs = tp_run(Block, inputs, {"x": x, "ids": ids}, tp_size, weights)
    h = x.astype(np.float64) + weights["wpe.weight"][:5][None]
    h = layer_norm_ref(h + attention_ref(h, weights, 12, prefix="attention."), weights["ln1.weight"], weights["ln1.bias"], 1e-12)
    h = h + linear(gelu(linear(h, weights["mlp.fc.weight"], weights["mlp.fc.bias"]), "none"), weights["mlp.proj.weight"], weights["mlp.proj.bias"])
    expected = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6) * weights["ln2.weight"]
    for out in outs:
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tp_size", TP_SIZES)
@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_position_embedding_with_given_ids(tp_size, sharding_dim, rng, tp_run, weights_for):
    build = lambda m: layers.PositionEmbedding(9, 5, sharding_dim=sharding_dim, seed=0, **m.tp_kwargs())  # noqa: E731
    weights = weights_for(build(layers.Mapping()))
    positions = rng.integers(0, 9, size=(2, 4))
    inputs = {"ids": ("int64", ("batch", "seq")), "pos": ("int64", ("batch", "seq"))}
    outs = tp_run(build, inputs, {"ids": positions, "pos": positions}, tp_size, weights, forward=lambda layer, ids, pos: layer(ids, pos))
    for out in outs:
        np.testing.assert_array_equal(out, weights["weight"][positions])


def test_derived_positions_have_a_broadcast_batch_axis(rng):
    wpe = layers.PositionEmbedding(8, 3, seed=2, name="wpe")
    net = gb.Network("pos")
    with net:
        ids = net.add_input("ids", "int64", ("batch", "seq"))
        y = wpe(ids)
        net.mark_output(y, "y")
    assert y.shape == (1, "seq", 3)
    out = reference.run(net, {"ids": rng.integers(0, 50, size=(3, 6))})["y"]
    np.testing.assert_array_equal(out, wpe.weight.data[None, :6])
    with pytest.raises(gb.OutOfRangeIdError):  # 9 positions from a table of 8
        reference.run(net, {"ids": np.zeros((1, 9), np.int64)})


def test_norm_layers_match_numpy_and_check_arguments(rng):
    ln, rms = layers.LayerNorm(6, eps=1e-5, name="ln"), layers.RMSNorm(6, name="rms")
    ln.weight.load(rng.standard_normal(6))
    ln.bias.load(rng.standard_normal(6))
    rms.weight.load(rng.standard_normal(6))
    net = gb.Network("norms")
    with net:
        x = net.add_input("x", "float32", ("n", 6))
        net.mark_output(ln(x), "ln")
        net.mark_output(rms(x), "rms")
    assert sorted(net.constants) == ["ln.bias", "ln.weight", "rms.weight"]
    x_np = rng.standard_normal((3, 6)).astype(np.float32)
    out = reference.run(net, {"x": x_np})
    x64 = x_np.astype(np.float64)
    np.testing.assert_allclose(out["ln"], layer_norm_ref(x64, ln.weight.data, ln.bias.data, 1e-5), **ATOL)
    np.testing.assert_allclose(out["rms"], x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * rms.weight.data, **ATOL)
    assert layers.LayerNorm(4, bias=False).bias is None
    with pytest.raises(GraphConstructionError, match=r"LayerNorm 'ln': eps must be a non-negative float, got -1"):
        layers.LayerNorm(4, eps=-1, name="ln")
    with pytest.raises(GraphConstructionError, match=r"RMSNorm: normalized_shape must be a positive int, got 0"):
        layers.RMSNorm(0)


# ----------------------------------------------------------------------------- mean pooling + L2 norm with the new ops
def test_masked_mean_pooling_and_l2_normalisation(rng):
    net = gb.Network("pool")
    with net:
        h = net.add_input("h", "float32", ("batch", "seq", 4))
        mask = net.add_input("mask", "int64", ("batch", "seq"))
        m = F.unsqueeze(F.cast(mask, "float32"), -1)
        pooled = F.reduce_sum(h * m, 1) / F.maximum(F.reduce_sum(m, 1), 1e-9)
        norm = F.sqrt(F.reduce_sum(pooled * pooled, -1, keepdims=True))
        net.mark_output(pooled / F.maximum(norm, 1e-12), "y")
    h_np = rng.standard_normal((2, 3, 4)).astype(np.float32)
    mask_np = np.array([[1, 1, 0], [1, 1, 1]])
    out = reference.run(net, {"h": h_np, "mask": mask_np})["y"]
    mean = (h_np * mask_np[..., None]).sum(1) / mask_np.sum(1, keepdims=True)
    np.testing.assert_allclose(out, mean / np.linalg.norm(mean, axis=-1, keepdims=True), **ATOL)


def test_mapping_and_build_rank_networks():
    assert layers.Mapping.ranks(2, [4, 6]) == [layers.Mapping(2, 4, (4, 6)), layers.Mapping(2, 6, (4, 6))]
    assert layers.Mapping(2, 1).tp_kwargs() == {"tp_size": 2, "tp_group": (0, 1), "tp_rank": 1}
    with pytest.raises(GraphConstructionError, match=r"Mapping: tp_rank=2 is outside tp_group \[0, 1\]"):
        layers.Mapping(2, 2)
    with pytest.raises(GraphConstructionError, match=r"the factory returned NoneType for rank 0"):
        layers.build_rank_networks(lambda m: None, 2)


@pytest.mark.parametrize("dtype, tolerance", [("float16", 5e-3), ("bfloat16", 5e-2)])
def test_half_precision_attention_and_mlp_engine(dtype, tolerance, rng, tp_run, weights_for, tmp_path):
    class HalfBlock(layers.Module):
        def __init__(self, m):
            super().__init__()
            self.attention = layers.Attention(8, 4, causal=True, dtype=dtype, **m.tp_kwargs())
            self.mlp = layers.MLP(8, 12, hidden_act="gelu_tanh", dtype=dtype, **m.tp_kwargs())

        def forward(self, x):
            return self.mlp(x + self.attention(x))

    numpy_dtype = gb.dtypes.as_dtype(dtype).numpy
    weights = {k: v.astype(numpy_dtype).astype(np.float32) for k, v in weights_for(HalfBlock(layers.Mapping()), scale=0.3).items()}
    x = rng.standard_normal((2, 3, 8)).astype(numpy_dtype)
    outs = tp_run(HalfBlock, {"x": (dtype, ("batch", "seq", 8))}, {"x": x}, 2, weights, engine_dir=tmp_path / dtype)
    h = x.astype(np.float64)
    h = h + attention_ref(h, weights, 4, causal=True, prefix="attention.")
    expected = linear(gelu(linear(h, weights["mlp.fc.weight"], weights["mlp.fc.bias"]), "tanh"), weights["mlp.proj.weight"], weights["mlp.proj.bias"])
    for out in outs:
        assert out.dtype == numpy_dtype
        np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tolerance, atol=tolerance)
