#!/usr/bin/env bash
# The GPU test path: on a machine with an NVIDIA GPU, nvcc and no network, installs graphbuild from
# a wheelhouse (tools/make_wheelhouse.sh), builds the plugin with the machine's nvcc, and runs the
# gpu-marked tests, compute-sanitizer (memcheck and racecheck) over the CUDA kernel, and the CUDA
# benchmark. Each step prints a header; the script stops at the first failure and says which step.
#
#   tools/gpu_check.sh [options] WHEELHOUSE
#
# Options:
#   --venv DIR          virtual environment to create or reuse (default /tmp/graphbuild-gpu-venv)
#   --python PYTHON     interpreter to base it on (default python3). Its packages stay visible in
#                       the venv (numpy, torch, cupy, cmake, ... are reused, not reinstalled), also
#                       when PYTHON itself lives in a venv; the venv's own onnxruntime-gpu shadows a
#                       CPU onnxruntime there (both are imported as 'onnxruntime').
#   --build-dir DIR     CMake build folder of the editable install (default build/gpu-check)
#   --out DIR           logs, test reports and bench JSON (default $OUT if set, else out/gpu-check)
#   --full-suite        also run the whole test suite (it uses the CUDA provider when a GPU is there)
#   --no-gpu-dry-run    stop before the steps that need a GPU (checks the wheelhouse, venv, install
#                       and CUDA build on a machine without one)
# Environment:
#   GB_CUDA_ARCHITECTURES   CMAKE_CUDA_ARCHITECTURES for the plugin (default: plugins/CMakeLists.txt's)
#   GB_PYTEST_WORKERS       pytest-xdist workers for the gpu tests (default 4)
#   GB_BENCH_ARGS           arguments for 'graphbuild bench' (default: the issue's fp16/bf16 set)
#   GB_ALLOW_GPU_SKIPS=1    report skipped gpu tests instead of failing on them
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

venv=/tmp/graphbuild-gpu-venv
python=python3
build_dir=build/gpu-check
out_dir=${OUT:-out/gpu-check}
full_suite=0
dry_run=0
wheelhouse=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
    --python) python=${2:?--python needs an interpreter}; shift 2 ;;
    --build-dir) build_dir=${2:?--build-dir needs a folder}; shift 2 ;;
    --out) out_dir=${2:?--out needs a folder}; shift 2 ;;
    --full-suite) full_suite=1; shift ;;
    --no-gpu-dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) [[ -z "$wheelhouse" ]] || { echo "gpu_check: one WHEELHOUSE only" >&2; exit 2; }; wheelhouse=$1; shift ;;
  esac
done
[[ -n "$wheelhouse" ]] || { usage >&2; echo "gpu_check: WHEELHOUSE is missing" >&2; exit 2; }
[[ -d "$wheelhouse" ]] || { echo "gpu_check: wheelhouse '$wheelhouse' is not a folder" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
wheelhouse=$(cd "$wheelhouse" && pwd)
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
joined="$venv.wheels"  # split wheels joined again (the wheelhouse may be read-only)
step_name="setup"
step_number=0

on_error() {
  local status=$?
  echo >&2
  echo "gpu_check: FAILED in step $step_number ($step_name), exit status $status; logs in $out_dir" >&2
  exit "$status"
}
trap on_error ERR

step() {
  step_number=$((step_number + 1))
  step_name=$1
  echo
  echo "=================================================================================="
  echo "== $step_number. $step_name"
  echo "=================================================================================="
}

die() { echo "gpu_check: $*" >&2; false; }

pip_offline() { "$venv/bin/python" -m pip --disable-pip-version-check install --no-index --find-links "$wheelhouse" --find-links "$joined" "$@"; }

# --- 1. The wheelhouse: checksums, split wheels joined, joined checksums. ---
step "wheelhouse $wheelhouse"
[[ -f "$wheelhouse/SHA256SUMS" ]] || die "$wheelhouse/SHA256SUMS is missing (make it with tools/make_wheelhouse.sh)"
(cd "$wheelhouse" && sha256sum --check --quiet SHA256SUMS) || die "a file in $wheelhouse does not match SHA256SUMS"
rm -rf "$joined"
mkdir -p "$joined"
if [[ -f "$wheelhouse/SHA256SUMS.joined" ]]; then
  while read -r _ wheel; do
    pieces=("$wheelhouse/$wheel".part-*)
    [[ -e "${pieces[0]}" ]] || die "no pieces $wheel.part-* for $wheel"
    cat "${pieces[@]}" >"$joined/$wheel"
    echo "joined $wheel from ${#pieces[@]} pieces"
  done <"$wheelhouse/SHA256SUMS.joined"
  (cd "$joined" && sha256sum --check --quiet "$wheelhouse/SHA256SUMS.joined") || die "a joined wheel does not match SHA256SUMS.joined"
fi
echo "$(find "$wheelhouse" "$joined" -name '*.whl' | wc -l) wheels verified"

# --- 2. The venv, seeing the base interpreter's packages. ---
step "virtual environment $venv (from $python)"
command -v "$python" >/dev/null || die "'$python' is not on PATH (--python)"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv --system-site-packages "$venv"
fi
# --system-site-packages shows the *base* interpreter's packages; when $python is itself a venv
# (the GPU image's /opt/torch/.venv), a .pth file adds that venv's site-packages after ours.
parent_sites=$("$python" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')
site_dir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ -n "$parent_sites" ]]; then
  printf '%s\n' "$parent_sites" >"$site_dir/graphbuild_parent_site.pth"
  echo "reusing the packages of $(printf '%s ' "$parent_sites")"
