"""FlashInfer's and SGLang's published kernel headers, compiled with cujit's NVRTC path as they are, and run.

The headers come from the packages that FlashInfer and SGLang publish on PyPI, never from this repository:
flashinfer-python's ``flashinfer/data/include/flashinfer`` (``norm.cuh``, ``activation.cuh`` and what they
include) and sglang's ``sglang/kernels/jit`` (``csrc/elementwise/activation.cuh`` and ``include/sgl_kernel``).
They are found in the folder that ``PUBLIC_KERNELS_DIR`` names (written by
``.ci/gpu/fetch_public_kernels.sh DIR``, which CI runs, for a machine without the wheels), else in the installed
packages; without either the tests skip and say so. The edits below are written for the versions pinned in
``PACKAGES`` (and in the fetch script); an installed package of another version is skipped, a folder of another
version fails.

Two wrappers of this repository's own, ``tests/kernels/public_flashinfer.cuh`` and ``public_sglang.cuh``, include
the public headers and name their kernels: FlashInfer's ``RMSNormKernel``, ``FusedAddRMSNormKernel`` and
``act_and_mul_kernel`` (SiLU, GELU, GELU-tanh), SGLang's ``act_and_mul_kernel`` (the same three). They compile for
sm_80 and sm_90 without a GPU; the GPU tests launch them with ``cujit.LaunchKernel`` on torch tensors, in the
geometry of the packages' own launchers, and compare with a float64 torch reference.

What NVRTC needs beyond what nvcc is given:

* ``-default-device``. NVRTC rejects every function without ``__device__``/``__host__``/``__global__``, even a
  declaration and a template never instantiated ("host functions are not allowed in JIT mode"). With the flag,
  such functions are device functions: the launcher templates (FlashInfer's ``RMSNorm<T>(...)``, never
  instantiated here) then compile as they are, and so do the constexpr helpers that device code calls (SGLang's
  ``host::is_pow2`` in a ``static_assert``, which SGLang's nvcc flags allow with ``--expt-relaxed-constexpr``).
  Non-template host functions whose bodies need the host runtime or library (``std::string``, ``thread_local``,
  ``cudaGetDevice``) still fail: those are guarded.
* SGLang: ``-std=c++20`` and ``-DSGL_CUDA_ARCH=<cc>0``, which SGLang's own ``load_jit`` passes.
* Stand-ins from ``cujit/include_nvrtc``: ``<cinttypes>``, ``<cublas_v2.h>`` and ``<cublasLt.h>`` (FlashInfer's
  ``trtllm/common/cudaUtils.h``), ``<version>`` and ``<ranges>`` (SGLang's ``sgl_kernel/utils.h``), besides the
  host-only ones (``<atomic>``, ``<sstream>``, ``<string>``, ``<vector>``, ...). ``<curand_kernel.h>`` (included,
  not used, by FlashInfer's ``reduceKernelUtils.cuh``) must be installed: torch's CUDA wheels or ``cujit[curand]``.
* SGLang's ``<dlpack/dlpack.h>``: the copy that CuPy (a dependency of cujit) ships, put on the include path as
  ``dlpack/dlpack.h``; apache-tvm-ffi's headers are not needed once the binding headers are guarded.
* The edits, made in memory on a copy in a temporary folder. Each one wraps a region in ``#ifndef
  __CUDACC_RTC__`` ... ``#endif`` and changes nothing else; ``test_each_edit_and_the_flag_is_needed`` removes each
  in turn (and the flag) and checks that the compile then fails where the edit said.

  FlashInfer (flashinfer-python 0.7.4):

  - F1 ``exception.h``: ``write_to_stream``, the ``FLASHINFER_CHECK``/``FLASHINFER_WARN`` macros and the classes
    ``Error`` and ``Warning``: host error reporting over ``std::ostringstream`` and ``std::string``.
  - F2 ``utils.cuh``: ``GetCudaComputeCapability`` to ``FA2DetermineCtaTileQ``: host device queries
    (``cudaGetDevice``, ``cudaGetDeviceProperties``), a ``static std::atomic`` and ``std::vector``.
  - F3 ``trtllm/common/cudaUtils.h``: ``isCudaLaunchBlocking`` to ``syncAndCheck``: ``thread_local``,
    ``std::getenv``, stream capture queries.
  - F4 ``trtllm/common/cudaUtils.h``: ``getSMVersion`` and ``getMultiProcessorCount``: host device queries.

  SGLang (sglang 0.5.23):

  - S1 ``sgl_kernel/utils.h``: namespace ``host`` from ``DebugInfo`` on (``PanicError : std::runtime_error``,
    ``RuntimeCheck``, ``Panic``, ``irange``): host error reporting. ``dependent_false_v``, which device code uses,
    stays.
  - S2 ``sgl_kernel/utils.cuh``: ``#include <tvm/ffi/extra/c_env_api.h>``, a binding header (TVM FFI's C API).
  - S3 ``sgl_kernel/utils.cuh``: namespace ``host`` (``RuntimeDeviceCheck``, ``LaunchKernel`` over
    ``cudaLaunchKernelEx`` and TVM FFI's stream lookup): the host launch machinery.
  - S4 ``csrc/elementwise/activation.cuh``: ``#include <sgl_kernel/tensor.h>``, a binding header (``TensorMatcher``
    over ``tvm::ffi::TensorView``).
  - S5 ``csrc/elementwise/activation.cuh``: ``#include <sgl_kernel/runtime.cuh>``, host runtime queries over TVM
    FFI tensors.
  - S6 ``csrc/elementwise/activation.cuh``: ``#include <tvm/ffi/container/tensor.h>``, a binding header.
  - S7 ``csrc/elementwise/activation.cuh``: ``struct ActivationKernel``, the host launcher (``std::string``
    activation names, ``TensorMatcher`` checks, ``LaunchKernel``).

SGLang's kernel requires the width to be a multiple of its vector (8 halves, 16 bytes): the GPU test uses 4096 and
1368. FlashInfer's kernels take any width: 4096 and 4095.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cujit
from cujit._runtime import headers, toolchain

# Not CUJIT_: cujit warns about every CUJIT_ variable it does not read, and this one is the tests' alone.
ENV = "PUBLIC_KERNELS_DIR"
ARCHS = ["sm_80", "sm_90"]
KERNELS = Path(__file__).parent / "kernels"
FETCH = ".ci/gpu/fetch_public_kernels.sh"


@dataclass(frozen=True)
class Edit:
    """Wrap the lines from the one matching ``start`` up to (not including) the next matching ``end`` in
    ``#ifndef __CUDACC_RTC__``; both are regular expressions matched at the start of a line. Without the edit, the
    compile fails with an error located in ``fails_in``."""

    name: str
    file: str
    start: str
    end: str
    fails_in: str


@dataclass(frozen=True)
class Package:
    """A published package: where its headers are, which of its files to copy, and what NVRTC needs."""

    dist: str
    version: str
    module: str
    files: tuple[str, ...]  # globs relative to the package's parent folder; .ci/gpu/fetch_public_kernels.sh agrees
    include: tuple[str, ...]  # include folders, relative to the copy
    flags: tuple[str, ...]
    edits: tuple[Edit, ...]
    default_device_fails_in: str  # where the compile fails without -default-device


FI = "flashinfer/data/include/flashinfer/"
SG = "sglang/kernels/jit/"
FLASHINFER = Package(
    dist="flashinfer-python", version="0.7.4", module="flashinfer",
    files=(f"{FI}*.cuh", f"{FI}*.h", f"{FI}trtllm/common/*"),
    include=("flashinfer/data/include",),
    flags=("-default-device",),
    edits=(
        Edit("F1", f"{FI}exception.h", r"// Base case for empty arguments", r"#endif  // FLASHINFER_EXCEPTION_H_",
             "exception.h"),
        Edit("F2", f"{FI}utils.cuh", r"inline std::pair<int, int> GetCudaComputeCapability\(",
             r"inline int UpPowerOfTwo\(", "utils.cuh"),
        Edit("F3", f"{FI}trtllm/common/cudaUtils.h", r"inline std::optional<bool> isCudaLaunchBlocking\(",
             r"template <typename T1, typename T2>\ninline size_t divUp\(", "cudaUtils.h"),
        Edit("F4", f"{FI}trtllm/common/cudaUtils.h", r"inline int getSMVersion\(",
             r"\}  // namespace tensorrt_llm::common", "cudaUtils.h"),
    ),
    default_device_fails_in="norm.cuh",
)
SGLANG = Package(
    dist="sglang", version="0.5.23", module="sglang",
    files=(f"{SG}include/sgl_kernel/*", f"{SG}csrc/elementwise/activation.cuh"),
    include=(f"{SG}include", SG, "dlpack_include"),
    flags=("-default-device", "-std=c++20", "-DSGL_CUDA_ARCH={cc}0"),
    edits=(
        Edit("S1", f"{SG}include/sgl_kernel/utils.h", r"/// \\brief Source-location wrapper",
             r"\}  // namespace host", "utils.h"),
        Edit("S2", f"{SG}include/sgl_kernel/utils.cuh", r"#include <tvm/ffi/extra/c_env_api\.h>",
             r"\n#include <concepts>", "utils.cuh"),
        Edit("S3", f"{SG}include/sgl_kernel/utils.cuh", r"namespace host \{\n\nnamespace runtime \{",
             r"\}  // namespace sglang", "utils.cuh"),
        Edit("S4", f"{SG}csrc/elementwise/activation.cuh", r"#include <sgl_kernel/tensor\.h>",
             r"#include <sgl_kernel/utils\.h>", "tensor.h"),
        Edit("S5", f"{SG}csrc/elementwise/activation.cuh", r"#include <sgl_kernel/runtime\.cuh>",
             r"#include <sgl_kernel/type\.cuh>", "runtime.cuh"),
        Edit("S6", f"{SG}csrc/elementwise/activation.cuh", r"#include <tvm/ffi/container/tensor\.h>",
             r"\n#include <cmath>", "activation.cuh"),
        Edit("S7", f"{SG}csrc/elementwise/activation.cuh",
             r"template <typename T, bool kUsePDL>\nstruct ActivationKernel", r"\}  // namespace sglang",
             "activation.cuh"),
    ),
    default_device_fails_in="bits.h",
)
PACKAGES = {"flashinfer": FLASHINFER, "sglang": SGLANG}

HALVES = {"f16": "__half", "bf16": "__nv_bfloat16"}
FI_VECS = (8, 1)  # the vector widths FlashInfer's launchers pick for 4096 and 4095 halves: gcd(8, d)
FI_ACTS = ("silu", "gelu", "gelu_tanh")
SG_ACTS = {"silu": "kSiLU", "gelu": "kGELU", "gelu_tanh": "kGELUTanh"}


class ActivationParams(ctypes.Structure):
    """SGLang's ``sglang::ActivationParams``, passed by value; public_sglang.cuh checks it against the struct."""

    _fields_ = (
        ("input", ctypes.c_void_p), ("out", ctypes.c_void_p), ("hidden_dim", ctypes.c_uint32),
        ("num_tokens", ctypes.c_uint32), ("expert_ids", ctypes.c_void_p), ("expert_step", ctypes.c_uint32),
        ("clamp_limit", ctypes.c_float), ("sorted_token_ids", ctypes.c_void_p),
        ("num_tokens_post_padded", ctypes.c_void_p), ("num_valid_tokens", ctypes.c_uint32),
    )


