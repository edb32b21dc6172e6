"""The CUDA kernels' index arithmetic, checked without a GPU.

``cuda_kernel_emulation.cc`` compiles the device half of the CUDA kernel
(``plugins/src/tp_embedding_cuda_kernels.cuh``) as plain C++ with host stand-ins for the few CUDA
built-ins it uses, runs every (block, thread) of each launch in turn, and compares each output byte
and the reported first out-of-range position with a C++ reference over row widths around the warp
width and the unrolled chunk, both launch shapes and every copy unit. This runs everywhere (it
needs only a C++17 compiler); the ``gpu`` tests in tests/gpu/ run the real kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("cuda_kernel_emulation.cc")
KERNELS = ROOT / "plugins" / "src" / "tp_embedding_cuda_kernels.cuh"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def test_cuda_kernels_match_reference_in_host_emulation(tmp_path):
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH to build the kernel emulation")
    assert KERNELS.is_file(), KERNELS
    binary = tmp_path / "kernel_emulation"
    build = subprocess.run(
        [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Wno-unknown-pragmas",
         f"-I{KERNELS.parent}", "-o", str(binary), str(HARNESS)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, f"building the kernel emulation failed:\n{build.stderr}"
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert run.stdout.strip().endswith("failures: 0"), run.stdout[-4000:]
    assert run.returncode == 0
