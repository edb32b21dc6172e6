#!/usr/bin/env bash
# Downloads every wheel graphbuild needs to be installed, built and tested on another machine that
# has no network (a GPU box): the runtime dependencies of pyproject.toml for Linux x86_64
# (onnxruntime-gpu there), the dev extras (pytest, pytest-xdist, hypothesis, tokenizers), the build
# requirements (scikit-build-core, cmake, ninja), and all of their dependencies, for one target
# Python version. Run it on a networked machine; tools/gpu_check.sh installs from the result.
#
#   tools/make_wheelhouse.sh [options] WHEELHOUSE
#
# Options:
#   --python-version X.Y   target CPython (default 3.12, the GPU machine's)
#   --glibc 2.N            newest manylinux glibc the target accepts (default 2.35)
#   --cuda-libs            also fetch onnxruntime-gpu's [cuda,cudnn] extras (the nvidia-* CUDA 13
#                          runtime and cuDNN wheels, several GB); leave out where the target
#                          already has them (the GPU image's PyTorch brings them)
#   --split SIZE           split files larger than SIZE (split(1) sizes: 60M, 1G) into SIZE pieces
#                          NAME.part-aa, -ab, ... that gpu_check.sh joins again
#   --python PYTHON        the interpreter whose pip downloads (default python3)
#   --only REQUIREMENT     fetch just this requirement, without its dependencies (repeatable), for
#                          a target that has everything else: the GPU image lacks only
#                          onnxruntime-gpu (--only onnxruntime-gpu==1.31.1 --split 50M)
#
# WHEELHOUSE gets the wheels, requirements.txt (what was asked for), SHA256SUMS (every file as
# stored, pieces included) and, when something was split, SHA256SUMS.joined (each split wheel as a
# whole); both are `sha256sum -c` files.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
fail() { echo "make_wheelhouse: $*" >&2; exit 1; }

python_version=3.12
glibc=2.35
cuda_libs=0
split_size=""
python=python3
only=()
wheelhouse=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python-version) python_version=${2:?--python-version needs X.Y}; shift 2 ;;
    --glibc) glibc=${2:?--glibc needs 2.N}; shift 2 ;;
    --cuda-libs) cuda_libs=1; shift ;;
    --split) split_size=${2:?--split needs a size such as 60M}; shift 2 ;;
    --python) python=${2:?--python needs an interpreter}; shift 2 ;;
    --only) only+=("${2:?--only needs a requirement}"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) fail "unknown option '$1' (see --help)" ;;
    *) [[ -z "$wheelhouse" ]] || fail "one WHEELHOUSE only (got '$wheelhouse' and '$1')"; wheelhouse=$1; shift ;;
  esac
done
[[ -n "$wheelhouse" ]] || { usage >&2; fail "WHEELHOUSE is missing"; }
[[ "$python_version" =~ ^3\.[0-9]+$ ]] || fail "--python-version must look like 3.12, got '$python_version'"
[[ "$glibc" =~ ^2\.[0-9]+$ ]] || fail "--glibc must look like 2.35, got '$glibc'"
command -v "$python" >/dev/null || fail "'$python' is not on PATH (--python)"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$wheelhouse"
wheelhouse=$(cd "$wheelhouse" && pwd)
if compgen -G "$wheelhouse/*.part-*" >/dev/null; then
  fail "$wheelhouse already holds split pieces; use an empty folder"
fi

# The requirements: pyproject.toml's dependencies, dev extras and build requirements, with their
# environment markers evaluated for CPython $python_version on Linux x86_64 (pip download would
# evaluate them for this machine instead), plus the build tools scikit-build-core fetches itself.
"$python" - "$root/pyproject.toml" "$python_version" "$cuda_libs" >"$wheelhouse/requirements.txt" <<'PY'
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement

path, version, cuda_libs = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with open(path, "rb") as handle:
    project = tomllib.load(handle)
target = {
    "python_version": version, "python_full_version": version + ".0", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}
wanted = (
    project["project"]["dependencies"]
    + project["project"]["optional-dependencies"]["dev"]
    + project["build-system"]["requires"]
    + ["cmake>=3.26", "ninja"]
)
for text in wanted:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate(target):
        continue
    requirement.marker = None
    if cuda_libs and requirement.name == "onnxruntime-gpu":
        requirement.extras = {"cuda", "cudnn"}
    print(requirement)
PY
no_deps=()
if [[ ${#only[@]} -gt 0 ]]; then
  printf '%s\n' "${only[@]}" >"$wheelhouse/requirements.txt"
  no_deps=(--no-deps)
fi
echo "== requirements for CPython $python_version, manylinux x86_64 (glibc <= $glibc)"
cat "$wheelhouse/requirements.txt"

# pip matches platform tags exactly: name every manylinux tag up to the target's glibc.
platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for ((minor = 5; minor <= ${glibc#2.}; minor++)); do
  platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
abi="cp${python_version/./}"
echo "== downloading into $wheelhouse"
"$python" -m pip download --disable-pip-version-check --only-binary=:all: "${no_deps[@]}" \
  --python-version "$python_version" --implementation cp --abi "$abi" --abi abi3 --abi none \
  "${platforms[@]}" --dest "$wheelhouse" --requirement "$wheelhouse/requirements.txt"

echo "== checksums"
(
  cd "$wheelhouse"
  shopt -s nullglob
  rm -f SHA256SUMS SHA256SUMS.joined
  if [[ -n "$split_size" ]]; then
    limit=$(numfmt --from=iec "$split_size")
    for wheel in *.whl; do
      size=$(stat -c %s "$wheel")
      (( size > limit )) || continue
      sha256sum -- "$wheel" >>SHA256SUMS.joined
      split --bytes="$split_size" -- "$wheel" "$wheel.part-"
      rm -- "$wheel"
      pieces=("$wheel".part-*)
      echo "split $wheel ($size bytes) into ${#pieces[@]} pieces of at most $split_size"
    done
  fi
  sha256sum -- *.whl *.part-* requirements.txt >SHA256SUMS
)
echo "== done: $(grep -c . "$wheelhouse/requirements.txt") requirements, $(du -sh "$wheelhouse" | cut -f1) in $wheelhouse"
echo "   on the GPU machine: tools/gpu_check.sh $wheelhouse"
