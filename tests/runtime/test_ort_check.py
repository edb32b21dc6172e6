"""The installed ONNX Runtime is checked before engines load and the plugin is registered: a
release below the floor is refused in one line naming both versions, ``onnxruntime`` installed
beside ``onnxruntime-gpu`` is reported with the fix, and IO-binding outputs stay valid on releases
whose ``get_outputs()`` pointed into the binding. ``make test-floor`` runs this file on the floor
release itself."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphbuild as gb
from graphbuild import functional as F
from graphbuild import plugin
from graphbuild.runtime import ort_check

ROOT = Path(__file__).resolve().parents[2]


def small_engine(path: Path, table: np.ndarray, use_plugin: bool) -> gb.Engine:
    net = gb.Network("small")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        weight = gb.constant(table, name="wte.weight")
        net.mark_output(F.embedding(ids, weight, tp_size=2, sharding_dim=0, name="wte"), "emb")
    return gb.build(net, path, use_plugin=use_plugin)


@pytest.fixture
def fresh_check(monkeypatch):
    """Forgets the distributions scan and the once-per-process warning, before and after."""
    ort_check.runtime_distributions.cache_clear()
    monkeypatch.setattr(ort_check, "_warned_side_by_side", False)
    yield
    ort_check.runtime_distributions.cache_clear()


@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "lowered"])
def test_engine_load_refuses_a_runtime_below_the_floor(tmp_path, rng, monkeypatch, use_plugin):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    small_engine(tmp_path / "e", table, use_plugin)
    monkeypatch.setattr(ort, "__version__", "1.19.2")
    with pytest.raises(gb.RuntimeVersionError) as info:
        gb.Engine.load(tmp_path / "e")
    message = str(info.value)
    assert "\n" not in message
    assert "onnxruntime 1.19.2 is installed" in message
    assert "needs ONNX Runtime 1.20 or newer" in message
    assert "pip install -U 'onnxruntime-gpu>=1.20'" in message


def test_plugin_registration_refuses_a_runtime_below_the_floor(monkeypatch):
    monkeypatch.setattr(ort, "__version__", "1.17.3")
    with pytest.raises(gb.RuntimeVersionError, match=r"^onnxruntime 1\.17\.3 is installed, but graphbuild needs ONNX Runtime 1\.20 or newer"):
        plugin.library_path()


@pytest.mark.parametrize("version", ["1.20.0", "1.20.2", "1.31.1+cu130", "2.0.0", "a local build"])
def test_supported_or_unreadable_versions_pass(tmp_path, rng, monkeypatch, fresh_check, version):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    small_engine(tmp_path / "e", table, use_plugin=False)
    monkeypatch.setattr(ort, "__version__", version)
    ids = np.array([9, 0, 4])
    np.testing.assert_array_equal(gb.Engine.load(tmp_path / "e").run({"ids": ids})["emb"], table[ids])


def test_version_parsing():
    assert ort_check.parse_version("1.23.2") == (1, 23, 2)
    assert ort_check.parse_version("1.20") == (1, 20, 0)
    assert ort_check.parse_version("1.31.1+cu130") == (1, 31, 1)
    assert ort_check.parse_version("nightly") is None
    assert ort_check.format_version((1, 20, 0)) == "1.20"
    assert ort_check.format_version((1, 20, 2)) == "1.20.2"


class FakeDistribution:
    def __init__(self, name: str, version: str, files: list[str] | None):
        self.metadata = {"Name": name}
        self.version = version
        self.files = files


MODULE_FILES = ["onnxruntime/__init__.py", "onnxruntime/capi/_pybind_state.py"]


def check_with(monkeypatch, distributions) -> list[warnings.WarningMessage]:
    monkeypatch.setattr(ort_check.importlib.metadata, "distributions", lambda: iter(distributions))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ort_check.check_runtime()
    return [w for w in caught if issubclass(w.category, ort_check.RuntimeInstallWarning)]


def test_cpu_and_gpu_packages_side_by_side_are_reported_with_the_fix(monkeypatch, fresh_check):
    caught = check_with(monkeypatch, [
        FakeDistribution("numpy", "2.4.6", ["numpy/__init__.py"]),
        FakeDistribution("onnxruntime-gpu", "1.31.1", MODULE_FILES),
        FakeDistribution("onnxruntime", "1.30.0", MODULE_FILES),
        FakeDistribution("onnxruntime_extensions", "0.14.0", ["onnxruntime_extensions/__init__.py"]),
    ])  # fmt: skip
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "onnxruntime 1.30.0 and onnxruntime-gpu 1.31.1 are installed side by side" in message
    assert "share the 'onnxruntime' module" in message
    assert f"now onnxruntime {ort.__version__}" in message
    assert message.endswith("pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu")
    assert "onnxruntime_extensions" not in message and "numpy" not in message
    # Once per process: the next engine load says nothing more.
    assert check_with(monkeypatch, [FakeDistribution("onnxruntime", "1.30.0", MODULE_FILES), FakeDistribution("onnxruntime-gpu", "1.31.1", None)]) == []


def test_one_runtime_package_is_not_reported(monkeypatch, fresh_check):
    assert check_with(monkeypatch, [FakeDistribution("onnxruntime-gpu", "1.31.1", MODULE_FILES), FakeDistribution("onnxruntime-genai", "0.9.0", ["onnxruntime_genai/__init__.py"])]) == []
    assert ort_check.runtime_distributions() == (("onnxruntime-gpu", "1.31.1"),)


def test_the_installed_runtime_is_found_among_the_real_distributions(fresh_check):
    names = [name.lower() for name, _ in ort_check.runtime_distributions()]
    assert names and set(names) <= {"onnxruntime", "onnxruntime-gpu"}, names


def identity_session() -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("Shape", ["x"], ["s"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["n"]), helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_detached_outputs_outlive_the_bindings_output_list():
    # What the executor does with a segment's first run: read the outputs, clear the binding's
    # outputs and bind the same values again, so later runs write into them. Before 1.30 the plain
    # get_outputs() values read freed memory here.
    session = identity_session()
    binding = session.io_binding()
    x = np.array([5, -7, 2**40, 3], dtype=np.int64)
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_output("y", "cpu")
    binding.bind_output("s", "cpu")
    session.run_with_iobinding(binding)
    produced = ort_check.detached_outputs(binding)
    binding.clear_binding_outputs()
    for name, value in zip(["y", "s"], produced):
        binding.bind_ortvalue_output(name, value)
    np.testing.assert_array_equal(produced[0].numpy(), 2 * x)
    np.testing.assert_array_equal(produced[1].numpy(), [4])
    x[:] = [1, 2, 3, 4]
    session.run_with_iobinding(binding)  # the same buffers, new contents
    np.testing.assert_array_equal(produced[0].numpy(), [2, 4, 6, 8])


def test_pyproject_floor_is_the_checked_floor():
    text = (ROOT / "pyproject.toml").read_text()
    floor = ort_check.format_version(ort_check.MIN_ORT_VERSION)
    for package in ("onnxruntime-gpu", "onnxruntime"):
        assert re.search(rf'"{package}>={re.escape(floor)};', text), f"pyproject.toml: {package}>={floor} not found"
    docs = (ROOT / "docs" / "runtime.md").read_text()
    section = docs[docs.index("## Supported ONNX Runtime versions") :]
    assert f"ONNX Runtime {floor} " in section.split("\n## ")[0]