def _layout_flags() -> tuple[str, ...]:
    fields = [f"-DPUBLIC_SIZE_{name}={ctypes.sizeof(kind)}" for name, kind in ActivationParams._fields_]
    return (*fields, f"-DPUBLIC_PARAMS_SIZE={ctypes.sizeof(ActivationParams)}")


def _wrappers(package: Package) -> list[tuple[str, str]]:
    if package is FLASHINFER:
        out = []
        for dt, cpp in HALVES.items():
            for vec in FI_VECS:
                out.append((f"rms_norm_{dt}_{vec}", f"flashinfer::norm::RMSNormKernel<{vec}, {cpp}>"))
                out.append((f"fused_add_rms_norm_{dt}_{vec}", f"flashinfer::norm::FusedAddRMSNormKernel<{vec}, {cpp}>"))
                out += [(f"{act}_and_mul_{dt}_{vec}",
                         f"flashinfer::activation::act_and_mul_kernel<{cpp}, &public_kernels::{act}, {vec}>")
                        for act in FI_ACTS]
        return out
    return [(f"{act}_and_mul_{dt}", f"sglang::act_and_mul_kernel<{cpp}, sglang::ActivationKind::{kind}, false, false>")
            for dt, cpp in HALVES.items() for act, kind in SG_ACTS.items()]


