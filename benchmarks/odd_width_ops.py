"""The shipped ops at odd widths and on misaligned views, against ``copy_`` of the same bytes, in one run (GPU).

    python benchmarks/odd_width_ops.py [--tokens 4097] [--dtype bfloat16] [--rounds 10] [--ops silu_and_mul,...]

Each op at width 4096 laid out aligned (the vector path, the baseline), then the layouts that take the row path
(cujit/rows.cuh's split: 16-byte vectors between each row's own 16-byte boundaries): widths 4095, 4097 and 2881,
and width 4096 read through a view that starts one element in (``x[:, 1:]`` of a tensor one column wider; the
activations, which take contiguous tensors only, read a contiguous x that starts one element into its storage). Each
case is checked against torch first, then timed with L2 flushed before every call, interleaved with ``copy_`` of the
bytes the op must move (half read, half written; cujit/tools/bench/timing.py). The table gives the median time and
the fraction of ``copy_``'s bandwidth ("x copy_", higher is better).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cujit.fp8_quant import per_tensor_quant_fp8, per_token_group_quant_fp8, per_token_quant_fp8
from cujit.gelu_and_mul import gelu_and_mul
from cujit.silu_and_mul import silu_and_mul
from cujit.tools.bench.timing import L2Flush, time_flushed

OPS = ("silu_and_mul", "gelu_and_mul", "per_token_quant_fp8", "per_tensor_quant_fp8", "per_token_group_quant_fp8")
#: (label, width, layout): "aligned", "view" (x[:, 1:], or for the activations a contiguous x one element in).
CASES = [("4096", 4096, "aligned"), ("4095", 4095, "aligned"), ("4097", 4097, "aligned"),
         ("2881", 2881, "aligned"), ("4096, view", 4096, "view")]
FP8 = torch.float8_e4m3fn


def _input(tokens: int, cols: int, dtype: torch.dtype, layout: str, contiguous: bool) -> torch.Tensor:
    if layout == "aligned":
        return (torch.randn(tokens, cols, device="cuda") * 3).to(dtype)
    if contiguous:
        return (torch.randn(tokens * cols + 1, device="cuda") * 3).to(dtype)[1:].view(tokens, cols)
    return (torch.randn(tokens, cols + 1, device="cuda") * 3).to(dtype)[:, 1:]


def _fp8_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def setup(op: str, tokens: int, width: int, dtype: torch.dtype, layout: str) -> tuple[Callable[[], Any], int]:
    """The call to time (its result checked against torch here) and the bytes it must move."""
    item = torch.empty(0, dtype=dtype).element_size()
    if op in ("silu_and_mul", "gelu_and_mul"):
        x = _input(tokens, 2 * width, dtype, layout, contiguous=True)
        out = torch.empty(tokens, width, device="cuda", dtype=dtype)
        a, b = x[:, :width].double(), x[:, width:].double()
        if op == "silu_and_mul":
            def call() -> Any:
                return silu_and_mul(x, out=out)
            expected = F.silu(a) * b
        else:
            def call() -> Any:
                return gelu_and_mul(x, out=out)
            expected = F.gelu(a) * b
        call()
        torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=1e-5)
        return call, 3 * tokens * width * item
    x = _input(tokens, width, dtype, layout, contiguous=False)
    q = torch.empty(tokens, width, device="cuda", dtype=FP8)
    if op == "per_token_quant_fp8":
        scales = torch.empty(tokens, 1, device="cuda")
        amax = x.abs().amax(dim=-1, keepdim=True).float()
        scale = (amax / torch.full_like(amax, 448.0)).clamp(min=1 / (448 * 512))

        def call() -> Any:
            return per_token_quant_fp8(x, out=q, scales=scales)
        extra = 4 * tokens
    elif op == "per_tensor_quant_fp8":
        scale_out = torch.empty(1, device="cuda")
        amax = x.abs().amax().float().reshape(1)
        scale = (amax / torch.full_like(amax, 448.0)).clamp(min=1 / (448 * 512))

        def call() -> Any:
            return per_tensor_quant_fp8(x, out=q, scale_out=scale_out)
        extra = 4
    else:
        if width % 128:
            raise ValueError("per_token_group_quant_fp8 needs a width that is a multiple of 128")
        groups = x.float().reshape(tokens, width // 128, 128)
        amax = groups.abs().amax(dim=-1, keepdim=True)
        scale = (amax / torch.full_like(amax, 448.0)).clamp(min=1 / (448 * 512))

        def call() -> Any:
            return per_token_group_quant_fp8(x, 128, out=q)
        extra = 4 * tokens * (width // 128)
        expected = (groups / scale).clamp(-448, 448).to(FP8).reshape(tokens, width)
        call()
        if not _fp8_equal(q, expected):
            raise AssertionError(f"{op} {tokens}x{width} {layout}: wrong bytes")
        return call, tokens * width * (item + 1) + extra
    call()
    expected = (x.float() / scale).clamp(-448, 448).to(FP8)
    if not _fp8_equal(q, expected):
        raise AssertionError(f"{op} {tokens}x{width} {layout}: wrong bytes")
    return call, tokens * width * (item + 1) + extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4097, help="rows (default 4097)")
    parser.add_argument("--dtype", default="bfloat16", help="float32, float16 or bfloat16 (default bfloat16)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of 10 calls (default 10)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    options = parser.parse_args()
    dtype = getattr(torch, options.dtype)
    flush = L2Flush()
    print(f"{torch.cuda.get_device_name()}, {options.dtype}, {options.tokens} rows; median us (x copy_)")
    print(f"{'op':26s} {'width':12s} {'copy_':>8s} {'op':>18s}")
    for op in options.ops.split(","):
        for label, width, layout in CASES:
            if op == "per_token_group_quant_fp8" and width % 128:
                continue
            call, moved = setup(op, options.tokens, width, dtype, layout)
            half = moved // 2
            src = torch.empty(half, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            def copy_(dst: torch.Tensor = dst, src: torch.Tensor = src) -> Any:
                return dst.copy_(src)
            timings = time_flushed({"copy_": copy_, "op": call}, flush, rounds=options.rounds)
            copy, took = timings["copy_"].median_us, timings["op"].median_us
            print(f"{op:26s} {label:12s} {copy:8.1f} {took:8.1f} ({copy / took:4.2f}x)", flush=True)


if __name__ == "__main__":
    main()
