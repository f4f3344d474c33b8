"""The constants that the norm kernels share with their host plan are written once, in cujit/kernels/norm_plan.cuh.

- The Python plan's path ids are the header's values, as the reader parses them, and NVRTC agrees with the reader
  (a kernel that static_asserts every parsed value compiles; one that asserts a wrong value does not).
- No other norm header declares a path id or a limit of its own.
- The reader refuses a declaration it cannot parse instead of skipping it.
- The plan's configurations stay inside the header's limits.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cujit
from cujit._runtime import kernel_constants
from cujit._runtime.errors import CompileError, CujitError
from cujit._runtime.kernel_constants import KERNELS, header_constants
from cujit.rms_norm import (
    FUSED_SCALAR_CONFIGS,
    PATH_PHASED,
    PATH_PHASED_DIRECT,
    PATH_SCALAR,
    PATH_TILED,
    PATH_VECTOR,
    PATH_VECTOR_LATE,
    PHASED_CONFIGS,
    SCALAR_CONFIGS,
    TILED_CONFIG,
    VECTOR_CONFIGS,
)

PLAN = header_constants("norm_plan.cuh")


def test_path_ids_come_from_the_header() -> None:
    paths = (PATH_VECTOR, PATH_SCALAR, PATH_TILED, PATH_PHASED, PATH_VECTOR_LATE, PATH_PHASED_DIRECT)
    assert set(paths) == {0, 1, 2, 3, 4, 5}
    assert paths == (PLAN["kPathVector"], PLAN["kPathScalar"], PLAN["kPathTiled"], PLAN["kPathPhased"],
                     PLAN["kPathVectorLate"], PLAN["kPathPhasedDirect"])
    assert PLAN["kMinResidentThreads"] == 1024 and PLAN["kMaxStagedBytes"] == 40960


def _checker(tmp_path: Path, values: dict[str, int]) -> cujit.JitModule:
    source = tmp_path / "plan_check.cuh"
    asserts = "\n".join(f"static_assert(rms_norm_detail::{k} == {v}, \"{k}\");" for k, v in values.items())
    source.write_text(f'#include "{KERNELS / "rms_norm.cuh"}"\n{asserts}\n'
                      "__global__ void plan_check(int* p) { p[0] = 1; }\n")
    return cujit.load_jit("plan_check", cuda_files=[source], cuda_wrappers=[("plan_check", "plan_check")])


def test_nvrtc_sees_the_values_the_reader_parses(tmp_path: Path) -> None:
    assert _checker(tmp_path, PLAN).compile("sm_90").cubin[:4] == b"\x7fELF"
    with pytest.raises(CompileError, match="kPathTiled"):
        _checker(tmp_path, {**PLAN, "kPathTiled": PLAN["kPathTiled"] + 1}).compile("sm_90")


@pytest.mark.parametrize("header", ["rms_norm.cuh", "qk_norm.cuh"])
def test_no_other_norm_header_declares_a_plan_constant(header: str) -> None:
    text = (KERNELS / header).read_text()
    for name in PLAN:
        assert not re.search(rf"\b{name}\s*=", text), f"{header} declares {name}: it belongs in norm_plan.cuh"
    assert '#include "norm_plan.cuh"' in (KERNELS / "rms_norm.cuh").read_text()


@pytest.mark.parametrize(("line", "message"), [
    ("constexpr int kShift = 1 << 4;", "expected `constexpr int kName = <integer>;`"),
    ("constexpr int64_t kWide = 4;", "expected `constexpr int kName = <integer>;`"),
    ("constexpr int kA = 1;\nconstexpr int kA = 2;", "kA is declared twice"),
])
def test_reader_refuses_what_it_cannot_parse(line: str, message: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plan.cuh").write_text(f"// constexpr in a comment is fine\nconstexpr int kOk = -3;  // ok\n{line}\n")
    monkeypatch.setattr(kernel_constants, "KERNELS", tmp_path)
    header_constants.cache_clear()
    try:
        with pytest.raises(CujitError, match=re.escape(message)):
            header_constants("plan.cuh")
        (tmp_path / "good.cuh").write_text("constexpr int kOk = -3;  // ok\n  constexpr int kTwo=2;\n")
        assert header_constants("good.cuh") == {"kOk": -3, "kTwo": 2}
    finally:
        header_constants.cache_clear()


def test_plan_configurations_fit_the_kernel_limits() -> None:
    for row_threads, vecs in PHASED_CONFIGS:
        staged_words = row_threads * vecs * 4 + 4  # rms_norm.cuh's kStagedWords
        assert staged_words * 4 <= PLAN["kMaxStagedBytes"], (row_threads, vecs)
        assert row_threads >= 8  # a thread per head and tail element of a 16-bit row
    for row_threads, _ in (*VECTOR_CONFIGS, *PHASED_CONFIGS, *SCALAR_CONFIGS, *FUSED_SCALAR_CONFIGS,
                            TILED_CONFIG):
        assert row_threads & (row_threads - 1) == 0 and row_threads <= 1024


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_phased_path_with_a_direct_weight_compiles(arch: str) -> None:
    """PATH_PHASED_DIRECT, which no rule picks yet (benchmarks/tune_norms.py times it, and the GPU tests launch
    it): both forms, each dtype, one and several rows per group."""
    wrappers = [(f"k{i}", f"{op}_kernel<{t}, {gemma}, {PATH_PHASED_DIRECT}, 256, 256, 2, {rows}>")
                for i, (op, t, gemma, rows) in enumerate(
                    (op, t, gemma, rows) for op in ("rms_norm", "fused_add_rms_norm")
                    for t in ("fp32_t", "fp16_t", "bf16_t") for gemma in ("false", "true") for rows in (1, 4))]
    module = cujit.load_jit("phased_direct", cuda_files=[KERNELS / "rms_norm.cuh"], cuda_wrappers=wrappers)
    assert module.compile(arch).cubin[:4] == b"\x7fELF"


def test_the_sweep_times_both_weight_sources_of_the_phased_path() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        torch = pytest.importorskip("torch")
        import tune_norms
    finally:
        sys.path.pop(0)
    for offset, hidden in ((False, 4097), (True, 4096)):
        found = tune_norms.norm_candidates(hidden, torch.bfloat16, 4097, offset)
        paths = {c.path for c in found}
        assert {PATH_PHASED, PATH_PHASED_DIRECT, PATH_SCALAR} <= paths and PATH_VECTOR not in paths, (offset, paths)
        assert any(c.path == PATH_PHASED_DIRECT and (c.row_threads, c.vecs) == (256, 2) for c in found)
    assert tune_norms.parse_shape("4096x4096+1") == (torch.bfloat16, 4096, 4096, True)
    assert tune_norms.parse_shape("4097x2881") == (torch.bfloat16, 4097, 2881, False)


def test_fused_element_loads_over_512_threads_only_where_the_row_fills_their_tile() -> None:
    # bf16 rows out of phase with the weight: 8192 values fill the 1024 x 1 element tile, 7168 fill 7/8 of it;
    # 5121 (641 of 1024 vectors' worth) and 4097 take the phased path. rms_norm's own element tiles hold twice the
    # values a thread and are not bound by the rule.
    from cujit import rms_norm

    def fused(hidden: int) -> tuple[int, int]:
        c = rms_norm.norm_config(hidden, "bfloat16", False, True, 4096, fused=True)
        return c.path, c.row_threads

    assert fused(8192) == (rms_norm.PATH_SCALAR, 1024)
    assert fused(7168) == (rms_norm.PATH_SCALAR, 1024)
    assert fused(7160)[0] == rms_norm.PATH_PHASED
    assert fused(5121) == (rms_norm.PATH_PHASED, 512)
    assert fused(4097)[0] == rms_norm.PATH_PHASED
    assert fused(4096) == (rms_norm.PATH_SCALAR, 512)