# ------------------------------------------------------------------------------------------------- the headers
def _pins(folder: Path) -> dict[str, str]:
    listing = folder / "versions.txt"
    if not listing.is_file():
        pytest.fail(f"{ENV}={folder} has no versions.txt: write the folder with {FETCH} {folder}")
    pins = {}
    for line in listing.read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name:
            pins[name] = version
    return pins


def _package_root(package: Package) -> Path:
    """The folder that holds the package's folder: PUBLIC_KERNELS_DIR, else the installed package's parent."""
    folder = os.environ.get(ENV)
    if folder:
        root = Path(folder)
        found = _pins(root).get(package.dist)
        if found != package.version:
            pytest.fail(f"{ENV}={root} holds {package.dist} {found or '(none)'}; the edits here are written for "
                        f"{package.version}: write the folder again with {FETCH}")
        return root
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package.dist} is not installed and {ENV} is not set: run {FETCH} DIR, then set {ENV}=DIR")
    installed = importlib.metadata.version(package.dist)
    if installed != package.version:
        pytest.skip(f"{package.dist} {installed} is installed; the edits here are written for {package.version} "
                    f"(run {FETCH} DIR, then set {ENV}=DIR)")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _guard(text: str, edit: Edit, package: Package) -> str:
    pattern = re.compile(rf"^(?:{edit.start}).*?(?=^(?:{edit.end}))", re.MULTILINE | re.DOTALL)
    found = list(pattern.finditer(text))
    if len(found) != 1:
        pytest.fail(f"edit {edit.name}: its region is found {len(found)} times in {edit.file}, expected once "
                    f"({package.dist} {package.version})")
    start, end = found[0].span()
    return (f"{text[:start]}#ifndef __CUDACC_RTC__  // {edit.name}: host code, guarded for NVRTC by the test\n"
            f"{text[start:end]}#endif  // __CUDACC_RTC__ ({edit.name})\n{text[end:]}")