fi
"$venv/bin/python" -c 'import sys; print("python", sys.version.split()[0], sys.executable)'

# --- 3. onnxruntime-gpu, and no CPU onnxruntime in front of it. ---
step "onnxruntime-gpu"
if "$venv/bin/python" -m pip show onnxruntime 2>/dev/null | grep -q "^Location: $site_dir\$"; then
  echo "removing the CPU onnxruntime from the venv (it is imported as 'onnxruntime' too)"
  "$venv/bin/python" -m pip uninstall --yes onnxruntime
fi
pip_offline --upgrade onnxruntime-gpu
"$venv/bin/python" - "$site_dir" <<'PY'
import importlib.metadata as metadata
import sys

import onnxruntime as ort

site_dir = sys.argv[1]
print("onnxruntime", ort.__version__, "from", ort.__file__)
print("providers", ort.get_available_providers())
if not ort.__file__.startswith(site_dir):
    sys.exit(f"'import onnxruntime' finds {ort.__file__}, not the venv's onnxruntime-gpu in {site_dir}")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit("this onnxruntime has no CUDAExecutionProvider: the CPU build is shadowing onnxruntime-gpu")
try:
    print("CPU onnxruntime also visible (shadowed):", metadata.version("onnxruntime"))
except metadata.PackageNotFoundError:
    pass
PY

# --- 4. graphbuild, editable, with the CUDA kernel required. ---
step "graphbuild (editable, GRAPHBUILD_CUDA=ON, build folder $build_dir)"
pip_offline scikit-build-core "cmake>=3.26" ninja
export PATH="$PATH:/usr/local/cuda/bin"
if command -v nvcc >/dev/null; then
  nvcc --version | tail -n 2
else
  echo "nvcc is not on PATH; CMake looks in \$CUDA_HOME/bin and /usr/local/cuda/bin"
fi
cmake_defines=()
if [[ -n "${GB_CUDA_ARCHITECTURES:-}" ]]; then
  cmake_defines+=("-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$GB_CUDA_ARCHITECTURES")
fi
GRAPHBUILD_CUDA=ON pip_offline --no-build-isolation "-Cbuild-dir=$build_dir" "${cmake_defines[@]}" \
  --editable ".[dev]" 2>&1 | tee "$out_dir/install.log"
"$venv/bin/python" - <<'PY'
import sys

from graphbuild import plugin

info = plugin.plugin_info()
print("plugin", plugin.library_path(), info)
if not info.get("cuda"):
    sys.exit("the plugin was built without CUDA although GRAPHBUILD_CUDA=ON")
PY

# ONNX Runtime's CUDA provider loads the CUDA 13 runtime, cuBLAS, cuFFT, cuRAND and cuDNN by
# soname: put the nvidia-* wheels' folders (the venv's or the base interpreter's) on the path.
nvidia_libs=$("$venv/bin/python" - <<'PY'
import glob
import os
import sys

folders = []
for entry in sys.path:
    for folder in sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib"))):
        if folder not in folders:
            folders.append(folder)
print(":".join(folders))
PY
)
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

if [[ $dry_run == 1 ]]; then
  echo
  echo "gpu_check: dry run done (--no-gpu-dry-run): wheelhouse, venv, onnxruntime-gpu and the CUDA"
  echo "build are ready; the GPU steps (device, gpu tests, compute-sanitizer, bench) were not run."
  exit 0
fi

