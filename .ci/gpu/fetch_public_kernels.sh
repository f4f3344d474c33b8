#!/usr/bin/env bash
# Download FlashInfer's and SGLang's published wheels and keep only the kernel headers that
# tests/test_public_kernels.py compiles, for CI and for a GPU machine without network access.
#
#   bash .ci/gpu/fetch_public_kernels.sh OUT_DIR
#   CUJIT_PUBLIC_KERNELS_DIR=OUT_DIR python -m pytest -q tests/test_public_kernels.py
#
# Fetches flashinfer-python and sglang (no dependencies) at the versions the test's edits are written for, and
# extracts, under the same paths as in site-packages:
#   flashinfer/data/include/flashinfer/*.cuh, *.h and trtllm/common/*     (norm.cuh, activation.cuh, what they include)
#   sglang/kernels/jit/include/sgl_kernel/* and csrc/elementwise/activation.cuh
# plus each wheel's licence files, and OUT_DIR/versions.txt (name==version per line). About 1.5 MB in all; the
# globs must agree with Package.files in the test. Nothing of these projects is committed to this repository.
set -euo pipefail
out=${1:?usage: fetch_public_kernels.sh OUT_DIR}
py=${PYTHON_VERSION:-3.11}  # sglang publishes CPython-specific wheels (3.11 and later); the headers are the same
python=${PYTHON:-python3}
wheels=(flashinfer-python==0.7.4 sglang==0.5.23)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The package index itself, not this machine's local wheel folders or constraints.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$python" -m pip download --quiet --no-deps --only-binary :all: --dest "$work" \
    --python-version "$py" --implementation cp --abi "cp${py/./}" --abi abi3 --abi none \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "${wheels[@]}"

mkdir -p "$out"
"$python" - "$work" "$out" "${wheels[@]}" <<'EOF'
import fnmatch
import sys
import zipfile
from pathlib import Path

work, out, specs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
# '*' stays within one folder, as in the test's Path.glob.
globs = {
    "flashinfer-python": ["flashinfer/data/include/flashinfer/*.cuh", "flashinfer/data/include/flashinfer/*.h",
                          "flashinfer/data/include/flashinfer/trtllm/common/*"],
    "sglang": ["sglang/kernels/jit/include/sgl_kernel/*", "sglang/kernels/jit/csrc/elementwise/activation.cuh"],
}


def wanted(name: str, patterns: list[str]) -> bool:
    parts = name.split("/")
    for pattern in patterns:
        pieces = pattern.split("/")
        if len(pieces) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pieces)):
            return True
    return False


lines = []
for spec in specs:
    dist, version = spec.split("==")
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = [w for w in work.glob("*.whl") if w.name.startswith(stem)]
    if len(found) != 1:
        sys.exit(f"error: expected one wheel for {spec} in {work}, found {[w.name for w in found]}")
    with zipfile.ZipFile(found[0]) as wheel:
        names = [n for n in wheel.namelist() if not n.endswith("/")]
        headers = [n for n in names if wanted(n, globs[dist])]
        licences = [n for n in names if ".dist-info/" in n and "licen" in n.lower()]
        if not headers:
            sys.exit(f"error: {found[0].name} holds no file matching {globs[dist]}")
        for name in headers + licences:
            target = out / (f"licenses/{dist}/{Path(name).name}" if name in licences else name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(wheel.read(name))
    print(f"{spec}: {len(headers)} headers from {found[0].name}")
    lines.append(spec)
(out / "versions.txt").write_text("".join(f"{line}\n" for line in lines))
EOF
du -sh "$out"
