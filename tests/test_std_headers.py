"""Kernel code written for nvcc compiles as it is: standard headers, CUDA_VERSION, CUB, WMMA, C++20, hints.

Compile-only (sm_80 and sm_90, no GPU); tests/test_ported_kernels_gpu.py runs the same kernels on a GPU.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import cujit
from cujit._runtime import cache, headers, toolchain
from cujit._runtime.compile import Compiled

ARCHS = ["sm_80", "sm_90"]
KERNELS = Path(__file__).parent / "kernels"
NORM = KERNELS / "ported_norm.cuh"
NORM_KERNELS = [
    ("norm_f16", "ported::fused_add_rms_norm<__half, 256>"),
    ("norm_bf16", "ported::fused_add_rms_norm<__nv_bfloat16, 256>"),
    ("norm_f32", "ported::fused_add_rms_norm<float, 128>"),
    ("silu_and_mul", "ported::act_and_mul<__half, ported::silu>"),
    ("gelu_and_mul", "ported::act_and_mul<float, &ported::gelu_tanh>"),
    ("abs_max", "ported::row_abs_max<__nv_bfloat16, 256>"),
]


def _module(tmp_path: Path, source: str, *expressions: str, flags: tuple[str, ...] = (),
            name: str = "t") -> cujit.JitModule:
    path = tmp_path / f"{name}.cuh"
    path.write_text(source)
    return cujit.load_jit(name, cuda_files=[path], cuda_wrappers=[(f"k{i}", e) for i, e in enumerate(expressions)],
                          extra_cuda_cflags=list(flags))


def _compile(tmp_path: Path, source: str, *expressions: str, arch: str = "sm_90",
             flags: tuple[str, ...] = ()) -> Compiled:
    return _module(tmp_path, source, *expressions, flags=flags).compile(arch)


def _error(tmp_path: Path, source: str, *expressions: str, flags: tuple[str, ...] = ()) -> str:
    with pytest.raises(cujit.CompileError) as info:
        _compile(tmp_path, source, *expressions, flags=flags)
    return str(info.value)


TOUCH = "__global__ void touch(int* p) { p[0] = 1; }\n"


# ------------------------------------------------------------------------------------------- standard headers
@pytest.mark.parametrize("header", (*headers.STAND_INS, "iostream", "string", "atomic"))
def test_each_stand_in_compiles_alone_without_warnings(header: str, tmp_path: Path) -> None:
    compiled = _compile(tmp_path, f"#include <{header}>\n" + TOUCH, "touch")
    assert compiled.cubin[:4] == b"\x7fELF"
    assert compiled.log == ""


@pytest.mark.parametrize("arch", ARCHS)
def test_std_names_have_their_nvcc_meaning(arch: str) -> None:
    module = cujit.load_jit("std_headers", cuda_files=[KERNELS / "std_headers.cuh"],
                            cuda_wrappers=[("use_std", "use_std<twice>")])
    compiled = module.compile(arch)
    assert compiled.log == ""
    assert [p.cpp for p in compiled.params["use_std<twice>"] or ()] == ["float*", "int"]


@pytest.mark.parametrize("first", ["stand-ins", "libcu++"])
def test_stand_ins_and_libcu_together_never_redefine_a_macro(first: str, tmp_path: Path) -> None:
    light = "".join(f"#include <{h}>\n" for h in ("climits", "cfloat", "cstdint", "cstddef", "cmath", "limits.h"))
    libcu = "".join(f"#include <cuda/std/{h}>\n" for h in ("climits", "cfloat", "cstdint", "cstddef", "cmath"))
    libcu += "#include <cub/block/block_reduce.cuh>\n"
    body = "__global__ void k(float* p) { p[0] = INFINITY + NAN + FLT_MAX + INT_MAX + INT64_MAX + SIZE_MAX; }\n"
    compiled = _compile(tmp_path, (light + libcu if first == "stand-ins" else libcu + light) + body, "k")
    assert compiled.log == ""


def test_prelude_declares_what_nvccs_implicit_includes_do(tmp_path: Path) -> None:
    source = (
        "static_assert(sizeof(int32_t) == 4 && sizeof(std::uint64_t) == 8, \"\");\n"
        "__global__ void k(uint* a, ushort* b, ulong* c, double* d) { d[0] = M_SQRT1_2 + M_2_SQRTPI + M_LN2; }\n"
    )
    compiled = _compile(tmp_path, source, "k")
    assert [p.cpp for p in compiled.params["k"] or ()] == ["unsigned int*", "unsigned short*", "unsigned long*",
                                                            "double*"]


def test_iostream_is_empty_and_host_code_behind_the_guard_is_skipped(tmp_path: Path) -> None:
    source = (
        "#include <iostream>\n#include <cstdio>\n"
        "#ifndef __CUDACC_RTC__\nvoid report(int n) { std::cout << n << std::endl; }\n#endif\n"
        "__global__ void k(int n) { if (n < 0) printf(\"%d\\n\", n); }\n"
    )
    assert _compile(tmp_path, source, "k").log == ""


def test_stand_ins_reach_nvrtc_only_and_the_cache_key_covers_them(tmp_path: Path) -> None:
    from cujit.tools.clangd import clangd_flags

    assert not any(str(headers.stand_in_dir()) in f for f in clangd_flags("sm_90"))
    module = _module(tmp_path, "#include <cmath>\n#include <type_traits>\n" + TOUCH, "touch")
    files = cache.header_files(module.sources) or []
    stand_ins = f"<I{list(module.sources.search_dirs()).index(headers.stand_in_dir())}>/"
    names = {name.split("/", 1)[1] for name, _ in files if name.startswith((stand_ins, "<pre"))}
    assert {"cmath", "type_traits", "cujit_prelude.h", "cujit_nvrtc/math_constants.h",
            "cujit_nvrtc/std_export.h", "cujit_nvrtc/int_types.h"} <= names


# ------------------------------------------------------------------------------------------- CUDA_VERSION
def test_cuda_version_is_nvrtcs_version(tmp_path: Path) -> None:
    major, minor = toolchain.nvrtc_version()
    expected = major * 1000 + minor * 10
    source = f"static_assert(CUDA_VERSION == {expected}, \"CUDA_VERSION\");\n#include <cuda.h>\n" + TOUCH
    compiled = _compile(tmp_path, source, "touch")
    assert compiled.log == ""
    assert f"-DCUDA_VERSION={expected}" in _module(tmp_path, TOUCH, "touch").sources.options("sm_90")


def test_cuda_version_from_the_flags_wins(tmp_path: Path) -> None:
    module = _module(tmp_path, "static_assert(CUDA_VERSION == 11080, \"\");\n" + TOUCH, "touch",
                     flags=("-DCUDA_VERSION=11080",))
    assert module.compile("sm_90").log == ""
    assert [o for o in module.sources.options("sm_90") if "CUDA_VERSION" in o] == ["-DCUDA_VERSION=11080"]


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_version_selects_the_vectorized_overload(arch: str, tmp_path: Path) -> None:
    # The public RMSNorm pattern: without CUDA_VERSION the half types silently take the scalar overload.
    check = (
        f'#include "{NORM}"\n'
        "static_assert(ported::norm_path<__half>() == EXPECT_HALF, \"fp16 path\");\n"
        "static_assert(ported::norm_path<__nv_bfloat16>() == EXPECT_HALF, \"bf16 path\");\n"
        "static_assert(ported::norm_path<float>() == 1, \"fp32 path\");\n" + TOUCH
    )
    assert _compile(tmp_path, check, "touch", arch=arch, flags=("-DEXPECT_HALF=2",)).log == ""
    # The same source without the macro (as under NVRTC alone) takes the scalar overload: the check can fail.
    assert _compile(tmp_path, check, "touch", arch=arch, flags=("-UCUDA_VERSION", "-DEXPECT_HALF=1")).log == ""
    message = _error(tmp_path, check, "touch", flags=("-UCUDA_VERSION", "-DEXPECT_HALF=2"))
    assert "fp16 path" in message


# ------------------------------------------------------------------------------------------- public-style kernels
@pytest.mark.parametrize("arch", ARCHS)
def test_ported_kernels_compile(arch: str) -> None:
    norm = cujit.load_jit("ported_norm", cuda_files=[NORM], cuda_wrappers=NORM_KERNELS)
    compiled = norm.compile(arch)
    assert compiled.log == ""
    params = compiled.params["ported::fused_add_rms_norm<__half, 256>"] or ()
    assert [p.kind for p in params] == ["pointer", "pointer", "pointer", "pointer", "record", "pointer"]
    assert params[4].cpp == "ported::NormParams"
    wmma = cujit.load_jit("ported_wmma", cuda_files=[KERNELS / "ported_wmma.cuh"],
                          cuda_wrappers=[("gemm", "ported::wmma_gemm")])
    assert wmma.compile(arch).log == ""
    concepts = cujit.load_jit("ported_concepts", cuda_files=[KERNELS / "ported_concepts.cuh"],
                              cuda_wrappers=[("f32", "ported::axpb<float>"), ("i32", "ported::axpb<int32_t>")],
                              extra_cuda_cflags=["-std=c++20"])
    assert concepts.compile(arch).log == ""


@pytest.mark.parametrize("header", ["mma.h", "cuda_device_runtime_api.h", "cuda_pipeline.h", "cuda/barrier"])
def test_headers_that_need_the_crt_folder_compile(header: str, tmp_path: Path) -> None:
    assert _compile(tmp_path, f"#include <{header}>\n" + TOUCH, "touch", arch="sm_80").cubin


def test_curand_kernel_compiles_where_the_extra_is_installed(tmp_path: Path) -> None:
    if headers._curand_include_dir() is None:
        pytest.skip("curand's headers are not installed (pip install 'cujit[curand]')")
    source = (
        "#include <curand_kernel.h>\n"
        "__global__ void k(float* out, unsigned long long seed) {\n"
        "  curandStatePhilox4_32_10_t state;\n"
        "  curand_init(seed, threadIdx.x, 0, &state);\n"
        "  out[threadIdx.x] = curand_uniform(&state);\n}\n"
    )
    assert _compile(tmp_path, source, "k").cubin


def test_cub_cub_cuh_names_the_block_level_headers(tmp_path: Path) -> None:
    message = _error(tmp_path, "#include <cub/cub.cuh>\n" + TOUCH, "touch")
    assert "device-wide algorithms" in message and "<cub/block/block_reduce.cuh>" in message


# ------------------------------------------------------------------------------------------- options
def test_std_from_the_flags_replaces_the_default(tmp_path: Path) -> None:
    source = "#include <concepts>\ntemplate <std::integral T> __global__ void k(T* p) { p[0] = T{1}; }\n"
    module = _module(tmp_path, source, "k<int>", flags=("-std=c++20",))
    assert [o for o in module.sources.options("sm_90") if "std" in o and o.startswith("-")] == ["-std=c++20"]
    assert module.compile("sm_90").log == ""
    default = _module(tmp_path, TOUCH, "touch", name="default")
    assert "-std=c++17" in default.sources.options("sm_90")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_arch_placeholders_follow_the_arch(arch: str, tmp_path: Path) -> None:
    number = re.search(r"\d+", arch).group(0)  # type: ignore[union-attr]
    source = (
        f"static_assert(PORTED_CC == {number} && PORTED_CC == __CUDA_ARCH__ / 10, \"cc\");\n"
        "#ifndef PORTED_ARCH_" + arch + "\n#error arch placeholder\n#endif\n" + TOUCH
    )
    module = _module(tmp_path, source, "touch", flags=("-DPORTED_CC={cc}", "-DPORTED_ARCH_{arch}"))
    assert module.compile(arch).log == ""
    assert f"-DPORTED_CC={number}" in module.sources.options(arch)
    assert module.cache_key("sm_80") != module.cache_key("sm_90")


# ------------------------------------------------------------------------------------------- errors that teach
def test_host_function_gets_the_cudacc_rtc_hint(tmp_path: Path) -> None:
    message = _error(tmp_path, (KERNELS / "hints_host_function.cuh").read_text(), "scale")
    assert "hint: NVRTC compiles device code only" in message
    assert "#ifndef __CUDACC_RTC__" in message


def test_host_variable_gets_the_same_hint(tmp_path: Path) -> None:
    message = _error(tmp_path, "int counter = 0;\n" + TOUCH, "touch")
    assert "__CUDACC_RTC__" in message


def test_missing_standard_header_names_the_stand_ins(tmp_path: Path) -> None:
    message = _error(tmp_path, "#include <complex>\n" + TOUCH, "touch")
    assert "hint: <complex> was not found" in message
    assert "<cstdint>" in message and "<type_traits>" in message and "<cuda/std/complex>" in message


def test_host_only_headers_resolve_and_guarded_or_uninstantiated_host_code_compiles(tmp_path: Path) -> None:
    includes = "".join(f"#include <{h}>\n" for h in headers.HOST_ONLY_STAND_INS)
    source = includes + (
        "#ifndef __CUDACC_RTC__\n"
        "inline std::string describe(const std::vector<int>& v) {\n"
        "  std::ostringstream out; out << v.size(); return out.str();\n}\n"
        "#endif\n"
        # NVRTC rejects every host function, template or not; a __host__ __device__ template that a module never
        # instantiates with a host container is fine.
        "template <typename Map> __host__ __device__ void fill(Map& m) { m[typename Map::key_type{}] = 1; }\n"
    ) + TOUCH
    compiled = _compile(tmp_path, source, "touch")
    assert compiled.cubin[:4] == b"\x7fELF"
    assert compiled.log == ""


@pytest.mark.parametrize(("use", "header", "instead"), [
    ("std::string s;", "<string>", "const char*"),
    ("std::vector<int> v;", "<vector>", "a pointer and a length"),
    ("std::atomic<int> a;", "<atomic>", "cuda::std::atomic"),
    ("std::cout << 1;", "<iostream>", "printf"),
    ("std::unique_ptr<int> q;", "<memory>", "raw pointers"),
    ("throw std::runtime_error(\"x\");", "<stdexcept>", "cannot throw"),
    ("std::mutex m;", "<mutex>", "atomics"),
    ("std::unordered_map<int, int> m;", "<unordered_map>", "hash table"),
])
def test_device_use_of_a_host_only_name_names_the_header_and_what_to_use(use: str, header: str, instead: str,
                                                                        tmp_path: Path) -> None:
    bare = header.strip("<>")
    source = f"#include {header}\n__global__ void k(int* p) {{ {use} p[0] = 1; }}\n"
    message = _error(tmp_path, source, "k")
    hint = next(line for line in message.splitlines() if line.startswith("hint: std::"))
    assert f"is declared by {header}, a host-only standard header" in hint
    assert instead in hint and "__CUDACC_RTC__" in hint
    assert f"cujit's <{bare}> declares nothing" in hint


def test_std_function_gets_its_own_hint(tmp_path: Path) -> None:
    source = "#include <functional>\n__global__ void k(int* p) { std::function<int()> f; p[0] = 1; }\n"
    assert "std::function is host-only" in _error(tmp_path, source, "k")


def test_missing_c_host_header_says_to_guard_it(tmp_path: Path) -> None:
    message = _error(tmp_path, "#include <unistd.h>\n" + TOUCH, "touch")
    assert "hint: <unistd.h> is a host-only standard header" in message and "__CUDACC_RTC__" in message


def test_cuda_device_runtime_api_first_gives_no_warning(tmp_path: Path) -> None:
    # nvcc includes cuda_runtime.h first; a kernel that includes this header before it must not warn either.
    source = "#include <cuda_device_runtime_api.h>\n#include <cuda_runtime.h>\n" + TOUCH
    assert _compile(tmp_path, source, "touch").log == ""


def test_missing_project_header_suggests_extra_include_paths(tmp_path: Path) -> None:
    message = _error(tmp_path, "#include <mylib/helpers.h>\n" + TOUCH, "touch")
    assert "hint: <mylib/helpers.h> was not found: pass its folder in extra_include_paths" in message


def test_removed_cub_operators_get_their_replacements(tmp_path: Path) -> None:
    source = (
        "#include <cub/block/block_reduce.cuh>\n"
        "__global__ void k(float* p) {\n"
        "  using R = cub::BlockReduce<float, 128>;\n  __shared__ typename R::TempStorage t;\n"
        "  p[0] = R(t).Reduce(p[threadIdx.x], cub::Sum());\n}\n"
    )
    message = _error(tmp_path, source, "k")
    assert "hint: cub::Sum was removed in CCCL 3" in message and "cuda::std::plus<>{}" in message


def test_driver_calls_say_what_cuda_h_is_under_nvrtc(tmp_path: Path) -> None:
    message = _error(tmp_path, "#include <cuda.h>\n__global__ void k() { cuInit(0); }\n", "k")
    assert "hint: cuInit is a CUDA driver API function" in message and "CUDA_VERSION" in message


def test_crt_and_curand_hints_name_the_package() -> None:
    assert "pip install" in headers._missing_header_hint("crt/host_defines.h")
    hint = headers._missing_header_hint("curand_kernel.h")
    assert "pip install" in hint and ("cujit[curand]" in hint or "cuda-toolkit[curand]" in hint), hint


@pytest.mark.parametrize("nvrtc_major", [12, 13])
def test_curand_headers_of_another_cuda_release_are_never_used(
        nvrtc_major: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's CUDA 13 wheels bring curand headers that NVRTC 12 cannot parse; the CUDA 12 wheel's are NVRTC 12's."""
    site = tmp_path / "site"
    cuda12 = site / "nvidia" / "cuda_runtime" / "include"
    cu13 = site / "nvidia" / "cu13" / "include"
    curand12 = site / "nvidia" / "curand" / "include"
    for folder, version in ((cuda12, 12090), (cu13, 13000)):
        folder.mkdir(parents=True)
        (folder / "cuda.h").write_text(f"#define CUDA_VERSION {version}\n")
    (cu13 / "curand_kernel.h").write_text("// CUDA 13\n")
    own = cuda12 if nvrtc_major == 12 else cu13
    monkeypatch.setattr(toolchain, "nvrtc_version", lambda: (nvrtc_major, 0))
    monkeypatch.setattr(toolchain, "cuda_include_dir", lambda: own)
    monkeypatch.setattr(sys, "path", [str(site)])
    headers._curand_include_dir.cache_clear()
    try:
        # CUDA 13: its own header folder has curand; CUDA 12: only CUDA 13's curand is installed, so none.
        assert headers._curand_include_dir() == (cu13 if nvrtc_major == 13 else None)
        assert "cu13" not in " ".join(map(str, headers.extra_include_dirs()))
        curand12.mkdir(parents=True)
        (curand12 / "curand_kernel.h").write_text("// CUDA 12\n")
        headers._curand_include_dir.cache_clear()
        assert headers._curand_include_dir() == (cu13 if nvrtc_major == 13 else curand12)
    finally:
        headers._curand_include_dir.cache_clear()


def test_unrecognised_errors_get_no_hint(tmp_path: Path) -> None:
    message = _error(tmp_path, "__global__ void k(int* p) { p[0] = undefined_name; }\n", "k")
    assert "hint:" not in message


# ------------------------------------------------------------------------------------------- cache identity
def test_cache_key_holds_the_header_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(tmp_path, TOUCH, "touch")
    key = module.cache_key("sm_90")
    monkeypatch.setattr(headers, "identity", lambda: "another CUB")
    assert cache.cache_key(module.sources, "sm_90") != key
