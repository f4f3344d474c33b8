"""compile_modules: many modules at once in worker processes, the same results as compiling them one by one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cujit
from cujit._runtime import cache

SOURCE = """
#include <cstdint>
template <int kAdd>
__global__ void add(int32_t* out, const int32_t* in, uint64_t n) {
  const uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = in[i] + kAdd;
}
"""


def _modules(tmp_path: Path, count: int) -> list[cujit.JitModule]:
    path = tmp_path / "add.cuh"
    path.write_text(SOURCE)
    return [cujit.load_jit("add", i, cuda_files=[path], cuda_wrappers=[("add", f"add<{i}>")]) for i in range(count)]


def test_workers_compile_what_one_process_would(tmp_path: Path) -> None:
    modules = _modules(tmp_path, 4)
    before = cache.cache_stats()["compiles"]
    compiled = cujit.compile_modules(modules, arch="sm_90", jobs=2)
    assert [c.arch for c in compiled] == ["sm_90"] * 4
    assert [c.lowered for c in compiled] == [{f"add<{i}>": m.compile("sm_90").lowered[f"add<{i}>"]}
                                             for i, m in enumerate(modules)]
    # The workers compiled and published; this process compiled nothing and holds the results in memory.
    assert cache.cache_stats()["compiles"] == before
    folder = cache.disk_dir()
    assert folder is not None and len(list(folder.glob("*.cubin"))) == 4
    cache.clear_memory()
    again = [m.compile("sm_90") for m in _modules(tmp_path, 4)]
    assert [c.cubin for c in again] == [c.cubin for c in compiled]
    assert cache.cache_stats()["compiles"] == before


def test_several_archs_and_cached_modules(tmp_path: Path) -> None:
    modules = _modules(tmp_path, 2)
    modules[0].compile("sm_80")
    before = cache.cache_stats()["compiles"]
    compiled = cujit.compile_modules(modules, arch=["sm_80", "sm_90"], jobs=2)
    assert [c.arch for c in compiled] == ["sm_80", "sm_90", "sm_80", "sm_90"]
    assert cache.cache_stats()["compiles"] == before  # the three others were compiled by workers


def test_without_disk_cache_results_come_back_from_the_workers(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUJIT_DISK_CACHE", "0")
    modules = _modules(tmp_path, 3)
    before = cache.cache_stats()["compiles"]
    compiled = cujit.compile_modules(modules, arch="sm_90", jobs=3)
    assert all(c.cubin[:4] == b"\x7fELF" for c in compiled)
    assert [m.compile("sm_90") for m in modules] == compiled
    assert cache.cache_stats()["compiles"] == before


def test_a_failing_module_raises_after_the_others_are_done(tmp_path: Path) -> None:
    modules = _modules(tmp_path, 2)
    bad = tmp_path / "bad.cuh"
    bad.write_text("__global__ void broken(int* p) { p[0] = not_declared; }\n")
    broken = cujit.load_jit("broken", cuda_files=[bad], cuda_wrappers=[("k", "broken")])
    with pytest.raises(cujit.CompileError, match="not_declared") as info:
        cujit.compile_modules([modules[0], broken, modules[1]], arch="sm_90", jobs=3)
    assert info.value.log and "identifier \"not_declared\" is undefined" in info.value.log
    before = cache.cache_stats()["compiles"]
    assert [m.compile("sm_90").arch for m in modules] == ["sm_90", "sm_90"]
    assert cache.cache_stats()["compiles"] == before


def test_one_job_compiles_in_this_process(tmp_path: Path) -> None:
    modules = _modules(tmp_path, 2)
    before = cache.cache_stats()["compiles"]
    cujit.compile_modules(modules, arch="sm_90", jobs=1)
    assert cache.cache_stats()["compiles"] == before + 2


def test_argument_errors(tmp_path: Path) -> None:
    modules = _modules(tmp_path, 1)
    with pytest.raises(TypeError, match="expected JitModule objects, got str"):
        cujit.compile_modules(["add.cuh"], arch="sm_90")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="jobs: expected a positive number of processes, got 0"):
        cujit.compile_modules(modules, arch="sm_90", jobs=0)
    with pytest.raises(TypeError, match="jobs must be an int, got float"):
        cujit.compile_modules(modules, arch="sm_90", jobs=2.0)  # type: ignore[arg-type]
    with pytest.raises(cujit.CujitError, match="arch: expected an arch such as sm_80"):
        cujit.compile_modules(modules, arch="90")
    with pytest.raises(ValueError, match="arch: expected at least one arch, got none"):
        cujit.compile_modules(modules, arch=[])
    assert cujit.compile_modules([], arch="sm_90") == []


def test_precompile_jobs_option() -> None:
    done = subprocess.run([sys.executable, "-m", "cujit", "precompile", "--arch", "sm_90", "--jobs", "2", "--op",
                           "add_constant", "--op", "silu_and_mul"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "precompiled 10 modules" in done.stdout  # add_constant's 4 instances and silu_and_mul's 6 (2 paths)
    bad = subprocess.run([sys.executable, "-m", "cujit", "precompile", "--arch", "sm_90", "--jobs", "0"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode == 1 and "--jobs: expected a positive number of processes, got 0" in bad.stderr


def test_precompiled_headers_leave_no_trace_in_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cujit._runtime import headers

    kernels = Path(__file__).parent / "kernels"
    folder = tmp_path / "pch"
    folder.mkdir()
    monkeypatch.setattr(headers, "_PCH_ROOT", [folder])
    norm = [cujit.load_jit("norm", t, cuda_files=[kernels / "ported_norm.cuh"],
                           cuda_wrappers=[("k", f"ported::row_abs_max<{t}, 256>")]) for t in ("float", "__half")]
    wmma = cujit.load_jit("wmma", cuda_files=[kernels / "ported_wmma.cuh"], cuda_wrappers=[("k", "ported::wmma_gemm")])
    # Another prefix in between, then the first one again: NVRTC's notes about PCH files stay out of the log.
    for module in (norm[0], wmma, norm[1]):
        compiled = module.compile("sm_90")
        assert compiled.log == "" and compiled.cubin[:4] == b"\x7fELF"
    assert len(list(folder.rglob("*.pch"))) == 2


def test_an_edited_header_never_meets_its_old_pch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NVRTC alone would reuse the PCH of the old contents (same size, same name): cujit keys the PCH folder on them.
    from cujit._runtime import headers

    monkeypatch.setattr(headers, "_PCH_ROOT", [tmp_path / "pch"])
    (tmp_path / "pch").mkdir()
    header = tmp_path / "value.cuh"
    kernel = tmp_path / "kernel.cuh"
    kernel.write_text('#include "value.cuh"\n#include <type_traits>\n'
                      "template <typename T> __global__ void k(T* p, Current tag) {}\n")
    seen = []
    for value, dtype in ((11, "int"), (11, "float"), (22, "int"), (33, "float")):
        header.write_text(f"template <int N> struct Tag {{}};\nusing Current = Tag<{value}>;\n")
        module = cujit.load_jit("k", value, dtype, cuda_files=[kernel], cuda_wrappers=[("k", f"k<{dtype}>")])
        params = module.compile("sm_90").params[f"k<{dtype}>"] or ()
        seen.append(params[1].cpp)
    assert seen == ["Tag<11>", "Tag<11>", "Tag<22>", "Tag<33>"]


def test_a_process_turns_pch_on_when_it_compiles_a_prefix_twice(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from cujit._runtime import headers

    monkeypatch.setattr(headers, "_PCH_ROOT", [])
    monkeypatch.setattr(headers, "_PCH_SEEN", set())
    a, b = tmp_path / "a.cuh", tmp_path / "b.cuh"
    a.write_text("// a\n")
    b.write_text("// b\n")
    files_a, files_b = [("a.cuh", a.read_bytes())], [("b.cuh", b.read_bytes())]
    assert headers.pch_options(files_a, [], (), "sm_90") == ()
    assert headers.pch_options(files_a, [], ("-DX",), "sm_90") == ()
    second = headers.pch_options(files_a, [], (), "sm_90")
    assert second[0] == "-pch" and any(o.startswith("--pch-dir=") for o in second)
    assert headers.pch_options(None, [], (), "sm_90") == ()  # a computed include: never a PCH
    other = headers.pch_options(files_b, [], (), "sm_80")  # on for the rest of the process, in a folder per prefix
    assert other[0] == "-pch" and other != second


def test_an_edited_pre_included_header_never_meets_its_old_pch(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cujit._runtime import headers

    monkeypatch.setattr(headers, "_PCH_ROOT", [tmp_path / "pch"])
    (tmp_path / "pch").mkdir()
    pre = tmp_path / "pre.cuh"
    kernel = tmp_path / "kernel.cuh"
    kernel.write_text("template <typename T> __global__ void k(T* p, Current tag) {}\n")
    seen = []
    for value, dtype in ((11, "int"), (11, "float"), (22, "int")):
        pre.write_text(f"template <int N> struct Tag {{}};\nusing Current = Tag<{value}>;\n")
        module = cujit.load_jit("k", value, dtype, cuda_files=[kernel], cuda_wrappers=[("k", f"k<{dtype}>")],
                                extra_cuda_cflags=[f"--pre-include={pre}"])
        params = module.compile("sm_90").params[f"k<{dtype}>"] or ()
        seen.append(params[1].cpp)
    assert seen == ["Tag<11>", "Tag<11>", "Tag<22>"]
