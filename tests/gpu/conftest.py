"""Fixtures for the CUDA execution provider tests in tests/gpu/.

The ``gpu`` marker (tests/conftest.py) skips these tests, with the reason, where onnxruntime has no
CUDA provider or no CUDA device is present. Where both are present nothing here skips: a plugin
built without CUDA, or a CUDA provider that failed to start, is a test failure, so a GPU run can
never pass on the CPU.

``on_cuda`` makes that checkable. While a test holds it, every ONNX Runtime session created in the
process (by the engine runtime too) is recorded with profiling on; ``on_cuda.check()`` then ends
each session's profile and asserts that the session runs on the CUDA provider first and that every
TPEmbedding node that ran was executed by the CUDA provider (ONNX Runtime records the provider of
each node it runs). Sessions of models made only of TPEmbedding nodes are also created with CPU
fallback disabled, so ONNX Runtime itself refuses to place one on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

CUDA = "CUDAExecutionProvider"
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"


def require_cuda_plugin() -> Path:
    """The installed plugin library; fails (never skips) when it was built without CUDA."""
    from graphbuild import plugin

    path = plugin.library_path()
    facts_file = path.parent / "plugin_info.json"
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    assert facts.get("cuda"), (
        f"{path} was built without the CUDA kernel ({facts_file}: {facts}); rebuild with "
        "GRAPHBUILD_CUDA=ON (tools/gpu_check.sh does) so the gpu tests run the CUDA kernel"
    )
    return path


class CudaPlacement:
    """Records sessions and checks where their nodes ran (see the module docstring)."""

    def __init__(self, profile_dir: Path) -> None:
        self.profile_dir = profile_dir
        self.sessions: list = []

    def check(self, op_type: str = "TPEmbedding", *, at_least: int = 1, exclusive: bool = True) -> dict[str, int]:
        """Asserts every recorded session runs CUDA first and ``op_type`` nodes ran on CUDA.

        At least ``at_least`` runs of ``op_type`` nodes must have been on CUDA and, when
        ``exclusive``, none anywhere else. Returns the number of runs per provider. The recorded
        sessions are forgotten afterwards (their profiles have ended).
        """
        assert self.sessions, "no ONNX Runtime session was created while recording"
        runs: dict[str, int] = {}
        for session in self.sessions:
            providers = session.get_providers()
            assert providers[0] == CUDA, f"session fell back from the CUDA provider: {providers}"
            events = json.loads(Path(session.end_profiling()).read_text())
            for event in events:
                args = event.get("args", {})
                if event.get("cat") == "Node" and args.get("op_name") == op_type:
                    runs[args["provider"]] = runs.get(args["provider"], 0) + 1
        self.sessions.clear()
        if exclusive:
            assert set(runs) <= {CUDA}, f"{op_type} nodes ran on {runs}, expected only {CUDA}"
        assert runs.get(CUDA, 0) >= at_least, f"expected >= {at_least} {op_type} runs on CUDA, saw {runs}"
        return runs


@pytest.fixture
def on_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CudaPlacement:
    import onnx
    import onnxruntime as ort

    require_cuda_plugin()
    placement = CudaPlacement(tmp_path / "profiles")
    placement.profile_dir.mkdir()
    base = ort.InferenceSession

    def only_tp_embedding(model) -> bool:
        if isinstance(model, (str, Path)):
            model = onnx.load(str(model), load_external_data=False)
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
        else:
            return False
        ops = {node.op_type for node in model.graph.node}
        return ops == {"TPEmbedding"}

    class RecordingSession(base):  # type: ignore[misc, valid-type]
        def __init__(self, path_or_bytes, sess_options: Optional[ort.SessionOptions] = None, *args, **kwargs):
            options = sess_options if sess_options is not None else ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(placement.profile_dir / f"session{len(placement.sessions)}")
            if only_tp_embedding(path_or_bytes):
                options.add_session_config_entry(DISABLE_CPU_FALLBACK, "1")
            super().__init__(path_or_bytes, options, *args, **kwargs)
            placement.sessions.append(self)

    monkeypatch.setattr(ort, "InferenceSession", RecordingSession)
    return placement


@pytest.fixture(scope="session")
def multiprocessors() -> int:
    """The CUDA device's multiprocessor count (sizes the launches that must take the wide path)."""
    import ctypes

    libcuda = ctypes.CDLL("libcuda.so.1")
    device = ctypes.c_int(0)
    count = ctypes.c_int(0)
    assert libcuda.cuInit(0) == 0 and libcuda.cuDeviceGet(ctypes.byref(device), 0) == 0
    assert libcuda.cuDeviceGetAttribute(ctypes.byref(count), 16, device) == 0  # MULTIPROCESSOR_COUNT
    return count.value


def random_table(rng: np.random.Generator, rows: int, dim: int, dtype) -> np.ndarray:
    """A table of distinct non-zero random values (zero rows would hide unwritten output)."""
    return (rng.standard_normal((rows, dim)) + 3.0).astype(dtype)


@pytest.fixture
def make_table() -> Callable[..., np.ndarray]:
    return random_table
