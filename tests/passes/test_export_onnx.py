"""ONNX export across opsets: every supported opset gives an engine that matches the reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.passes.export_onnx import DEFAULT_OPSET, MIN_OPSET, supported_opsets


def every_op_network(rng: np.random.Generator) -> gb.Network:
    """One network through each op whose ONNX form changed between opsets, at tp_size 2."""
    net = gb.Network("opsets")
    with net:
        ids = net.add_input("ids", "int64", ("b", "s"))
        x = F.embedding(ids, gb.constant(rng.standard_normal((13, 6)).astype(np.float32), name="wte.weight"), tp_size=2)
        x = F.layer_norm(x, gb.constant(rng.standard_normal(6).astype(np.float32)), gb.constant(rng.standard_normal(6).astype(np.float32)))
        x = F.rms_norm(x, gb.constant(rng.standard_normal(6).astype(np.float32)))
        a, b = F.split(x, [2, 4], axis=-1)
        y = F.concat([b, a], axis=-1)
        y = F.softmax(F.gelu(y), axis=-1) + F.silu(y) * F.gelu(y, approximate="tanh")
        y = F.squeeze(F.unsqueeze(y, [0]), [0])
        y = F.transpose(F.reshape(y, ("b", "s", 3, 2)), [0, 1, 3, 2]).reshape(("b", "s", 6))
        y = F.where(F.less(y, 0.0), F.relu(y), y.cast("float16").cast("float32"))
        net.mark_output(y, "y")
        net.mark_output(y[:, 1:, ::2], "strided")
        net.mark_output(y[:, -1], "last")
    return net


def test_every_opset_the_runtime_loads_matches_the_reference(rng, tmp_path):
    net = every_op_network(rng)
    feeds = {"ids": rng.integers(0, 13, size=(2, 5))}
    expected = gb.reference.run(net, feeds)
    built = []
    for opset in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1):
        try:
            engine = gb.build(net, tmp_path / f"opset{opset}", opset=opset)
        except gb.ExportError as error:
            assert opset > DEFAULT_OPSET and f"opset {opset} is not supported: graphbuild exports standard ONNX opsets {MIN_OPSET} to" in str(error)
            assert not (tmp_path / f"opset{opset}").exists()
            continue
        actual = engine.run(feeds)
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=f"opset {opset} output {name}")
        model = onnx.load(str(tmp_path / f"opset{opset}" / "rank0" / "segment0.onnx"))
        assert {o.version for o in model.opset_import if o.domain == ""} == {opset}
        built.append(opset)
    assert built[: DEFAULT_OPSET - MIN_OPSET + 1] == list(range(MIN_OPSET, DEFAULT_OPSET + 1))
    assert built == list(supported_opsets())  # what builds and runs is exactly the range errors name


@pytest.mark.parametrize("opset", [16, 0, 10_000, True, "21"])
def test_unsupported_opsets_are_named(rng, tmp_path, opset):
    with pytest.raises(gb.ExportError, match=rf"opset {opset!r} is not supported: graphbuild exports standard ONNX opsets {MIN_OPSET} to \d+ \(default 21\)"):
        gb.build(every_op_network(rng), tmp_path / "e", opset=opset)
    assert not (tmp_path / "e").exists()
