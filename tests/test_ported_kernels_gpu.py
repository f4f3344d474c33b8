"""The public-style kernels of tests/kernels/ported_*.cuh on a GPU, launched as written, against torch."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import pytest

import cujit

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
KERNELS = Path(__file__).parent / "kernels"
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
CPP = {"f16": "__half", "bf16": "__nv_bfloat16", "f32": "float"}
TOLERANCE = {"f16": {"atol": 2e-2, "rtol": 1e-2}, "bf16": {"atol": 8e-2, "rtol": 2e-2},
             "f32": {"atol": 1e-4, "rtol": 1e-4}}


class NormParams(ctypes.Structure):
    """ported::NormParams, passed by value."""

    _fields_ = (("eps", ctypes.c_float), ("hidden", ctypes.c_int32))


@functools.cache
def _norm() -> cujit.JitModule:
    wrappers = [(f"norm_{n}", f"ported::fused_add_rms_norm<{c}, 256>") for n, c in CPP.items()]
    wrappers += [(f"silu_{n}", f"ported::act_and_mul<{c}, ported::silu>") for n, c in CPP.items()]
    wrappers += [(f"gelu_{n}", f"ported::act_and_mul<{c}, &ported::gelu_tanh>") for n, c in CPP.items()]
    wrappers += [(f"abs_max_{n}", f"ported::row_abs_max<{c}, 256>") for n, c in CPP.items()]
    return cujit.load_jit("ported_norm", cuda_files=[KERNELS / "ported_norm.cuh"], cuda_wrappers=wrappers)


@pytest.mark.parametrize("hidden", [64, 1000, 4096])
@pytest.mark.parametrize("tokens", [1, 7, 33])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fused_add_rms_norm(dtype: str, tokens: int, hidden: int) -> None:
    torch.manual_seed(tokens * hidden)
    t = DTYPES[dtype]
    x = torch.randn(tokens, hidden, dtype=t, device="cuda")
    residual = torch.randn(tokens, hidden, dtype=t, device="cuda")
    weight = torch.randn(hidden, dtype=t, device="cuda")
    eps = 1e-6
    summed = (x.float() + residual.float()).to(t)
    expected = (summed.float() * torch.rsqrt(summed.float().pow(2).mean(-1, keepdim=True) + eps) * weight.float())
    out = torch.empty_like(x)
    path = torch.zeros(1, dtype=torch.int32, device="cuda")
    kernel = getattr(_norm(), f"norm_{dtype}")
    cujit.LaunchKernel(tokens, 256)(kernel, out, residual, x, weight, NormParams(eps, hidden), path)
    torch.testing.assert_close(residual, summed, **TOLERANCE[dtype])
    torch.testing.assert_close(out, expected.to(t), **TOLERANCE[dtype])
    # CUDA_VERSION is defined, so the half types take the vectorized overload, as they do under nvcc.
    assert path.item() == (1 if dtype == "f32" else 2)


@pytest.mark.parametrize("d", [1, 1000, 4099])
@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_act_and_mul_with_a_function_pointer_argument(dtype: str, act: str, d: int) -> None:
    t = DTYPES[dtype]
    x = torch.randn(19, 2 * d, dtype=t, device="cuda")
    a, b = x[:, :d].float(), x[:, d:].float()
    reference = torch.nn.functional.silu(a) if act == "silu" else torch.nn.functional.gelu(a, approximate="tanh")
    out = torch.empty(19, d, dtype=t, device="cuda")
    cujit.LaunchKernel(19, 256)(getattr(_norm(), f"{act}_{dtype}"), out, x, d)
    torch.testing.assert_close(out, (reference * b).to(t), **TOLERANCE[dtype])


@pytest.mark.parametrize("cols", [1, 255, 1003])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_row_abs_max(dtype: str, cols: int) -> None:
    x = torch.randn(11, cols, device="cuda").to(DTYPES[dtype])
    out = torch.empty(11, device="cuda")
    cujit.LaunchKernel(11, 256)(getattr(_norm(), f"abs_max_{dtype}"), out, x, cols)
    torch.testing.assert_close(out, x.float().abs().amax(-1), atol=0, rtol=0)


@pytest.mark.parametrize(("m", "n", "k"), [(16, 16, 16), (64, 48, 96), (32, 128, 256)])
def test_wmma_gemm(m: int, n: int, k: int) -> None:
    module = cujit.load_jit("ported_wmma", cuda_files=[KERNELS / "ported_wmma.cuh"],
                            cuda_wrappers=[("gemm", "ported::wmma_gemm")])
    a = torch.randn(m, k, device="cuda").half()
    b = torch.randn(k, n, device="cuda").half()
    c = torch.empty(m, n, device="cuda")
    b_column_major = b.t().contiguous()  # [n, k]: column j of b is row j here
    cujit.LaunchKernel((n // 16, m // 16), 32)(module.gemm, c, a, b_column_major, m, n, k)
    torch.testing.assert_close(c, a.float() @ b.float(), atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("n", [1, 1003])
def test_cpp20_concepts(n: int) -> None:
    module = cujit.load_jit("ported_concepts", cuda_files=[KERNELS / "ported_concepts.cuh"],
                            cuda_wrappers=[("f32", "ported::axpb<float>"), ("i32", "ported::axpb<int32_t>")],
                            extra_cuda_cflags=["-std=c++20"])
    blocks = (n + 255) // 256
    x = torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    cujit.LaunchKernel(blocks, 256)(module.f32, out, x, 2.5, -1.0, n)
    torch.testing.assert_close(out, 2.5 * x - 1.0)
    xi = torch.arange(n, dtype=torch.int32, device="cuda")
    outi = torch.empty_like(xi)
    cujit.LaunchKernel(blocks, 256)(module.i32, outi, xi, 3, 7, n)
    assert torch.equal(outi, 3 * xi + 7)
