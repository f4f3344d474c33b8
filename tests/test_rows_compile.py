"""cujit/rows.cuh compiles for every dtype, for sm_80 and sm_90, with no GPU; tests/test_rows_gpu.py runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import cujit

ARCHS = ["sm_80", "sm_90"]
KERNELS = Path(__file__).parent / "kernels" / "rows_test.cuh"
#: Every dtype alias of cujit/types.cuh that rows.cuh walks (1, 2, 4 and 8 bytes).
DTYPES = ["fp32_t", "fp16_t", "bf16_t", "fp8_e4m3_t", "fp8_e5m2_t", "int8_t", "int16_t", "int32_t", "int64_t",
          "uint8_t", "uint16_t", "uint32_t", "uint64_t", "fp64_t", "bool"]


def wrappers(dtype: str) -> list[tuple[str, str]]:
    """The test kernels of rows_test.cuh for one dtype alias, as (python name, C++ expression)."""
    return [("map1", f"rows_map1<{dtype}, 2>"), ("map1_u1", f"rows_map1<{dtype}, 1>"),
            ("map2", f"rows_map2<{dtype}>"), ("write", f"rows_write<{dtype}>"), ("read", f"rows_read<{dtype}>"),
            ("flat_map2", f"flat_map2<{dtype}>")]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_dtype_compiles(arch: str) -> None:
    expressions = [(f"{name}_{d}", e) for d in DTYPES for name, e in wrappers(d)]
    module = cujit.load_jit("rows_test", cuda_files=[KERNELS], cuda_wrappers=expressions)
    compiled = module.compile(arch)
    assert compiled.arch == arch
    assert compiled.cubin[:4] == b"\x7fELF"
    assert set(compiled.lowered) == {e for _, e in expressions}
    assert [p.cpp for p in compiled.params["rows_map2<bf16_t>"] or ()] == [
        "__nv_bfloat16*", "const __nv_bfloat16*", "const __nv_bfloat16*", "const long long*", "unsigned long long",
        "unsigned int"]


def test_an_input_of_another_dtype_is_a_compile_error(tmp_path: Path) -> None:
    source = tmp_path / "mixed.cuh"
    source.write_text(
        "#include <cujit/rows.cuh>\n"
        "__global__ void mixed(float* y, const int* x, uint64_t n) {\n"
        "  cujit::row_map(y, n, cujit::Threads::grid(), [](float v) { return v; }, x);\n"
        "}\n")
    module = cujit.load_jit("mixed", cuda_files=[source], cuda_wrappers=[("mixed", "mixed")])
    with pytest.raises(cujit.CompileError) as info:
        module.compile("sm_90")
    assert "rows.cuh" in info.value.log


def test_a_type_wider_than_8_bytes_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "wide.cuh"
    source.write_text(
        "#include <cujit/rows.cuh>\n"
        "struct Wide { double re, im; };\n"
        "__global__ void wide(Wide* y, uint64_t n) {\n"
        "  cujit::row_write(y, n, cujit::Threads::grid(), [](uint64_t) { return Wide{0.0, 0.0}; });\n"
        "}\n")
    module = cujit.load_jit("wide", cuda_files=[source], cuda_wrappers=[("wide", "wide")])
    with pytest.raises(cujit.CompileError, match="T must be 1, 2, 4 or 8 bytes"):
        module.compile("sm_90")


def test_the_benchmark_kernels_compile() -> None:
    source = Path(__file__).parent.parent / "benchmarks" / "odd_widths.cuh"
    module = cujit.load_jit("odd_widths", cuda_files=[source], cuda_wrappers=[
        (f"{form}_{d}", f"affine_{form}<{d}>") for form in ("aligned_only", "rows") for d in ("fp32_t", "bf16_t")])
    assert module.compile("sm_90").cubin[:4] == b"\x7fELF"


def test_the_row_map_candidates_compile() -> None:
    """benchmarks/tune_rows.py's candidates (row_map forms, launch bounds, edges first, Liger's form), bf16 and fp32."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        import tune_rows
    finally:
        sys.path.pop(0)
    torch = pytest.importorskip("torch")
    for dtype in (torch.bfloat16, torch.float32):
        jit, names = tune_rows.module(dtype)
        assert len(names) == 9 and jit.compile("sm_90").cubin[:4] == b"\x7fELF"