def _dlpack_header() -> Path:
    spec = importlib.util.find_spec("cupy")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "_core/include/cupy/_dlpack/dlpack.h"
        if path.is_file():
            return path
    pytest.skip("CuPy's dlpack.h (cupy/_core/include/cupy/_dlpack/dlpack.h) is not installed")


def _copy(package: Package, dest: Path, without: str | None = None) -> tuple[Path, ...]:
    """Copy the package's files into ``dest`` with every edit but ``without``; return the include folders."""
    root = _package_root(package)
    copied = 0
    for pattern in package.files:
        for path in root.glob(pattern):
            if path.is_file():
                target = dest / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                copied += 1
    if not copied:
        pytest.fail(f"no file of {package.dist} matches {package.files} under {root}")
    for edit in package.edits:
        if edit.name != without:
            path = dest / edit.file
            path.write_text(_guard(path.read_text(), edit, package))
    if package is SGLANG:
        (dest / "dlpack_include/dlpack").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_dlpack_header(), dest / "dlpack_include/dlpack/dlpack.h")
    return tuple(dest / folder for folder in package.include)


def _has_curand() -> bool:
    return (toolchain.cuda_include_dir() / "curand_kernel.h").is_file() or headers._curand_include_dir() is not None


def _load(package: Package, dest: Path, without: str | None = None) -> cujit.JitModule:
    """The wrapper's module over a copy of the package's headers with every edit but ``without`` (an edit's name,
    or a flag such as ``-default-device``, which is then left out)."""
    if package is FLASHINFER and not _has_curand():
        pytest.skip("FlashInfer's trtllm/common/reduceKernelUtils.cuh includes <curand_kernel.h>, which is not "
                    "installed (pip install 'cujit[curand]')")
    include = _copy(package, dest, without)
    wrapper = KERNELS / ("public_flashinfer.cuh" if package is FLASHINFER else "public_sglang.cuh")
    flags = [f for f in package.flags if f != without]
    if package is SGLANG:
        flags += _layout_flags()
    return cujit.load_jit(f"public_{package.module}", cuda_files=[wrapper], cuda_wrappers=_wrappers(package),
                          extra_cuda_cflags=flags, extra_include_paths=include)


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], cujit.JitModule]:
    """The two modules, built once per test module (each JitModule keeps its compiled code per arch)."""
    made: dict[str, cujit.JitModule] = {}

    def get(name: str) -> cujit.JitModule:
        if name not in made:
            made[name] = _load(PACKAGES[name], tmp_path_factory.mktemp(f"public_{name}"))
        return made[name]

    return get


