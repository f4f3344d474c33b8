"""Every shipped kernel and every device header compiles under NVRTC for sm_80 and sm_90, with no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

import cujit
from cujit._runtime import toolchain
from cujit._runtime.signature import Param
from cujit.tools.shipped import shipped_ops

OPS = shipped_ops()

HEADERS = sorted((toolchain.cujit_include_dir() / "cujit").glob("*.cuh"))
ARCHS = ["sm_80", "sm_90"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_shipped_ops_compile(op: cujit.Op, arch: str) -> None:
    assert op.instances(), f"{op.name} declares nothing to precompile"
    for module in op.precompile_modules():
        compiled = module.compile(arch)
        assert compiled.cubin[:4] == b"\x7fELF"
        assert compiled.arch == arch
        assert all(name.startswith("_Z") for name in compiled.lowered.values())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p.name)
def test_each_header_compiles_alone(header: Path, arch: str, tmp_path: Path) -> None:
    source = tmp_path / "alone.cuh"
    source.write_text(f"#include <cujit/{header.name}>\n__global__ void touch(int32_t* p) {{ p[0] = 1; }}\n")
    module = cujit.load_jit("alone", cuda_files=[source], cuda_wrappers=[("touch", "touch")])
    assert module.compile(arch).cubin[:4] == b"\x7fELF"


@pytest.mark.parametrize("arch", ARCHS)
def test_test_kernels_compile(arch: str) -> None:
    kernels = Path(__file__).parent / "kernels"
    module = cujit.load_jit(
        "headers_test", cuda_files=[kernels / "headers_test.cuh"],
        cuda_wrappers=[("iota", "iota_grid_stride"), ("r", "reductions"), ("c", "check_non_negative"),
                       ("d", "double_vec16<bf16_t>"), ("e", "double_vec16<fp8_e4m3_t>")])
    module.compile(arch)


def _params(tmp_path: Path, source: str, expression: str) -> tuple[Param, ...]:
    path = tmp_path / "sig.cuh"
    path.write_text("#include <cujit/types.cuh>\n" + source)
    module = cujit.load_jit("sig", cuda_files=[path], cuda_wrappers=[("k", expression)])
    params = module.compile("sm_90").params[expression]
    assert params is not None
    return params


def test_signature_of_builtin_and_pointer_parameters(tmp_path: Path) -> None:
    params = _params(tmp_path, "__global__ void k(float* a, const double* b, int32_t c, uint64_t d, bool e, "
                               "int8_t f, uint16_t g, float h, double i, fp16_t j, bf16_t k2, long long l) {}", "k")
    assert [p.kind for p in params] == ["pointer", "pointer", "int", "uint", "bool", "int", "uint", "float",
                                        "float", "float", "bf16", "int"]
    assert [p.code for p in params] == ["Q", "Q", "i", "Q", "?", "b", "H", "f", "d", "e", "H", "q"]


def test_signature_through_templates_namespaces_and_substitutions(tmp_path: Path) -> None:
    source = """
