"""Shape ops: symbolic shape rules and their error messages, evaluators vs numpy indexing, and the
ONNX lowering (run-time shape tensors included) vs the evaluator for every dtype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import reference

ALL = [gb.float32, gb.float16, gb.bfloat16, gb.int32, gb.int64, gb.dtypes.bool_]
BIG = 2**63 - 1


def one_input(dtype, input_shape, fn, **kwargs):
    net = gb.Network("shape")
    with net:
        x = net.add_input("x", dtype, input_shape)
        out = fn(x, **kwargs)
        for i, tensor in enumerate(out if isinstance(out, tuple) else (out,)):
            net.mark_output(tensor, f"y{i}")
    return net


# ------------------------------------------------------------------------------------ reshape
@pytest.mark.parametrize(
    "source,target,expected",
    [
        ((2, 3, 4), (6, -1), (6, 4)),
        (("batch", "seq", 512), ("batch", "seq", 8, 64), ("batch", "seq", 8, 64)),
        (("batch", "seq", 8, 64), ("batch", "seq", -1), ("batch", "seq", 512)),
        (("batch", "seq", 8, 64), ("seq", -1, "batch"), ("seq", 512, "batch")),
        (("n", "n", 6), ("n", 2, 3, "n"), ("n", 2, 3, "n")),
        ((0, 3), (3, 0), (3, 0)),
    ],
)
def test_reshape_shapes(source, target, expected):
    net = one_input("float32", source, F.reshape, shape=target)
    assert net.outputs["y0"].shape == expected


@pytest.mark.parametrize(
    "source,target,problem",
    [
        ((2, 3), (4, 2), "cannot reshape (2, 3) to [4, 2]: element counts differ"),
        (("batch", 512), ("batch", 8, 32), "cannot reshape (batch, 512) to ['batch', 8, 32]: element counts differ"),
        (("batch", "seq", 512), (-1, 512), "cannot infer -1 reshaping (batch, seq, 512) to [-1, 512]: symbolic dims ['batch', 'seq'] of the input are not in the target"),
        (("n", 4), ("n", "n", -1), "cannot infer -1 reshaping (n, 4) to ['n', 'n', -1]: symbols ['n'] appear more often in the target than in the input"),
        ((6, 4), (-1, 5), "cannot reshape (6, 4) to [-1, 5]: 24 elements do not divide into groups of 5"),
        ((6, 4), (-1, -1), "at most one target dim may be -1"),
        ((6, 4), ("batch", 24), "target symbol 'batch' is not a dim of the input (6, 4)"),
        ((6, 4), (-2, 12), "target dims must be >= -1, got -2"),
        ((6, 4), (2.5, 12), "a target dim must be an int, got 2.5"),
    ],
)
def test_reshape_errors(source, target, problem):
    with pytest.raises(gb.GraphConstructionError) as error:
        one_input("float32", source, F.reshape, shape=target, name="view")
    assert str(error.value).startswith(f"reshape 'view': {problem}")


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_reshape_values_with_run_time_shape(dtype, make_array, engine_check):
    net = one_input(dtype, ("batch", "seq", 12), lambda x: F.reshape(F.reshape(x, ("seq", -1, "batch")), ("batch", "seq", 3, 4)))
    for batch, seq in ((2, 3), (1, 5)):
        x = make_array((batch, seq, 12), dtype)
        out = engine_check(net, {"x": x})["y0"]
        np.testing.assert_array_equal(out, x.reshape(seq, 12, batch).reshape(batch, seq, 3, 4))


def test_reshape_to_zero_sized(engine_check):
    net = one_input("float32", (0, 3), F.reshape, shape=(3, 0))
    assert engine_check(net, {"x": np.zeros((0, 3), np.float32)})["y0"].shape == (3, 0)


# ------------------------------------------------------------------------------------ transpose
@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("perm", [None, (1, 0, 2), (-1, 0, 1)])
def test_transpose(dtype, perm, make_array, engine_check):
    net = one_input(dtype, ("batch", 3, "d"), F.transpose, perm=perm)
    order = (2, 1, 0) if perm is None else tuple(p % 3 for p in perm)
    assert net.outputs["y0"].shape == tuple(("batch", 3, "d")[i] for i in order)
    x = make_array((2, 3, 4), dtype)
    np.testing.assert_array_equal(engine_check(net, {"x": x})["y0"], x.transpose(order))


def test_transpose_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"transpose 't': perm \[0, 0\] names an axis twice"):
        one_input("float32", (2, 3), F.transpose, perm=(0, 0), name="t")
    with pytest.raises(gb.GraphConstructionError, match=r"transpose 't_1': perm \[1\] must name each of the 2 axes once"):
        one_input("float32", (2, 3), F.transpose, perm=(1,), name="t_1")


# ------------------------------------------------------------------------------------ concat
def two_input_concat(dtype, shape_a, shape_b, axis, name=None):
    net = gb.Network("concat")
    with net:
        a = net.add_input("a", dtype, shape_a)
        b = net.add_input("b", dtype, shape_b)
        net.mark_output(F.concat([a, b, a], axis=axis, name=name), "y")
    return net


@pytest.mark.parametrize(
    "shape_a,shape_b,axis,expected",
    [
        ((2, 3), (4, 3), 0, (8, 3)),
        (("b", "past", 4), ("b", "seq", 4), 1, ("b", "past_plus_seq_plus_past", 4)),
        (("b", "seq", 4), ("b", 2, 4), -2, ("b", "seq_plus_seq_plus_2", 4)),
    ],
)
def test_concat_shapes(shape_a, shape_b, axis, expected):
    assert two_input_concat("float32", shape_a, shape_b, axis).outputs["y"].shape == expected


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_concat_values(dtype, make_array, engine_check):
    net = two_input_concat(dtype, ("n", 2), ("n", 5), 1)
    a, b = make_array((3, 2), dtype), make_array((3, 5), dtype)
    np.testing.assert_array_equal(engine_check(net, {"a": a, "b": b})["y"], np.concatenate([a, b, a], axis=1))


def test_concat_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"concat 'c': dims off the concat axis 0 must match: \(2, 3\) vs \(2, 4\) differ at axis 1"):
        two_input_concat("float32", (2, 3), (2, 4), 0, name="c")
    with pytest.raises(gb.GraphConstructionError, match=r"concat 'c': dims off the concat axis 1 must match: \(n, 3\) vs \(2, 4\)"):
        two_input_concat("float32", ("n", 3), (2, 4), 1, name="c")
    with pytest.raises(gb.GraphConstructionError, match=r"concat 'c': inputs must share one rank"):
        two_input_concat("float32", (2, 3), (2,), 0, name="c")
    net = gb.Network("concat")
    with net:
        net.add_input("a", "float32", (2,))
        with pytest.raises(gb.GraphConstructionError, match=r"concat: expected a non-empty sequence of tensors"):
            F.concat([])


# ------------------------------------------------------------------------------------ split
@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("sizes,axis", [((1, 4, 2), 1), (2, 0), ((3, 0, 4), -1)])
def test_split(dtype, sizes, axis, make_array, engine_check):
    shape = (4, 7, 7)
    net = one_input(dtype, shape, F.split, sizes=sizes, axis=axis, name="parts")
    expected_sizes = (shape[axis] // sizes,) * sizes if isinstance(sizes, int) else sizes
    node = net.outputs["y0"].producer
    assert node.attrs["sizes"] == tuple(expected_sizes) and node.name == "parts"
    assert [v.name for v in node.outputs] == [f"parts:{i}" for i in range(len(expected_sizes))]
    x = make_array(shape, dtype)
    out = engine_check(net, {"x": x})
    expected = np.split(x, np.cumsum(expected_sizes)[:-1], axis=axis)
    for i, piece in enumerate(expected):
        np.testing.assert_array_equal(out[f"y{i}"], piece)


def test_split_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"split 's': axis 0 of \(n, 4\) is symbolic \('n'\); split needs a static axis"):
        one_input("float32", ("n", 4), F.split, sizes=(1, 1), axis=0, name="s")
    with pytest.raises(gb.GraphConstructionError, match=r"split 's_1': sizes \[1, 2\] add up to 3, but axis 1 of \(n, 4\) is 4"):
        one_input("float32", ("n", 4), F.split, sizes=(1, 2), axis=1, name="s_1")
    with pytest.raises(gb.GraphConstructionError, match=r"split: axis 1 of size 4 does not divide into 3 equal static pieces; give sizes"):
        one_input("float32", ("n", 4), F.split, sizes=3, axis=1)


# ------------------------------------------------------------------------------------ slice
SLICES = [
    ([1], [None], None, None),
    ([0, -3], [2, None], [0, 2], None),
    ([None], [None], [1], [-1]),
    ([5], [-8], [2], [-2]),
    ([-100], [100], [2], [3]),
    ([3], [1], [0], None),
]


@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_values(dtype, starts, ends, axes, steps, make_array, engine_check):
    shape = (4, 5, 9)
    net = one_input(dtype, shape, F.slice_tensor, starts=starts, ends=ends, axes=axes, steps=steps)
    index = [slice(None)] * 3
    for i, (start, end) in enumerate(zip(starts, ends)):
        index[axes[i] if axes else i] = slice(start, end, steps[i] if steps else None)
    x = make_array(shape, dtype)
    expected = x[tuple(index)]
    assert net.outputs["y0"].shape == expected.shape
    np.testing.assert_array_equal(engine_check(net, {"x": x})["y0"], expected)


bounds = st.one_of(st.none(), st.integers(-12, 12))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 9), start=bounds, end=bounds, step=st.integers(-4, 4).filter(bool))
def test_static_slices_agree_with_numpy(size, start, end, step, engine_check):
    net = one_input("int32", (2, size), F.slice_tensor, starts=[start], ends=[end], axes=[1], steps=[step])
    x = np.arange(2 * size, dtype=np.int32).reshape(2, size)
    expected = x[:, start:end:step]
    assert net.outputs["y0"].shape == expected.shape
    np.testing.assert_array_equal(engine_check(net, {"x": x})["y0"], expected)


@pytest.mark.parametrize(
    "starts,ends,steps,dim",
    [
        ([0], [None], None, "seq"),
        ([None], [None], [-1], "seq"),
        ([1], [None], None, "seq_slice_1_end"),
        ([0], [-1], None, "seq_slice_0_m1"),
        ([None], [3], [2], "seq_slice_0_3_step2"),
        ([-1], [None], [-2], "seq_slice_m1_begin_stepm2"),
    ],
)
def test_slice_symbolic_dims(starts, ends, steps, dim, make_array):
    net = one_input("float32", ("batch", "seq"), F.slice_tensor, starts=starts, ends=ends, axes=[1], steps=steps)
    assert net.outputs["y0"].shape == ("batch", dim)
    x = make_array((2, 7), gb.float32)
    step = steps[0] if steps else None
    np.testing.assert_array_equal(reference.run(net, {"x": x})["y0"], x[:, starts[0]:ends[0]:step])


def test_slice_of_a_symbol_runs_in_the_engine(make_array, engine_check):
    net = one_input("int64", ("batch", "seq"), F.slice_tensor, starts=[-1], ends=[None], axes=[1], steps=[-2])
    x = make_array((2, 7), gb.int64)
    np.testing.assert_array_equal(engine_check(net, {"x": x})["y0"], x[:, ::-2])


def test_slice_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"slice 'cut': steps must be non-zero, got \[0\]"):
        one_input("float32", (3,), F.slice_tensor, starts=[0], ends=[2], steps=[0], name="cut")
    with pytest.raises(gb.GraphConstructionError, match=r"slice_tensor: starts \[0\], ends \[1, 2\] and steps \[1\] must have equal lengths"):
        one_input("float32", (3,), F.slice_tensor, starts=[0], ends=[1, 2])
    with pytest.raises(gb.GraphConstructionError, match=r"slice 'cut_1': axes entry=2 is out of range for rank 1"):
        one_input("float32", (3,), F.slice_tensor, starts=[0], ends=[2], axes=[2], name="cut_1")


# ------------------------------------------------------------------------------------ gather
@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("index_dtype", [gb.int32, gb.int64], ids=str)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(dtype, index_dtype, axis, make_array, rng, engine_check):
    net = gb.Network("gather")
    with net:
        x = net.add_input("x", dtype, (4, "n", 6))
        idx = net.add_input("idx", index_dtype, ("rows", 2))
        net.mark_output(F.gather(x, idx, axis=axis), "y")
    expected_shape = {0: ("rows", 2, "n", 6), 1: (4, "rows", 2, 6), -1: (4, "n", "rows", 2)}[axis]
    assert net.outputs["y"].shape == expected_shape
    data = make_array((4, 5, 6), dtype)
    size = data.shape[axis]
    indices = rng.integers(-size, size, size=(3, 2)).astype(index_dtype.numpy)
    out = engine_check(net, {"x": data, "idx": indices})["y"]
    np.testing.assert_array_equal(out, np.take(data, np.where(indices < 0, indices + size, indices), axis=axis))


def test_gather_errors():
    net = gb.Network("gather")
    with net:
        x = net.add_input("x", "float32", (5, 3))
        with pytest.raises(gb.GraphConstructionError, match=r"gather 'take': indices must be one of int32, int64, got float32"):
            F.gather(x, x, name="take")
        idx = net.add_input("idx", "int64", (3,))
        net.mark_output(F.gather(x, idx, name="pick"), "y")
    with pytest.raises(gb.ExecutionError, match=r"gather 'pick': index -6 at flat position 1 is outside \[-5, 5\) for axis 0"):
        reference.run(net, {"x": np.ones((5, 3), np.float32), "idx": np.array([4, -6, 9])})


# ------------------------------------------------------------------------------------ (un)squeeze
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_unsqueeze_then_squeeze(dtype, make_array, engine_check):
    net = gb.Network("squeeze")
    with net:
        x = net.add_input("x", dtype, ("n", 3))
        up = F.unsqueeze(x, (0, -1))
        assert up.shape == (1, "n", 3, 1)
        net.mark_output(up, "up")
        net.mark_output(F.squeeze(up), "down")
        net.mark_output(F.squeeze(up, -1), "last")
    assert net.outputs["down"].shape == ("n", 3) and net.outputs["last"].shape == (1, "n", 3)
    data = make_array((2, 3), dtype)
    out = engine_check(net, {"x": data})
    np.testing.assert_array_equal(out["up"], data[None, :, :, None])
    np.testing.assert_array_equal(out["down"], data)
    np.testing.assert_array_equal(out["last"], data[None])


def test_squeeze_keeps_symbolic_dims_that_are_one_at_run_time(engine_check):
    net = one_input("float32", ("n", 3), F.squeeze)
    assert net.outputs["y0"].producer.attrs["axes"] == ()
    assert engine_check(net, {"x": np.ones((1, 3), np.float32)})["y0"].shape == (1, 3)


def test_squeeze_and_unsqueeze_errors():
    with pytest.raises(gb.GraphConstructionError, match=r"squeeze 'sq': axis 0 of \(n, 1\) has size 'n'; only static size-1 axes can be squeezed"):
        one_input("float32", ("n", 1), F.squeeze, axes=0, name="sq")
    with pytest.raises(gb.GraphConstructionError, match=r"unsqueeze 'un': axes entry=3 is out of range for rank 3"):
        one_input("float32", ("n", 1), F.unsqueeze, axes=3, name="un")
    with pytest.raises(gb.GraphConstructionError, match=r"unsqueeze 'un_1': axes \[0, -3\] names an axis twice"):
        one_input("float32", ("n",), F.unsqueeze, axes=(0, -3), name="un_1")
