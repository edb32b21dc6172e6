"""Fixtures for the core op tests: random data per dtype, tolerances, and a one-network ONNX
Runtime run through the exporter (``graphbuild.passes.export_onnx.network_to_model``).

Test modules cannot import this file (pytest runs with ``--import-mode=importlib``), so its
helpers are handed out as fixtures.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphbuild as gb
from graphbuild import reference
from graphbuild.passes.export_onnx import DEFAULT_OPSET, network_to_model
from graphbuild.runtime.ortvalues import from_ortvalue, to_ortvalue

#: Accuracy of an op computed in float32 and rounded once to the dtype, vs a float64 reference.
TOLERANCE = {
    gb.float32: dict(rtol=2e-5, atol=2e-6),
    gb.float16: dict(rtol=2e-3, atol=2e-3),
    gb.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}

#: Engine vs reference: both round float32 values that differ by float32 noise, so at most an ulp.
ULP = {
    gb.float32: dict(rtol=1e-5, atol=1e-6),
    gb.float16: dict(rtol=2**-10, atol=1e-4),
    gb.bfloat16: dict(rtol=2**-7, atol=1e-3),
}

def random_array(rng: np.random.Generator, shape, dtype: gb.DType, scale: float = 1.0) -> np.ndarray:
    """Random data of ``dtype``: normal floats, small nonzero-heavy ints, mixed bools."""
    if dtype.is_float:
        return (rng.standard_normal(shape) * scale).astype(dtype.numpy)
    if dtype.is_int:
        return rng.integers(-50, 50, size=shape).astype(dtype.numpy)
    return rng.random(shape) < 0.5


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: gb.DType, table: Mapping = TOLERANCE) -> None:
    """Compares after widening to float64; ints and bools must be equal."""
    assert actual.dtype == dtype.numpy, f"dtype {actual.dtype}, expected {dtype.numpy}"
    assert actual.shape == np.shape(expected), f"shape {actual.shape}, expected {np.shape(expected)}"
    if dtype.is_float:
        np.testing.assert_allclose(actual.astype(np.float64), np.asarray(expected, dtype=np.float64), **table[dtype])
    else:
        np.testing.assert_array_equal(actual, expected)


def run_in_ort(net: gb.Network, feeds: Mapping[str, np.ndarray], opset: int = DEFAULT_OPSET) -> dict[str, np.ndarray]:
    """Exports ``net`` as one model, checks it with onnx.checker and runs it on the CPU provider."""
    model = network_to_model(net, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(net.outputs)
    values = session.run_with_ort_values(names, {k: to_ortvalue(v) for k, v in feeds.items()})
    return {name: from_ortvalue(v) for name, v in zip(names, values)}


def check_engine_matches_reference(net: gb.Network, feeds: Mapping[str, np.ndarray], opset: int = DEFAULT_OPSET) -> dict[str, np.ndarray]:
    """Runs ``net`` in numpy and in ONNX Runtime (lowered for ``opset``) and asserts agreement within an ulp.

    Returns:
        The reference outputs.
    """
    expected = reference.run(net, feeds)
    actual = run_in_ort(net, feeds, opset)
    for name, value in net.outputs.items():
        assert_close(actual[name], expected[name], value.dtype, ULP)
    return expected


@pytest.fixture
def make_array(rng: np.random.Generator) -> Callable[..., np.ndarray]:
    """``make_array(shape, dtype, scale=1.0)``: see ``random_array`` (seeded per test)."""
    return lambda shape, dtype, scale=1.0: random_array(rng, shape, gb.dtypes.as_dtype(dtype), scale)


@pytest.fixture
def close() -> Callable[..., None]:
    """``close(actual, expected, dtype)``: see ``assert_close`` (float64 reference tolerances)."""
    return assert_close


@pytest.fixture
def engine_check() -> Callable[..., dict[str, np.ndarray]]:
    """``engine_check(net, feeds, opset=21)``: see ``check_engine_matches_reference``."""
    return check_engine_matches_reference
