#!/usr/bin/env bash
# Unpack the parts written by fetch_cuda12_stack.sh (.ci/gpu/stack_bundle.py: sizes, sha256 and every wheel's
# RECORD checked, the wheels rebuilt) and install them with `pip install --no-deps --target TARGET_DIR`, beside
# whatever (CUDA 13) torch and CuPy the machine has.
#
#   bash .ci/gpu/install_cuda12_stack.sh PARTS_DIR TARGET_DIR
#   bash .ci/gpu/install_cuda12_stack.sh PARTS_DIR -
#
# With `-` the wheels go into the interpreter's own environment instead, after removing any other CuPy wheel: the
# layout of the default install (`pip install cujit` beside a CUDA 13 torch), where torch's nvidia/cu13 and the
# CUDA 12 wheels share one site-packages. Prefer it for test runs: with a separate TARGET_DIR first on the path,
# cuda.pathfinder (which CuPy uses to load NVRTC for its own kernels) finds TARGET_DIR's NVRTC 12 before torch's
# NVRTC 13, a search order no real install has.
#
# Then, from the checkout, run the GPU tests and the demo with that stack first on the path:
#
#   PYTHONPATH=TARGET_DIR:$PWD python3 -m pytest -q
#   PYTHONPATH=TARGET_DIR:$PWD python3 -m cujit demo
#
# Being first on the path, TARGET_DIR's cupy-cuda12x shadows an installed cupy-cuda13x, as when the default
# install's wheels sit in site-packages beside torch's own CUDA 13 ones. The last lines printed say which NVRTC and
# which headers cujit uses (`python -m cujit doctor`).
set -euo pipefail
parts=${1:?usage: install_cuda12_stack.sh PARTS_DIR TARGET_DIR}
target=${2:?usage: install_cuda12_stack.sh PARTS_DIR TARGET_DIR}
python=${PYTHON:-python3}
[ -f "$parts/manifest.txt" ] || { echo "error: $parts/manifest.txt not found" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" "$(dirname "$0")/stack_bundle.py" unpack "$parts" "$work/wheels"
files=("$work"/wheels/*.whl)

cd "$(dirname "$0")/../.."
if [ "$target" = "-" ]; then
    # Every CuPy wheel owns the `cupy` module: remove the others first, as a user switching wheels would.
    others=$("$python" -m pip list --format=freeze 2>/dev/null | grep -i '^cupy-' | grep -iv '^cupy-cuda12x==' \
        | cut -d= -f1 || true)
    [ -z "$others" ] || "$python" -m pip uninstall --quiet -y $others
    "$python" -m pip install --quiet --no-deps --upgrade "${files[@]}"
    echo "installed into $("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    path="$PWD"
else
    "$python" -m pip install --quiet --no-deps --upgrade --target "$target" "${files[@]}"
    echo "installed into $target:"
    ls "$target"
    path="$target:$PWD"
fi
PYTHONPATH="$path" "$python" - <<'PY'
import torch  # first, as in the tests: its CUDA build loads its own NVRTC
import cupy
from cujit._runtime import toolchain
print(f"torch {torch.__version__}, CuPy {cupy.__version__} from {cupy.__file__}")
print("NVRTC {}.{}".format(*toolchain.nvrtc_version()), toolchain.nvrtc_library(),
      f"headers {toolchain.cuda_include_dir()}")
PY
