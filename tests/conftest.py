"""Shared fixtures and markers for the graphbuild test suite.

- ``gpu`` tests are skipped, with the reason, when no CUDA device with onnxruntime's CUDA provider
  is present.
- Every test gets a fresh seeded ``rng``; data is random, never zeros.
- Hypothesis uses the ``ci`` profile under CI=true (fewer examples, no deadline).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


def _cuda_available() -> tuple[bool, str]:
    import onnxruntime as ort

    from graphbuild.runtime.session import CUDA, cuda_device_count

    if CUDA not in ort.get_available_providers():
        return False, "onnxruntime has no CUDAExecutionProvider"
    if cuda_device_count() == 0:
        return False, "no CUDA device present"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    available, reason = _cuda_available()
    if not available:
        skip = pytest.mark.skip(reason=f"gpu test: {reason}")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's id, so failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
