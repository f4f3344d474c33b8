"""Each device header in cujit/include/cujit, exercised on the GPU against a torch reference."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import cujit
from tests.conftest import trapped_launch

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
KERNELS = str(Path(__file__).parent / "kernels" / "headers_test.cuh")


@functools.cache
def _module() -> cujit.JitModule:
    return cujit.load_jit(
        "headers_test",
        cuda_files=[KERNELS],
        cuda_wrappers=[
            ("iota", "iota_grid_stride"), ("ints", "integer_helpers"), ("reductions", "reductions"),
            ("check", "check_non_negative"),
            ("double_f32", "double_vec16<fp32_t>"), ("double_f16", "double_vec16<fp16_t>"),
            ("double_bf16", "double_vec16<bf16_t>"), ("double_e4m3", "double_vec16<fp8_e4m3_t>"),
        ],
    )


@pytest.mark.parametrize("n", [1, 1000, 1 << 20])
def test_grid_stride_visits_every_index_once(n: int) -> None:
    out = torch.full((n,), -1, dtype=torch.int64, device="cuda")
    cujit.LaunchKernel(7, 128)(_module().iota, out, n)  # a small grid: each thread loops
    torch.testing.assert_close(out, torch.arange(n, device="cuda"))


def test_integer_helpers() -> None:
    out = torch.zeros(4, dtype=torch.int64, device="cuda")
    cujit.LaunchKernel(1, 1)(_module().ints, out, 3, 10, 17, 5, 8)
    assert out[:3].tolist() == [sum(range(3, 10)), 4, 0]
    cujit.LaunchKernel(1, 1)(_module().ints, out, 5, 5, 15, 5, 16)
    assert out[:3].tolist() == [0, 3, 1]


@pytest.mark.parametrize(("name", "dtype"), [("double_f32", torch.float32), ("double_f16", torch.float16),
                                             ("double_bf16", torch.bfloat16)])
def test_vec16_load_store_and_conversions(name: str, dtype: torch.dtype) -> None:
    n = 4096
    x = torch.randn(n, device="cuda").to(dtype)
    y = torch.empty_like(x)
    width = 16 // x.element_size()
    cujit.LaunchKernel(n // width // 128, 128)(getattr(_module(), name), y, x, n)
    torch.testing.assert_close(y, (x.float() * 2).to(dtype))


def test_fp8_alias() -> None:
    x = (torch.rand(4096, device="cuda") * 8).to(torch.float8_e4m3fn)
    y = torch.empty_like(x)
    cujit.LaunchKernel(4096 // 16 // 128, 128)(_module().double_e4m3, y, x, 4096)
    torch.testing.assert_close(y.float(), (x.float() * 2).to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("block", [32, 96, 256, 1024])
def test_warp_and_block_reductions(block: int) -> None:
    blocks = 5
    x = torch.randn(blocks * block, device="cuda")
    warp_sums = torch.zeros(blocks * block // 32, device="cuda")
    block_out = torch.zeros(blocks * 3, device="cuda")
    cujit.LaunchKernel(blocks, block)(_module().reductions, warp_sums, block_out, x)
    torch.testing.assert_close(warp_sums, x.view(-1, 32).sum(1), rtol=1e-5, atol=1e-5)
    per_block = x.view(blocks, block)
    expect = torch.stack([per_block.sum(1), per_block.amax(1), per_block.amin(1)], 1).flatten()
    torch.testing.assert_close(block_out, expect, rtol=1e-5, atol=1e-4)


def test_device_check_passes_and_traps() -> None:
    good = torch.arange(1000, dtype=torch.int32, device="cuda")
    cujit.LaunchKernel(4, 128)(_module().check, good, 1000)
    cujit.device_check()
    out = trapped_launch(
        f"m = cujit.load_jit('headers_test', cuda_files=[{KERNELS!r}], "
        "cuda_wrappers=[('check', 'check_non_negative')])",
        "bad = torch.arange(1000, dtype=torch.int32, device='cuda') - 5\n"
        "cujit.LaunchKernel(4, 128)(m.check, bad, 1000)",
    )
    assert "cujit device check failed: values[i] >= 0 (values must be non-negative)" in out, out
    assert "LAUNCH_ERROR a kernel on cuda:0 failed asynchronously" in out, out
