"""The FP8 quantization plans without a GPU: every instantiation the plans can choose compiles, the precompile
lists hold those of the common serving shapes, the group geometry of the host is the kernel's, and the
multiply-high divider gives the integer quotient."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import cujit
from cujit.fp8_quant import (
    AMAX_THREADS,
    divider,
    group_plan,
    per_tensor_plan,
    per_tensor_quant_fp8,
    per_tensor_row_plan,
    per_token_group_quant_fp8,
    per_token_plan,
    per_token_quant_fp8,
)

KERNEL = Path(cujit.__file__).parent / "kernels" / "fp8_quant.cuh"
DTYPES = {"bfloat16": ("bf16_t", 2), "float16": ("fp16_t", 2), "float32": ("fp32_t", 4)}
TOKENS = (1, 16, 256, 257, 4097)
HIDDEN = (7, 100, 136, 1000, 4096, 5120, 7168, 8192, 16384, 65536, 1 << 20)
GROUPS = (16, 32, 64, 128, 256, 512, 1024)
TOTALS = (0, 5, 4096, 1 << 16, (1 << 16) + 1, 1 << 20, (1 << 20) + 1, 4097 * 7168)


def _token_expressions(dtype: str) -> set[str]:
    cpp, itemsize = DTYPES[dtype]
    return {"per_token_quant_fp8_kernel<{}, {}, {}, true, {}>".format(cpp, *per_token_plan(t, h, itemsize), rows)
            for t in TOKENS for h in HIDDEN for rows in ("false", "true")}


def _group_expressions(dtype: str) -> set[str]:
    cpp, itemsize = DTYPES[dtype]
    found = set()
    for t in TOKENS:
        for g in GROUPS:
            threads, vecs, _ = group_plan(t, g, itemsize)
            for rows in ("false", "true"):
                found.add(f"per_token_group_quant_fp8_kernel<{cpp}, {g}, {threads}, {vecs}, true, {rows}>")
    return found


def _tensor_expressions(dtype: str) -> set[str]:
    cpp, itemsize = DTYPES[dtype]
    found = {f"per_tensor_amax_kernel<{cpp}, {AMAX_THREADS}, {rows}>" for rows in ("false", "true")}
    for total in TOTALS:
        for dynamic in (False, True):
            threads, vecs, *_ = per_tensor_plan(total, itemsize, dynamic)
            found.add(f"per_tensor_quant_fp8_kernel<{cpp}, {threads}, {vecs}, true, false>")
        for hidden, stride in ((max(total, 1), max(total, 1)), (7, 8), (4096, 4097)):
            threads, vecs, *_ = per_tensor_row_plan(total // hidden, hidden, stride, itemsize)
            found.add(f"per_tensor_quant_fp8_kernel<{cpp}, {threads}, {vecs}, true, true>")
    return found


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_instantiation_the_plans_choose_compiles(dtype: str) -> None:
    expressions = sorted(_token_expressions(dtype) | _group_expressions(dtype) | _tensor_expressions(dtype))
    module = cujit.load_jit(f"fp8_plans_{dtype}", cuda_files=[KERNEL],
                            cuda_wrappers=[(f"k{i}", e) for i, e in enumerate(expressions)])
    compiled = module.compile("sm_90")
    assert compiled.cubin[:4] == b"\x7fELF" and len(compiled.lowered) == len(expressions)


def test_the_tuning_variants_compile() -> None:
    """The IEEE-division forms (kRecip false) that benchmarks/tune_quant.py compares, for sm_80 and sm_90."""
    expressions = ["per_token_quant_fp8_kernel<bf16_t, 512, 1, false>",
                   "per_token_quant_fp8_kernel<bf16_t, 512, 1, false, true>",
                   "per_token_group_quant_fp8_kernel<bf16_t, 128, 128, 4, false>",
                   "per_token_group_quant_fp8_kernel<bf16_t, 128, 128, 4, false, true>",
                   "per_tensor_quant_fp8_kernel<bf16_t, 256, 4, false>",
                   "per_tensor_quant_fp8_kernel<bf16_t, 256, 4, false, true>"]
    module = cujit.load_jit("fp8_ieee_variants", cuda_files=[KERNEL],
                            cuda_wrappers=[(f"k{i}", e) for i, e in enumerate(expressions)])
    for arch in ("sm_80", "sm_90"):
        assert module.compile(arch).cubin[:4] == b"\x7fELF"


def _fields(op: object) -> list[dict[str, object]]:
    return op.op.instances()  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_precompile_lists_hold_the_serving_shapes(dtype: str) -> None:
    _, itemsize = DTYPES[dtype]
    for tokens in (1, 16, 4097):
        for hidden in (4096, 7168):
            threads, vecs = per_token_plan(tokens, hidden, itemsize)
            for row_path in (False, True):  # the plan is the same on both paths
                assert {"dtype": dtype, "threads": threads, "vecs": vecs, "row_path": row_path} in _fields(
                    per_token_quant_fp8)
            threads, vecs, _ = group_plan(tokens, 128, itemsize)
            for row_path in (False, True):
                assert {"dtype": dtype, "group_size": 128, "threads": threads, "vecs": vecs,
                        "row_path": row_path} in _fields(per_token_group_quant_fp8)
            for dynamic in (False, True):
                threads, vecs, *_ = per_tensor_plan(tokens * hidden, itemsize, dynamic)
                assert {"dtype": dtype, "threads": threads, "vecs": vecs, "row_path": False} in _fields(
                    per_tensor_quant_fp8)
            threads, vecs, *_ = per_tensor_row_plan(tokens, hidden, hidden + 1, itemsize)
            assert {"dtype": dtype, "threads": threads, "vecs": vecs, "row_path": True} in _fields(
                per_tensor_quant_fp8)


def test_group_geometry_of_the_host_is_the_kernels(tmp_path: Path) -> None:
    lines = [f'#include "{KERNEL}"']
    for dtype, (cpp, itemsize) in DTYPES.items():
        for tokens in (1, 4097):
            for group in GROUPS:
                threads, vecs, per_block = group_plan(tokens, group, itemsize)
                lines.append(f"static_assert(fp8_quant_detail::GroupGeometry<{cpp}, {group}, {threads}, {vecs}>::"
                             f"kGroupsPerBlock == {per_block}, \"{dtype} {group}\");")
    lines.append("__global__ void probe(int* p) { p[0] = 1; }")
    probe = tmp_path / "geometry.cuh"
    probe.write_text("\n".join(lines) + "\n")
    cujit.load_jit("fp8_group_geometry", cuda_files=[probe], cuda_wrappers=[("probe", "probe")]).compile("sm_90")


def _umulhi_shift(n: int, magic: int, shift: int) -> int:
    return ((n * magic) >> 32) >> shift


def test_divider_gives_the_quotient() -> None:
    rng = random.Random(0)
    divisors = [*range(2, 2000), *(1 << k for k in range(1, 31)), *((1 << k) + 1 for k in range(1, 31)),
                *((1 << k) - 1 for k in range(2, 32)), *(rng.randrange(2, 1 << 31) for _ in range(3000))]
    top = (1 << 31) - 1
    for d in divisors:
        magic, shift = divider(d)
        assert 0 < magic < 1 << 32 and 0 <= shift < 32
        samples = {0, 1, d - 1, d, d + 1, top, top - top % d, top - top % d - 1}
        samples |= {rng.randrange(top) for _ in range(40)}
        samples |= {m * d + r for m in (1, 2, rng.randrange(1, top // d + 1)) for r in (0, d - 1)}
        for n in (n for n in samples if 0 <= n <= top):
            assert _umulhi_shift(n, magic, shift) == n // d, (n, d)
    assert divider(1) == (0, 0)  # the kernel takes n itself
