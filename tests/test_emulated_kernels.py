"""Kernels run on the host: device code compiled by g++ against tests/emulated/cuda_host.h, no GPU.

Each program in tests/emulated/ launches one kernel of cujit/kernels/ over many shapes, dtypes and alignments
and checks its outputs against a reference, exiting non-zero on a mismatch. These cover kernels whose GPU tests
cannot run where there is no GPU; the GPU tests remain the authority (tests/test_*_gpu.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cujit._runtime import toolchain

HERE = Path(__file__).resolve().parent / "emulated"
PROGRAMS = sorted(p.name for p in HERE.glob("*.cpp"))


def _include_dirs() -> list[Path]:
    try:
        cuda = toolchain.cuda_include_dir()
    except Exception as exc:  # no NVRTC headers found: the message says which
        pytest.skip(f"no CUDA headers for the host compiler: {exc}")
    cccl = toolchain.cccl_include_dir()
    if cccl is None:
        pytest.skip("no libcu++ headers (CuPy's copy) for <nv/target>")
    return [HERE, cuda, cccl, toolchain.cujit_include_dir(), toolchain.kernels_dir()]


@pytest.mark.parametrize("program", PROGRAMS)
def test_kernel_on_the_host(program: str, tmp_path: Path) -> None:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    binary = tmp_path / program.removesuffix(".cpp")
    includes = [f"-I{d}" for d in _include_dirs()]
    build = subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", "-include", "cuda_host.h", *includes,
                            str(HERE / program), "-o", str(binary)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "cases passed" in run.stdout