# ------------------------------------------------------------------------------------------------- stand-ins
@pytest.mark.parametrize("header", ["cinttypes", "inttypes.h", "version", "ranges", "cublas_v2.h", "cublasLt.h"])
def test_stand_ins_the_public_headers_need_compile_alone_without_warnings(header: str, tmp_path: Path) -> None:
    source = tmp_path / "alone.cuh"
    source.write_text(f"#include <{header}>\n__global__ void touch(int* p) {{ p[0] = 1; }}\n")
    compiled = cujit.load_jit("alone", cuda_files=[source], cuda_wrappers=[("touch", "touch")]).compile("sm_90")
    assert compiled.log == ""


def test_cinttypes_macros_fit_the_types_and_version_claims_no_library_feature(tmp_path: Path) -> None:
    source = tmp_path / "formats.cuh"
    source.write_text(
        "#include <cinttypes>\n#include <cstdio>\n#include <version>\n"
        "#ifdef __cpp_lib_source_location\n#error <version> claims std::source_location\n#endif\n"
        "static_assert(sizeof(PRId64) == 4 && sizeof(PRIu32) == 2, \"int64_t is long long under NVRTC\");\n"
        "__global__ void show(int64_t a, uint32_t b) { printf(\"%\" PRId64 \" %\" PRIu32 \"\\n\", a, b); }\n"
    )
    module = cujit.load_jit("formats", cuda_files=[source], cuda_wrappers=[("show", "show")])
    assert module.compile("sm_80").log == ""


# ------------------------------------------------------------------------------------------------- compile
def test_activation_params_mirror_is_laid_out_as_the_struct_in_the_public_header() -> None:
    # The compile checks the field order and sizes against SGLang's struct (public_sglang.cuh); the offsets that
    # natural alignment gives them are pinned here.
    offsets = [getattr(ActivationParams, name).offset for name, _ in ActivationParams._fields_]
    assert offsets == [0, 8, 16, 20, 24, 32, 36, 40, 48, 56]
    assert ctypes.sizeof(ActivationParams) == 64


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(PACKAGES))
def test_public_kernels_compile(name: str, arch: str, modules: Callable[[str], cujit.JitModule]) -> None:
    compiled = modules(name).compile(arch)
    assert compiled.cubin[:4] == b"\x7fELF"
    assert compiled.log == ""
    if name == "flashinfer":
        norm = compiled.params["flashinfer::norm::RMSNormKernel<8, __half>"] or ()
        assert [p.cpp for p in norm] == ["__half*", "__half*", "__half*", "unsigned int", "unsigned int",
                                         "unsigned int", "float", "float"]
        act = compiled.params["flashinfer::activation::act_and_mul_kernel<__nv_bfloat16, &public_kernels::silu, 1>"]
        assert [p.cpp for p in act or ()] == ["__nv_bfloat16*", "const __nv_bfloat16*", "int"]
    else:
        act = compiled.params["sglang::act_and_mul_kernel<__half, sglang::ActivationKind::kSiLU, false, false>"]
        assert [(p.kind, p.cpp) for p in act or ()] == [("record", "sglang::ActivationParams")]


