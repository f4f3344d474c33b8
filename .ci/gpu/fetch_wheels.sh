#!/usr/bin/env bash
# Download wheels for a GPU machine that can only take files of under 60 MB a call, and pack them into parts that
# can be sent one by one.
#
#   bash .ci/gpu/fetch_wheels.sh OUT_DIR PYTHON_VERSION NAME==VERSION ...
#
# Fetches each named wheel (CPython PYTHON_VERSION, manylinux x86_64, no dependencies: name every one the machine
# lacks) from the package index itself, packs them with .ci/gpu/stack_bundle.py (OUT_DIR/stack.tzst.NN of 55 MB and
# OUT_DIR/manifest.txt) and adds the zstandard wheel, which unpacks them where no zstd command is installed (the
# GPU image has none). Send every file of OUT_DIR to one folder on the GPU machine, outside the checkout (the
# manifest and the zstandard wheel with the first part), then there:
#
#   python3 .ci/gpu/stack_bundle.py unpack PARTS_DIR WHEEL_DIR
#   python3 -m pip install --no-index --no-deps --target SITE WHEEL_DIR/*.whl
#
# QuACK, a benchmark contender (`cujit.tools.bench.quack`), for the GPU image (Python 3.12, CUDA 13; einops and
# torch are there): 100 MB of wheels in two parts, 69 MB in all, and libs-core (1.6 MB), which libs-base 4.8.1
# needs for the DSL's Python package (`cutlass.cutlass_dsl`): send it with either part, or fetch it in a third.
#
#   bash .ci/gpu/fetch_wheels.sh OUT_DIR 3.12 quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 \
#       nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 \
#       nvidia-cutlass-dsl-libs-core==4.8.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
set -euo pipefail
out=${1:?usage: fetch_wheels.sh OUT_DIR PYTHON_VERSION NAME==VERSION ...}
py=${2:?usage: fetch_wheels.sh OUT_DIR PYTHON_VERSION NAME==VERSION ...}
shift 2
wheels=("$@")
[ ${#wheels[@]} -gt 0 ] || { echo "error: name at least one wheel" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The package index itself, not this machine's local wheel folders or constraints.
index=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null)
"${index[@]}" python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$work" \
    --python-version "$py" --implementation cp --abi "cp${py/./}" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    --platform manylinux1_x86_64 --platform any "${wheels[@]}"

files=()
for spec in "${wheels[@]}"; do
    name=${spec%%==*}
    file=$(cd "$work" && ls | grep -i "^${name//-/_}-${spec##*==}-" | head -n 1)
    [ -n "$file" ] || { echo "error: no wheel downloaded for $spec" >&2; exit 1; }
    files+=("$work/$file")
done
rm -f "$out"/zstandard-*.whl "$out"/stack.tzst.* "$out"/manifest.txt
python3 "$(dirname "$0")/stack_bundle.py" pack "$out" "${files[@]}"
"${index[@]}" python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$out" \
    --python-version "$py" --implementation cp --abi "cp${py/./}" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 zstandard
ls -l "$out"
cat "$out/manifest.txt"
