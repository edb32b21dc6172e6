"""Property-based tests: random small networks from the op set, run by the reference interpreter
and by engines at tp_size 1 and 2 (plugin and standard-ONNX lowering), must agree on every rank.

Every network starts with a tensor-parallel embedding of token ids, in float32, float16 or
bfloat16, and then applies a random chain of ops drawn from the core set, mixing in constants (of
the network's dtype) and earlier tensors; a random subset of the tensors it made becomes outputs.
The reference interpreter is checked against numpy on the embedding itself.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import graphbuild as gb
from graphbuild import functional as F

VOCAB, HIDDEN = 13, 6


def _const(array, x):
    """A constant of ``x``'s dtype."""
    return gb.constant(np.asarray(array, dtype=np.float32).astype(x.dtype.numpy))


def _unary(data, x, rng):
    kind = data.draw(st.sampled_from(["relu", "silu", "gelu", "gelu_tanh", "softmax", "layer_norm", "rms_norm", "neg", "identity"]))
    if kind == "layer_norm":
        return F.layer_norm(x, _const(rng.standard_normal(HIDDEN), x), _const(rng.standard_normal(HIDDEN), x))
    if kind == "rms_norm":
        return F.rms_norm(x, _const(rng.standard_normal(HIDDEN), x))
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
        return x / _const(rng.uniform(0.5, 2.0, HIDDEN) * rng.choice([-1, 1], HIDDEN), x)
    if kind == "matmul":
        return x @ _const(rng.standard_normal((HIDDEN, HIDDEN)) / HIDDEN, x)
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
    dtype = gb.dtypes.as_dtype(draw(st.sampled_from(["float32", "float16", "bfloat16"])))
    net = gb.Network("random")
    with net:
        ids = net.add_input("ids", draw(st.sampled_from(["int32", "int64"])), ("batch", "seq"))
        table = gb.constant(rng.standard_normal((VOCAB, HIDDEN)).astype(dtype.numpy), name="wte.weight")
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


#: Agreement between engine and reference: float32 rounding for float32; narrow floats compute in
#: float32 in both and round once, but a different float32 result may round to a neighbour.
TOLERANCE = {"float32": (2e-4, 2e-5), "float16": (4e-3, 4e-3), "bfloat16": (3e-2, 3e-2)}


def _check(tmp_path_factory, net, feeds, use_plugin):
    expected = gb.reference.run(net, feeds)
    wte = net.find_node("wte")
    table = wte.inputs[1].const
    np.testing.assert_array_equal(gb.reference.run(_only(net, "wte"), feeds)["e"], table[feeds["ids"]])
    engine = gb.build(net, tmp_path_factory.mktemp("engine") / "e", use_plugin=use_plugin, verify_each_pass=True)
    rtol, atol = TOLERANCE[table.dtype.name if table.dtype.name in TOLERANCE else "bfloat16"]
    for rank, actual in enumerate(engine.run_all_ranks(feeds)):
        assert actual.keys() == expected.keys()
        for name in expected:
            assert actual[name].shape == expected[name].shape, name
            assert actual[name].dtype == expected[name].dtype, name
            np.testing.assert_allclose(
                actual[name].astype(np.float32), expected[name].astype(np.float32), rtol=rtol, atol=atol, err_msg=f"rank {rank}, output {name}\n{net}"
            )


def _only(net, node_name):
    """A copy of ``net`` whose only output is ``node_name``'s (named 'e'), for a direct numpy check."""
    twin = net.copy()
    twin.outputs = {"e": twin.find_node(node_name).output}
    from graphbuild.passes import DeadCodeEliminationPass

    return DeadCodeEliminationPass()(twin).network


@given(case=networks(tp_size=1), use_plugin=st.booleans())
def test_random_networks_tp1(tmp_path_factory, case, use_plugin):
    _check(tmp_path_factory, *case, use_plugin)


@given(case=networks(tp_size=2), use_plugin=st.booleans())
def test_random_networks_tp2(tmp_path_factory, case, use_plugin):
    _check(tmp_path_factory, *case, use_plugin)