def _needs() -> list[tuple[str, str]]:
    return [(name, edit.name) for name, package in PACKAGES.items() for edit in package.edits] + [
        (name, "-default-device") for name in PACKAGES]


@pytest.mark.parametrize(("name", "need"), _needs())
def test_each_edit_and_the_flag_is_needed(name: str, need: str, tmp_path: Path) -> None:
    package = PACKAGES[name]
    module = _load(package, tmp_path, without=need)
    edit = next((e for e in package.edits if e.name == need), None)
    fails_in = package.default_device_fails_in if edit is None else edit.fails_in
    with pytest.raises(cujit.CompileError) as info:
        module.compile("sm_90")
    errors = [line for line in str(info.value).splitlines() if re.search(r"\(\d+\): (catastrophic )?error", line)]
    assert errors, str(info.value)
    assert any(re.search(rf"[/\\]{re.escape(fails_in)}\(\d+\)", line) for line in errors), errors


# ------------------------------------------------------------------------------------------------- GPU
def _torch() -> Any:
    return pytest.importorskip("torch")


@functools.cache
def _dtypes() -> dict[str, Any]:
    torch = _torch()
    return {"f16": torch.float16, "bf16": torch.bfloat16}


# Outputs are rounded to the half type once from an fp32 result: one ulp of it, and a little more near zero.
TOLERANCE = {"f16": {"atol": 2e-3, "rtol": 2e-3}, "bf16": {"atol": 1.6e-2, "rtol": 1.6e-2}}