# --- 5. The device, and ONNX Runtime's CUDA provider really starting. ---
step "GPU and ONNX Runtime's CUDA provider"
nvidia-smi
"$venv/bin/python" - <<'PY'
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphbuild import plugin

ort.set_default_logger_severity(2)  # show why a provider fails to load
node = helper.make_node("TPEmbedding", ["ids", "table"], ["out"], name="probe", domain="graphbuild", vocab_size=4)
graph = helper.make_graph(
    [node], "probe",
    [helper.make_tensor_value_info("ids", TensorProto.INT64, None), helper.make_tensor_value_info("table", TensorProto.FLOAT, None)],
    [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("graphbuild", 1)])
model.ir_version = 10
options = ort.SessionOptions()
options.register_custom_ops_library(str(plugin.library_path()))
options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
print("session providers", session.get_providers())
if session.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit("ONNX Runtime's CUDA provider did not start (see its messages above)")
table = np.arange(12, dtype=np.float32).reshape(4, 3)
out = session.run(None, {"ids": np.array([3, 0, 2]), "table": table})[0]
np.testing.assert_array_equal(out, table[[3, 0, 2]])
print("TPEmbedding ran on the CUDA provider")
PY

# --- 6. The gpu-marked tests; a skipped one fails the step (on a GPU nothing may skip). ---
step "gpu-marked tests"
"$venv/bin/python" -m pytest -p no:cacheprovider -m gpu -n "${GB_PYTEST_WORKERS:-4}" -q -rs \
  --junitxml="$out_dir/gpu-tests.xml" 2>&1 | tee "$out_dir/gpu-tests.log"
"$venv/bin/python" - "$out_dir/gpu-tests.xml" "${GB_ALLOW_GPU_SKIPS:-0}" <<'PY'
import sys
import xml.etree.ElementTree as tree

suites = tree.parse(sys.argv[1]).getroot()
cases = list(suites.iter("testcase"))
skipped = [f"{c.get('classname')}::{c.get('name')}: {c.find('skipped').get('message')}" for c in cases if c.find("skipped") is not None]
print(f"{len(cases)} gpu tests, {len(skipped)} skipped")
if not cases:
    sys.exit("no gpu test was collected")
if skipped:
    text = "gpu tests skipped on a GPU machine:\n  " + "\n  ".join(skipped)
    if sys.argv[2] != "1":
        sys.exit(text + "\n(GB_ALLOW_GPU_SKIPS=1 reports them without failing)")
    print(text)
PY

# --- 7. compute-sanitizer over the kernel: memcheck, then racecheck. ---
step "compute-sanitizer (memcheck, racecheck) over tools/gpu_sanitize_driver.py"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[[ -x "$sanitizer" ]] || die "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
# Only graphbuild's kernels are instrumented; ONNX Runtime's own API errors are not ours to report.
if "$sanitizer" --help 2>&1 | grep -q -- "--kernel-name"; then
  only_ours=(--kernel-name kns=graphbuild)
else
  only_ours=(--filter kns=graphbuild)
fi
for tool in memcheck racecheck; do
  echo "-- $tool"
  "$sanitizer" --tool "$tool" --error-exitcode 99 --report-api-errors no "${only_ours[@]}" \
    "$venv/bin/python" tools/gpu_sanitize_driver.py 2>&1 | tee "$out_dir/sanitizer-$tool.log"
  grep -q "ERROR SUMMARY: 0 errors" "$out_dir/sanitizer-$tool.log" ||
    grep -q "RACECHECK SUMMARY: 0 hazards" "$out_dir/sanitizer-$tool.log" ||
    die "$tool reported errors (see $out_dir/sanitizer-$tool.log)"
done

# --- 8. The benchmark on the CUDA provider. ---
step "graphbuild bench --device cuda"
read -r -a bench_args <<<"${GB_BENCH_ARGS:---vocab 32000 128256 --hidden 4096 --dtype float16 bfloat16 --tokens 1 16 4096 16384}"
"$venv/bin/graphbuild" bench --device cuda "${bench_args[@]}" --json "$out_dir/bench-cuda.json" 2>&1 | tee "$out_dir/bench-cuda.log"

if [[ $full_suite == 1 ]]; then
  step "the whole test suite (CUDA provider by default)"
  "$venv/bin/python" -m pytest -p no:cacheprovider -n "${GB_PYTEST_WORKERS:-4}" -q 2>&1 | tee "$out_dir/full-suite.log"
fi

echo
echo "gpu_check: all $step_number steps passed; logs, gpu-tests.xml and bench-cuda.json are in $out_dir"
