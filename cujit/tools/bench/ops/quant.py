"""FP8 (e4m3) quantization of x [T, H]: per token, per tensor (dynamic and static) and per group of 128.

Against eager, torch.compile and, per group, FlashInfer (which has no per-token or per-tensor FP8 quantization;
QuACK and Liger have none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import flashinfer
from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    REL_TOL,
    Contender,
    Env,
    Family,
    Setup,
    adapter_or_reason,
    allocating,
    cujit_or_reason,
    torch_dtype,
    unavailable,
)

__all__ = ["FAMILY", "build_quant", "group_quant_bytes", "per_tensor_quant_bytes", "per_token_quant_bytes"]


def per_token_quant_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """per_token_quant_fp8: read x, write q (1 byte each) and one fp32 scale per token: T*H*(e + 1) + 4*T."""
    return tokens * hidden * (itemsize + 1) + 4 * tokens


def per_tensor_quant_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """per_tensor_quant_fp8: read x once, write q, read (static) or write (dynamic) one fp32 scale.

    T*H*(e + 1) + 4. A dynamic scale needs the maximum of all of x before the first value is quantized, so a
    kernel reads x twice; the count is the once-read floor, reachable only while x stays in L2.
    """
    return tokens * hidden * (itemsize + 1) + 4


def group_quant_bytes(tokens: int, hidden: int, itemsize: int, group: int) -> int:
    """per_token_group_quant_fp8: read x, write q and one fp32 scale per group: T*H*(e + 1) + 4*T*H/g."""
    return tokens * hidden * (itemsize + 1) + 4 * tokens * (hidden // group)


def quant_cases(op: str, quick: bool) -> list[Case]:
    """bf16 x at hidden 4096 and 7168, every token count; per tensor dynamic and static."""
    tokens = QUICK_TOKENS if quick else TOKENS
    hiddens = (4096,) if quick else (4096, 7168)
    e = ITEMSIZE["bfloat16"]
    cases = []
    if op == "per_token_quant_fp8":
        cases = [Case(op, "bfloat16", t, {"hidden": h}, str(h), per_token_quant_bytes(t, h, e), "T*H*(e + 1) + 4*T")
                 for h in hiddens for t in tokens]
    elif op == "per_tensor_quant_fp8":
        cases = [Case(op, "bfloat16", t, {"hidden": h}, str(h), per_tensor_quant_bytes(t, h, e), "T*H*(e + 1) + 4",
                      variant) for variant in ("dynamic", "static") for h in hiddens for t in tokens]
    elif op == "per_token_group_quant_fp8":
        group = 128
        shapes = [(t, h) for h in hiddens for t in tokens]
        if quick:
            shapes.append((HEADLINE_TOKENS, 7168))
        cases = [Case(op, "bfloat16", t, {"hidden": h, "group_size": group}, str(h),
                      group_quant_bytes(t, h, e, group), "T*H*(e + 1) + 4*T*H/g") for t, h in shapes]
    return cases


def build_quant(case: Case, env: Env) -> Setup:
    """per-token, per-tensor (dynamic or static) and per-group (128) fp8 e4m3 quantization of x [T, H]."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, hidden = case.tokens, case.params["hidden"]
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    op, reason = cujit_or_reason(case.op)
    args: tuple[Any, ...] = (x,)
    if case.op == "per_token_quant_fp8":
        ref: Callable[..., Any] = refs.per_token_quant_fp8
    elif case.op == "per_tensor_quant_fp8":
        ref = refs.per_tensor_quant_fp8
        if case.variant == "static":
            args = (x, (x.abs().amax().float() / refs.FP8_MAX).reshape(1))
    else:
        group = case.params["group_size"]

        def ref(x: Any) -> Any:
            return refs.per_token_group_quant_fp8(x, group)

    expected = dict(zip(("q", "scale"), ref(*args), strict=True))
    tolerance = {"q": REL_TOL["float8_e4m3fn"], "scale": 1e-6}
    contenders: list[Contender] = []
    if op is None:
        contenders.append(unavailable("cujit", reason))
    elif case.op == "per_token_group_quant_fp8":
        contenders.append(allocating("cujit", lambda: op(x, case.params["group_size"]), ["q", "scale"]))
    else:
        contenders.append(allocating("cujit", lambda: op(*args), ["q", "scale"]))
    contenders.append(allocating("eager", lambda: ref(*args), ["q", "scale"]))
    contenders.append(env.compiler.contender(case, "ref", lambda *a: ref(*a), args, names=["q", "scale"]))
    if case.op == "per_token_group_quant_fp8":
        fi, why = adapter_or_reason(lambda: flashinfer.per_token_group_quant_fp8(case.params["group_size"]))
        if fi is None:
            contenders.append(unavailable("flashinfer", why))
        else:
            contenders.append(allocating("flashinfer", lambda: fi(x), ["q", "scale"], note="its native CUDA backend"))
    else:
        kind = "per-token" if case.op == "per_token_quant_fp8" else "per-tensor"
        contenders.append(unavailable("flashinfer", f"n/a: FlashInfer has no {kind} FP8 quantization"))
    return Setup(expected, tolerance, contenders)


FAMILY = Family("quant", "FP8 quantization (e4m3)",
                ("per_token_quant_fp8", "per_tensor_quant_fp8", "per_token_group_quant_fp8"), quant_cases, build_quant,
                order=50)
