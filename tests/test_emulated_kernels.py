"""Kernels run on the host: device code compiled by g++ against tests/emulated/cuda_host.h, no GPU.

Each program in tests/emulated/ launches the kernels of one op of cujit/kernels/ (or cujit/rows.cuh's helpers) over
many shapes, dtypes and alignments and checks the outputs against a reference, exiting non-zero on a mismatch.
Where an op's configuration comes from its Python plan (rms_norm, the gated activations), the program's cases are
generated here from that plan, so the host runs what the op would launch. These cover kernels whose GPU tests
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

_CPP_TYPES = {"float32": "float", "float16": "fp16_t", "bfloat16": "bf16_t"}


def rms_norm_cases() -> str:
    """rms_norm.cpp's cases: each shape with the configuration that cujit/rms_norm.py's rule picks for it.

    (hidden, tokens, x offset, weight offset, many tokens): aligned rows (the vector path, and the tiled path past
    the longest vector configuration), odd rows and rows one element in (element loads or the phased path, one row
    a group or LOOP_ROWS with ``many``), the fused form's element loads of 1024 threads (a full tile, FUSED_FILL),
    a weight that is not 16-byte aligned (element loads), rows of a few vectors (several rows a warp).
    """
    from cujit._runtime.dtypes import as_dtype
    from cujit.rms_norm import _rule

    shapes = [(4096, 3, 0, 0, False), (64, 9, 0, 0, False), (4097, 2, 0, 0, False), (4096, 2, 1, 0, False),
              (4096, 3, 1, 0, True), (4097, 5, 0, 0, True), (2881, 2, 0, 0, True), (8192, 2, 1, 0, False),
              (5121, 2, 1, 0, False), (1000, 3, 0, 1, False), (40000, 2, 0, 0, False), (40001, 1, 1, 0, False)]
    lines = []
    for dtype in ("bfloat16", "float16", "float32"):
        lanes = 16 // as_dtype(dtype).itemsize
        for fused in (False, True):
            for gemma in (False, True):
                for hidden, tokens, x_off, w_off, many in shapes:
                    if dtype == "float32" and hidden > 8192 and gemma:
                        continue  # the long rows once per dtype and form are enough
                    stride = hidden + x_off + lanes  # rows a vector apart beyond their width
                    vector = hidden % lanes == 0 and x_off == 0 and w_off == 0 and stride % lanes == 0
                    c = _rule(hidden, dtype, vector, not vector and w_off == 0, many, fused)
                    lines.append(f"CASE({_CPP_TYPES[dtype]}, {str(gemma).lower()}, {c.path}, {c.block}, "
                                 f"{c.row_threads}, {c.vecs}, {c.rows}, {str(fused).lower()}, {hidden}, {tokens}, "
                                 f"{x_off}, {w_off}, {stride})")
    return "\n".join(lines) + "\n"


def activation_cases() -> str:
    """activation.cpp's cases: (d, rows, x offset) with the configuration and row layout cujit/silu_and_mul.py
    picks, for SiLU and both GELU forms: whole vectors (the vector path), odd d and x one element in (the row
    path: several short rows a block at 100, one group a row at 4097, a row cut into segments at 20000)."""
    from cujit._runtime.dtypes import as_dtype
    from cujit.silu_and_mul import activation_config, gated_layout

    shapes = [(4096, 3, 0), (64, 5, 0), (100, 7, 0), (4097, 2, 0), (4096, 2, 1), (20000, 2, 1), (1, 3, 1)]
    lines = []
    for dtype in ("bfloat16", "float16", "float32"):
        itemsize = as_dtype(dtype).itemsize
        lanes = 16 // itemsize
        for kind in (0, 1, 2):
            for d, rows, x_off in shapes:
                c = activation_config(d, dtype, d % lanes == 0 and x_off == 0)
                layout = gated_layout(d, as_dtype(dtype), c.row_path)
                if c.row_path:
                    grid = -(-rows * layout.segs // (c.block // layout.group))
                else:
                    grid = -(-rows * d // (c.block * c.vecs * lanes))
                lines.append(f"CASE({_CPP_TYPES[dtype]}, {str(c.row_path).lower()}, {c.block}, {c.vecs}, {kind}, {d}, "
                             f"{rows}, {x_off}, {layout.group}, {layout.seg}, {layout.segs}, {grid})")
    return "\n".join(lines) + "\n"


#: Programs whose cases are generated from cujit's Python side, by the name of the file they include.
GENERATED = {"rms_norm.cpp": ("rms_norm_cases.inc", rms_norm_cases),
             "activation.cpp": ("activation_cases.inc", activation_cases)}


def _include_dirs() -> list[Path]:
    try:
        cuda = toolchain.cuda_include_dir()
    except Exception as exc:  # no NVRTC headers found: the message says which
        pytest.skip(f"no CUDA headers for the host compiler: {exc}")
    cccl = toolchain.cccl_include_dir()
    if cccl is None:
        pytest.skip("no libcu++ headers (CuPy's copy) for <nv/target>")
    return [HERE, cuda, cccl, toolchain.cujit_include_dir(), toolchain.kernels_dir()]


#: Programs built a second time with these flags: topk_softmax's reductions without redux.sync (before sm_80).
VARIANTS = [(p, ()) for p in PROGRAMS] + [("topk_softmax.cpp", ("-DCUJIT_EMULATE_PRE_SM80",))]


@pytest.mark.parametrize(("program", "flags"), VARIANTS, ids=[p + "".join(f) for p, f in VARIANTS])
def test_kernel_on_the_host(program: str, flags: tuple[str, ...], tmp_path: Path) -> None:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    binary = tmp_path / program.removesuffix(".cpp")
    includes = [f"-I{d}" for d in (*_include_dirs(), tmp_path)]
    if program in GENERATED:
        name, make = GENERATED[program]
        (tmp_path / name).write_text(make())
    build = subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", *flags, "-include", "cuda_host.h", *includes,
                            str(HERE / program), "-o", str(binary)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "cases passed" in run.stdout