def _norm_geometry(d: int, fused: bool) -> tuple[int, tuple[int, int], int]:
    """(vector width, block, shared bytes) as FlashInfer's RMSNorm and FusedAddRMSNorm launchers choose them."""
    vec = math.gcd(8, d)  # 16 bytes of halves, or the largest power of two that divides d
    warps = -(-min(1024, d // vec) // 32)
    shared = (-(-warps // 4) * 4 + d) * 4 if fused else warps * 4
    return vec, (32, warps), shared


def _rms_norm_reference(x: Any, weight: Any, eps: float, bias: float) -> Any:
    x64 = x.double()
    return x64 * (x64.pow(2).mean(-1, keepdim=True) + eps).rsqrt() * (bias + weight.double())


def _activation(name: str, x: Any) -> Any:
    torch = _torch()
    if name == "silu":
        return torch.nn.functional.silu(x)
    return torch.nn.functional.gelu(x, approximate="tanh" if name == "gelu_tanh" else "none")


@pytest.mark.gpu
@pytest.mark.parametrize("bias", [0.0, 1.0])  # 1.0 is FlashInfer's Gemma RMSNorm: the same kernel
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("d", [4096, 4095])
@pytest.mark.parametrize("dtype", list(HALVES))
def test_flashinfer_rms_norm(dtype: str, d: int, strided: bool, bias: float,
                             modules: Callable[[str], cujit.JitModule]) -> None:
    torch = _torch()
    torch.manual_seed(d)
    t, tokens, eps = _dtypes()[dtype], 33, 1e-6
    # Strided rows: each row starts 64 elements after the last one ended (16-byte aligned, as the vector loads need).
    x = torch.randn(tokens, d + 64 if strided else d, dtype=t, device="cuda")[:, :d]
    weight = torch.randn(d, dtype=t, device="cuda")
    out = torch.full((tokens, d), float("nan"), dtype=t, device="cuda")
    vec, block, shared = _norm_geometry(d, fused=False)
    kernel = getattr(modules("flashinfer"), f"rms_norm_{dtype}_{vec}")
    cujit.LaunchKernel(tokens, block, shared_mem=shared)(kernel, x, weight, out, d, x.stride(0), out.stride(0), bias,
                                                          eps)
    torch.testing.assert_close(out.double(), _rms_norm_reference(x, weight, eps, bias), **TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("d", [4096, 4095])
@pytest.mark.parametrize("dtype", list(HALVES))
def test_flashinfer_fused_add_rms_norm(dtype: str, d: int, modules: Callable[[str], cujit.JitModule]) -> None:
    torch = _torch()
    torch.manual_seed(d + 1)
    t, tokens, eps = _dtypes()[dtype], 19, 1e-6
    x = torch.randn(tokens, d, dtype=t, device="cuda")
    residual = torch.randn(tokens, d, dtype=t, device="cuda")
    weight = torch.randn(d, dtype=t, device="cuda")
    summed = x.double() + residual.double()  # the kernel normalizes the fp32 sum, not the residual it rounds
    expected = _rms_norm_reference(summed, weight, eps, 0.0)
    vec, block, shared = _norm_geometry(d, fused=True)
    kernel = getattr(modules("flashinfer"), f"fused_add_rms_norm_{dtype}_{vec}")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # the launch follows the current torch stream
        cujit.LaunchKernel(tokens, block, shared_mem=shared)(kernel, x, residual, weight, d, x.stride(0),
                                                              residual.stride(0), 0.0, eps)
    stream.synchronize()
    torch.testing.assert_close(residual.double(), summed, **TOLERANCE[dtype])
    torch.testing.assert_close(x.double(), expected, **TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("act", FI_ACTS)
@pytest.mark.parametrize("d", [4096, 4095])
@pytest.mark.parametrize("dtype", list(HALVES))
def test_flashinfer_act_and_mul(dtype: str, d: int, act: str, modules: Callable[[str], cujit.JitModule]) -> None:
    torch = _torch()
    torch.manual_seed(d + 2)
    t, tokens = _dtypes()[dtype], 7
    x = torch.randn(tokens, 2 * d, dtype=t, device="cuda") * 3
    out = torch.full((tokens, d), float("nan"), dtype=t, device="cuda")
    vec = math.gcd(8, d)
    kernel = getattr(modules("flashinfer"), f"{act}_and_mul_{dtype}_{vec}")
    cujit.LaunchKernel(tokens, 256)(kernel, out, x, d)  # __launch_bounds__(256); the kernel strides over the row
    expected = _activation(act, x[:, :d].double()) * x[:, d:].double()
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("act", list(SG_ACTS))
@pytest.mark.parametrize("d", [4096, 1368])
@pytest.mark.parametrize("dtype", list(HALVES))
def test_sglang_act_and_mul(dtype: str, d: int, act: str, modules: Callable[[str], cujit.JitModule]) -> None:
    torch = _torch()
    torch.manual_seed(d + 3)
    t, tokens, vec = _dtypes()[dtype], 33, 8  # 16 bytes of halves: SGLang's kMaxVecBytes below Blackwell
    x = torch.randn(tokens, 2 * d, dtype=t, device="cuda") * 3
    out = torch.full((tokens, d), float("nan"), dtype=t, device="cuda")
    params = ActivationParams(input=x.data_ptr(), out=out.data_ptr(), hidden_dim=d, num_tokens=tokens,
                              expert_ids=None, expert_step=1, clamp_limit=0.0, sorted_token_ids=None,
                              num_tokens_post_padded=None, num_valid_tokens=0)
    blocks = -(-tokens * (d // vec) // 256)  # SGLang's launcher: one vector per thread, 256 threads a block
    cujit.LaunchKernel(blocks, 256)(getattr(modules("sglang"), f"{act}_and_mul_{dtype}"), bytes(params))
    torch.cuda.synchronize()
    expected = _activation(act, x[:, :d].double()) * x[:, d:].double()
    torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])