namespace outer { namespace inner {
struct Box { int a; float b; };
template <typename T, int N> struct Arr { T v[N]; };
}}
namespace {
template <typename T, int N>
__global__ void k(T* out, const T* in, outer::inner::Box box, outer::inner::Arr<T, N> arr, const outer::inner::Box* pb,
                  T scalar, outer::inner::Box box2) {}
}
"""
    params = _params(tmp_path, source, "k<fp16_t, 4>")
    assert [p.kind for p in params] == ["pointer", "pointer", "record", "record", "pointer", "float", "record"]
    assert params[2].cpp == "outer::inner::Box" and params[6].cpp == "outer::inner::Box"
    assert params[3].cpp.startswith("outer::inner::Arr<")


def test_signature_of_the_shipped_kernel() -> None:
    from cujit.add_constant import add_constant

    params = add_constant.op.module(constant=3).compile("sm_90").params["add_constant_kernel<3>"]
    assert params is not None
    assert [(p.kind, p.cpp) for p in params] == [("pointer", "int*"), ("pointer", "const int*"),
                                                 ("uint", "unsigned long long")]


def test_compile_needs_no_gpu_for_an_explicit_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    from cujit._runtime import driver
    from cujit.add_constant import add_constant

    monkeypatch.setattr(driver, "device_count", lambda: 0)
    assert add_constant.op.module(constant=5).compile("sm_90").cubin


def test_bad_arch_and_missing_files(tmp_path: Path) -> None:
    from cujit.add_constant import add_constant

    with pytest.raises(cujit.CujitError, match=r"arch: expected an arch such as sm_80 or sm_90a, got '90'"):
        add_constant.op.module(constant=3).compile("90")
    with pytest.raises(cujit.CujitError, match=r"cuda_files: nope.cuh not found"):
        cujit.load_jit("x", cuda_files=["nope.cuh"], cuda_wrappers=[("k", "k")])
    with pytest.raises(TypeError, match="cuda_files must be a list"):
        cujit.load_jit("x", cuda_files="add_constant.cuh", cuda_wrappers=[("k", "k")])  # type: ignore[arg-type]
    with pytest.raises(cujit.CujitError, match="python name 'a b' is not an identifier"):
        cujit.load_jit("x", cuda_files=["add_constant.cuh"], cuda_wrappers=[("a b", "k")])
    with pytest.raises(cujit.CujitError, match=r"extra include path .* is not a folder"):
        cujit.load_jit("x", cuda_files=["add_constant.cuh"], cuda_wrappers=[("k", "k")],
                       extra_include_paths=[tmp_path / "missing"])


def test_module_attribute_errors() -> None:
    from cujit.add_constant import add_constant

    with pytest.raises(AttributeError, match=r"has no kernel 'nope' \(its kernels: add_constant\)"):
        add_constant.op.module(constant=3).nope  # noqa: B018


def test_launch_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from cujit._runtime import driver

    monkeypatch.setattr(driver, "device_count", lambda: 0)
    module = cujit.load_jit("x", cuda_files=["add_constant.cuh"], cuda_wrappers=[("k", "add_constant_kernel<1>")])
    with pytest.raises(cujit.LaunchError, match="no CUDA device is available"):
        cujit.LaunchKernel(1, 1)(module.k, 0, 0, 0)


def test_load_jit_argument_errors() -> None:
    with pytest.raises(TypeError, match="load_jit: name must be a non-empty str, got ''"):
        cujit.load_jit("", cuda_files=["add_constant.cuh"], cuda_wrappers=[("k", "k")])
    with pytest.raises(TypeError, match=r"each cuda_wrappers entry must be \(python_name, C\+\+ expression\)"):
        cujit.load_jit("x", cuda_files=["add_constant.cuh"], cuda_wrappers=["k"])  # type: ignore[list-item]
    with pytest.raises(cujit.CujitError, match="python name 'k' appears twice in cuda_wrappers"):
        cujit.load_jit("x", cuda_files=["add_constant.cuh"], cuda_wrappers=[("k", "a"), ("k", "b")])
    with pytest.raises(cujit.CujitError, match="cuda_wrappers is empty"):
        cujit.load_jit("x", cuda_files=["add_constant.cuh"], cuda_wrappers=[])
    with pytest.raises(cujit.CujitError, match="cuda_files is empty"):
        cujit.load_jit("x", cuda_files=[], cuda_wrappers=[("k", "k")])


def test_runtime_check_message_has_parts_and_caller_line() -> None:
    cujit.runtime_check(True, "never shown")
    pattern = r"^expected a non-empty tensor, got n = 0 \(at test_compile_all\.py:\d+\)$"
    with pytest.raises(cujit.CujitError, match=pattern):
        cujit.runtime_check(0 > 0, "expected a non-empty tensor, got n = ", 0)


def test_device_index_errors() -> None:
    from cujit._runtime.launch import device_index

    assert device_index(3) == 3 and device_index("cuda:2") == 2
    with pytest.raises(ValueError, match=r"device: expected a CUDA device .* got 'cpu'"):
        device_index("cpu")


def test_unsigned_reductions_compile_before_sm80() -> None:
    """Before sm_80 an unsigned warp max or min is a shuffle tree instead of redux.sync (cujit/reduce.cuh): the
    router's rounds and the FP8 group scales compile that way too."""
    from cujit.per_token_group_quant_fp8 import per_token_group_quant_fp8
    from cujit.topk_softmax import topk_softmax

    for fn in (topk_softmax, per_token_group_quant_fp8):
        for module in fn.op.precompile_modules():
            assert module.compile("sm_75").cubin[:4] == b"\x7fELF"
