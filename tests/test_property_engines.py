"""Property-based tests: random small networks from the op set, run by the reference interpreter
and by engines at tp_size 1 and 2 (plugin and standard-ONNX lowering), must agree.

Every network starts with a tensor-parallel embedding of token ids and then applies a random chain
of ops drawn from the core set, mixing in constants and earlier tensors; a random subset of the
tensors it made becomes outputs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import graphbuild as gb
from graphbuild import functional as F

VOCAB, HIDDEN = 13, 6


def _unary(data, x, rng):
    kind = data.draw(st.sampled_from(["relu", "silu", "gelu", "gelu_tanh", "softmax", "layer_norm", "rms_norm", "neg", "identity"]))
    if kind == "layer_norm":
        return F.layer_norm(x, gb.constant(rng.standard_normal(HIDDEN).astype(np.float32)), gb.constant(rng.standard_normal(HIDDEN).astype(np.float32)))
    if kind == "rms_norm":
        return F.rms_norm(x, gb.constant(rng.standard_normal(HIDDEN).astype(np.float32)))
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "softmax":
        return F.softmax(x, axis=-1)
    if kind == "neg":
        return -x
    return getattr(F, kind)(x)


def _binary(data, x, y, rng):
    kind = data.draw(st.sampled_from(["add", "sub", "mul", "div_const", "matmul", "where", "scalar"]))
    if kind == "div_const":
        return x / gb.constant((rng.uniform(0.5, 2.0, HIDDEN) * rng.choice([-1, 1], HIDDEN)).astype(np.float32))
    if kind == "matmul":
        return x @ gb.constant((rng.standard_normal((HIDDEN, HIDDEN)) / HIDDEN).astype(np.float32))
    if kind == "where":
        return F.where(F.less(x, y), x, y)
    if kind == "scalar":
        return x * data.draw(st.sampled_from([0.5, 2.0, -1.5]))
    return getattr(F, kind)(x, y)


def _reshaping(data, x):
    kind = data.draw(st.sampled_from(["split_concat", "reshape", "transpose", "slice_concat", "unsqueeze_squeeze"]))
    if kind == "split_concat":
        a, b = F.split(x, [2, HIDDEN - 2], axis=-1)
        return F.concat([b, a], axis=-1)
    if kind == "reshape":
        return F.reshape(F.reshape(x, ("batch", "seq", HIDDEN // 2, 2)), ("batch", "seq", HIDDEN))
    if kind == "transpose":
        return F.transpose(F.transpose(x, [2, 0, 1]), [1, 2, 0])
    if kind == "slice_concat":
        head = F.slice_tensor(x, [0], [3], axes=[2])
        tail = F.slice_tensor(x, [3], [None], axes=[2])
        return F.concat([tail, head], axis=2)
    return F.squeeze(F.unsqueeze(x, [0]), [0])


@st.composite
def networks(draw, tp_size):
    data = draw(st.data())
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    sharding_dim = draw(st.sampled_from([0, 1]))
    net = gb.Network("random")
    with net:
        ids = net.add_input("ids", draw(st.sampled_from(["int32", "int64"])), ("batch", "seq"))
        table = gb.constant(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), name="wte.weight")
        pool = [F.embedding(ids, table, tp_size=tp_size, sharding_dim=sharding_dim, name="wte")]
        for step in range(draw(st.integers(1, 6))):
            x = data.draw(st.sampled_from(pool))
            family = data.draw(st.sampled_from(["unary", "binary", "reshaping"]))
            if family == "unary":
                pool.append(_unary(data, x, rng))
            elif family == "binary":
                pool.append(_binary(data, x, data.draw(st.sampled_from(pool)), rng))
            else:
                pool.append(_reshaping(data, x))
        chosen = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=3, unique=True))
        for index in sorted(set(chosen) | {len(pool) - 1}):
            net.mark_output(pool[index], f"out{index}")
    feeds = {"ids": rng.integers(0, VOCAB, size=(2, draw(st.integers(1, 4)))).astype(net.inputs["ids"].dtype.numpy)}
    return net, feeds


def _check(tmp_path_factory, net, feeds, use_plugin):
    expected = gb.reference.run(net, feeds)
    engine = gb.build(net, tmp_path_factory.mktemp("engine") / "e", use_plugin=use_plugin, verify_each_pass=True)
    actual = engine.run(feeds)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        np.testing.assert_allclose(actual[name], expected[name], rtol=2e-4, atol=2e-5, err_msg=f"output {name}\n{net}")


@given(case=networks(tp_size=1), use_plugin=st.booleans())
def test_random_networks_tp1(tmp_path_factory, case, use_plugin):
    _check(tmp_path_factory, *case, use_plugin)


@given(case=networks(tp_size=2), use_plugin=st.booleans())
def test_random_networks_tp2(tmp_path_factory, case, use_plugin):
    _check(tmp_path_factory, *case, use_plugin)
