#!/usr/bin/env bash
# Download cujit's default CUDA 12 stack for a GPU machine that can only take files of under 60 MB, and pack it into
# parts that can be sent one by one.
#
#   bash .ci/gpu/fetch_cuda12_stack.sh OUT_DIR [PYTHON_VERSION]
#
# Fetches the exact wheels (CPython PYTHON_VERSION, default 3.12, manylinux x86_64) that `pip install .` adds
# beside a CUDA 13 torch: cupy-cuda12x, NVRTC 12 with the CUDA 12 runtime headers and nvcc's crt/ headers, the
# CUDA 13 crt/ headers of torch's release (CRT_VERSION, default 13.0.88, torch 2.11's), and cuda-pathfinder. Packs
# them with .ci/gpu/stack_bundle.py (their files in one tar, zstd with a long window: 270 MB of wheels in three
# parts of 55 MB, OUT_DIR/stack.tzst.NN, and OUT_DIR/manifest.txt; .ci/gpu/fetch_wheels.sh) and adds the zstandard
# wheel, which unpacks them where no zstd command is installed. Send every file of OUT_DIR to one folder on the GPU machine, outside the
# checkout (the manifest and the zstandard wheel with the first part), then run .ci/gpu/install_cuda12_stack.sh
# there.
set -euo pipefail
out=${1:?usage: fetch_cuda12_stack.sh OUT_DIR [PYTHON_VERSION]}
py=${2:-3.12}
crt=${CRT_VERSION:-13.0.88}
# The versions `pip install .` resolves beside a CUDA 13 torch (checked by .ci/check_resolution.py).
wheels=(cupy-cuda12x==14.2.0 nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79
        nvidia-cuda-nvcc-cu12==12.9.86 "nvidia-cuda-crt==$crt" cuda-pathfinder==1.9.1)

exec bash "$(dirname "$0")/fetch_wheels.sh" "$out" "$py" "${wheels[@]}"
