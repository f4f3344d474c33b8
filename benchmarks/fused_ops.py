"""Time the router, per-head norm and fused quantization ops against torch eager, torch.compile and copy_.

    python benchmarks/fused_ops.py [--tokens 1 16 4097] [--repeats 15]

For each op and token count (1, 16 and 4097 by default), the device time of one call of: the cujit op; the same
computation in plain torch (eager); that torch code under ``torch.compile`` (static shapes); and ``copy_`` of the
bytes the op must move (its inputs read once, its outputs written once). Each call is timed alone after an L2 flush
(cujit/tools/bench/timing.py), so every figure is from DRAM. The table gives microseconds, each contender's time
over cujit's (above 1: cujit is faster), and cujit's bandwidth as a fraction of copy_'s. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cujit.fused_add_rms_norm_quant_fp8 import fused_add_rms_norm_quant_fp8
from cujit.qk_rms_norm import qk_rms_norm
from cujit.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
from cujit.tools.bench.timing import copy_us, device_us
from cujit.topk_softmax import topk_softmax

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16


def _group_quant(y: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = y.float().reshape(y.shape[0], -1, group)
    scale = (g.abs().amax(-1, keepdim=True) / 448).clamp(min=1 / (448 * 512))
    return (g / scale).clamp(-448, 448).to(FP8).reshape(y.shape), scale.squeeze(-1)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def torch_topk(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights, ids = torch.softmax(logits.float(), -1).topk(8, -1)
    return weights / weights.sum(-1, keepdim=True), ids.int()


def torch_qk_norm(q: torch.Tensor, k: torch.Tensor, qw: torch.Tensor, kw: torch.Tensor) -> None:
    d = qw.shape[0]
    q.copy_(_rms(q.unflatten(1, (-1, d)), qw, 1e-6).flatten(1))
    k.copy_(_rms(k.unflatten(1, (-1, d)), kw, 1e-6).flatten(1))


def torch_silu_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[1] // 2
    return _group_quant((F.silu(x[:, :d].float()) * x[:, d:].float()).to(x.dtype), 128)


def torch_add_norm_quant(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    residual.add_(x)
    return _group_quant(_rms(residual, w, 1e-6), 128)


def cases(tokens: int) -> list[tuple[str, dict[str, Callable[[], Any]], int]]:
    """(label, {contender: call}, bytes moved) for each op at this token count."""
    found = []
    logits = torch.randn(tokens, 256, device="cuda", dtype=BF16)
    found.append((f"topk_softmax 256 experts k=8, {tokens} tok", {
        "cujit": lambda: topk_softmax(logits, 8, True),
        "eager": lambda: torch_topk(logits),
        "compile": _compiled(torch_topk, logits),
    }, logits.numel() * 2 + tokens * 8 * 8))

    qkv = torch.randn(tokens, (32 + 2 * 8) * 128, device="cuda", dtype=BF16)
    q, k = qkv[:, :4096], qkv[:, 4096:5120]
    qw, kw = torch.rand(128, device="cuda", dtype=BF16), torch.rand(128, device="cuda", dtype=BF16)
    found.append((f"qk_rms_norm 32+8 heads x 128, {tokens} tok", {
        "cujit": lambda: qk_rms_norm(q, k, qw, kw),
        "eager": lambda: torch_qk_norm(q, k, qw, kw),
        "compile": _compiled(torch_qk_norm, q, k, qw, kw),
    }, 2 * (q.numel() + k.numel()) * 2))

    x = torch.randn(tokens, 2 * 4096, device="cuda", dtype=BF16)
    found.append((f"silu_and_mul_quant_fp8 d=4096, {tokens} tok", {
        "cujit": lambda: silu_and_mul_quant_fp8(x),
        "eager": lambda: torch_silu_quant(x),
        "compile": _compiled(torch_silu_quant, x),
    }, x.numel() * 2 + tokens * 4096 + tokens * 32 * 4))

    h = torch.randn(tokens, 4096, device="cuda", dtype=BF16)
    residual = torch.randn_like(h)
    w = torch.rand(4096, device="cuda", dtype=BF16)
    found.append((f"fused_add_rms_norm_quant_fp8 g128 4096, {tokens} tok", {
        "cujit": lambda: fused_add_rms_norm_quant_fp8(h, residual, w, group_size=128),
        "eager": lambda: torch_add_norm_quant(h, residual, w),
        "compile": _compiled(torch_add_norm_quant, h, residual, w),
    }, h.numel() * 2 * 3 + tokens * 4096 + tokens * 32 * 4))
    return found


def _compiled(fn: Callable[..., Any], *args: torch.Tensor) -> Callable[[], Any]:
    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 4097])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; us per call, L2 flushed; ratios: contender / cujit")
    header = f"{'op':<50} {'cujit':>8} {'eager':>8} {'compile':>8} {'copy_':>8} {'eager x':>8} {'comp x':>8} " \
             f"{'x copy_':>8}"
    print(header)
    print("-" * len(header))
    for tokens in args.tokens:
        for label, fns, moved in cases(tokens):
            us = {name: device_us(fn, repeats=args.repeats) for name, fn in fns.items()}
            copy = copy_us(moved, repeats=args.repeats)
            print(f"{label:<50} {us['cujit']:8.2f} {us['eager']:8.2f} {us['compile']:8.2f} {copy:8.2f} "
                  f"{us['eager'] / us['cujit']:8.2f} {us['compile'] / us['cujit']:8.2f} {copy / us['cujit']:8.2f}")


if __name__ == "__main__":
    main()
