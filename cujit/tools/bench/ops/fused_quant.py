"""Fused FP8 quantization: silu_and_mul_quant_fp8 and fused_add_rms_norm_quant_fp8 (per group of 128 values).

Each op computes what an activation or a norm would store, then quantizes it per group in the same pass; torch
eager and torch.compile run the two steps of the plain references. FlashInfer's fused residual add + RMSNorm +
FP8 per 128 values is a contender of the norm op (its fused SiLU quantizations are MXFP8 and NVFP4 only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import flashinfer
from .. import references as refs
from .case import ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    EPS,
    REL_TOL,
    Contender,
    Env,
    Family,
    Setup,
    adapter_or_reason,
    allocating,
    cujit_or_reason,
    map_outputs,
    restore,
    tol,
    torch_dtype,
    unavailable,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "FAMILY",
    "GROUP",
    "add_rms_norm_quant",
    "build_fused_quant",
    "fused_add_rms_norm_quant_bytes",
    "silu_and_mul_quant",
    "silu_and_mul_quant_bytes",
]

#: Values per scale in every row.
GROUP = 128


def silu_and_mul_quant_bytes(tokens: int, d: int, itemsize: int, group: int) -> int:
    """silu_and_mul_quant_fp8: read x [T, 2d], write q [T, d] (1 byte each) and T*d/g fp32 scales.

    T*d*(2*e + 1) + 4*T*d/g.
    """
    return tokens * d * (2 * itemsize + 1) + 4 * tokens * (d // group)


def fused_add_rms_norm_quant_bytes(tokens: int, hidden: int, itemsize: int, group: int) -> int:
    """fused_add_rms_norm_quant_fp8: read x and residual, write residual, read weight, write q and the scales.

    T*H*(3*e + 1) + H*e + 4*T*H/g (x is only read: the normalized values go to q, not back to x).
    """
    return tokens * hidden * (3 * itemsize + 1) + hidden * itemsize + 4 * tokens * (hidden // group)


def fused_quant_cases(op: str, quick: bool) -> list[Case]:
    """bf16 at every token count; d 4096 and 14336 (SiLU), hidden 4096 and 7168 (norm); one size with --quick."""
    tokens = QUICK_TOKENS if quick else TOKENS
    e = ITEMSIZE["bfloat16"]
    if op == "silu_and_mul_quant_fp8":
        ds = (4096,) if quick else (4096, 14336)
        return [Case(op, "bfloat16", t, {"d": d, "group_size": GROUP}, str(d), silu_and_mul_quant_bytes(t, d, e, GROUP),
                     "T*d*(2*e + 1) + 4*T*d/g") for d in ds for t in tokens]
    hiddens = (4096,) if quick else (4096, 7168)
    return [Case(op, "bfloat16", t, {"hidden": h, "group_size": GROUP}, str(h),
                 fused_add_rms_norm_quant_bytes(t, h, e, GROUP), "T*H*(3*e + 1) + H*e + 4*T*H/g")
            for h in hiddens for t in tokens]


def silu_and_mul_quant(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_token_group_quant_fp8(silu_and_mul(x), group)``: y rounded to x's dtype, then quantized."""
    return refs.per_token_group_quant_fp8(refs.silu_and_mul(x), group)


def add_rms_norm_quant(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` in place (rounded to its dtype), then the RMSNorm of it rounded to x's dtype, quantized."""
    total = (x.float() + residual.float()).to(residual.dtype)
    residual.copy_(total)
    return refs.per_token_group_quant_fp8(refs.rms_norm(total, weight, eps), group)


def build_fused_quant(case: Case, env: Env) -> Setup:
    """The quantized values and scales against the two-step reference on the same inputs.

    Computed in the storage dtype as the ops define them (the value quantized is rounded to it first), so the
    references run on the inputs as they are, not upcast. The scales inherit that rounding: a scale may differ by
    one unit of the storage dtype where the reference and an op round a group's largest value apart, so they are
    checked at the storage dtype's bound.
    """
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, group = case.tokens, case.params["group_size"]
    op, reason = cujit_or_reason(case.op)
    contenders: list[Contender] = []
    tolerance = {"q": REL_TOL["float8_e4m3fn"], "scale": tol(dtype)}
    if case.op == "silu_and_mul_quant_fp8":
        x = torch.randn(tokens, 2 * case.params["d"], dtype=dtype, device=device)
        expected = dict(zip(("q", "scale"), silu_and_mul_quant(x, group), strict=True))
        if op is None:
            contenders.append(unavailable("cujit", reason))
        else:
            contenders.append(allocating("cujit", lambda: op(x, group), ["q", "scale"]))
        contenders.append(allocating("eager", lambda: silu_and_mul_quant(x, group), ["q", "scale"]))
        contenders.append(env.compiler.contender(case, "ref", lambda x: silu_and_mul_quant(x, group), (x,),
                                                 names=["q", "scale"]))
        contenders.append(unavailable("flashinfer", "n/a: FlashInfer's fused SiLU quantizations are MXFP8 and "
                                                    "NVFP4 only"))
        return Setup(expected, tolerance, contenders)

    hidden = case.params["hidden"]
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    residual = torch.randn(tokens, hidden, dtype=dtype, device=device)
    weight = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    want_residual = residual.clone()
    q, scale = add_rms_norm_quant(x, want_residual, weight, EPS, group)
    # x is only read: it must keep its bytes.
    expected = {"q": q, "scale": scale, "residual": want_residual, "x": x.clone()}
    tolerance.update(residual=tol(dtype), x=0.0)

    def inplace(name: str, call: Any, **extra: Any) -> Contender:
        xc, rc = x.clone(), residual.clone()
        box: dict[str, Any] = {}

        def fn() -> None:
            box["out"] = call(xc, rc)

        def outputs() -> dict[str, Any]:
            q, scale = box["out"]
            return {"q": q, "scale": scale, "residual": rc, "x": xc}

        return Contender(name, fn, outputs, restore([(xc, x), (rc, residual)]), **extra)

    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        contenders.append(inplace("cujit", lambda xc, rc: op(xc, rc, weight, EPS, group_size=group)))
    contenders.append(inplace("eager", lambda xc, rc: add_rms_norm_quant(xc, rc, weight, EPS, group)))
    xk, rk = x.clone(), residual.clone()
    compiled = env.compiler.contender(case, "ref", lambda x, r, w: add_rms_norm_quant(x, r, w, EPS, group),
                                      (xk, rk, weight), names=["q", "scale"], reset=restore([(xk, x), (rk, residual)]))
    contenders.append(map_outputs(compiled, lambda got: {**got, "residual": rk, "x": xk}))
    if group != 128:
        contenders.append(unavailable("flashinfer", f"n/a: FlashInfer quantizes per 128 values only, not {group}"))
    else:
        fi, why = adapter_or_reason(lambda: flashinfer.fused_add_rms_norm_quant_fp8(EPS, hidden, dtype))
        if fi is None:
            contenders.append(unavailable("flashinfer", why))
        else:
            contenders.append(inplace("flashinfer", lambda xc, rc: fi(xc, rc, weight),
                                      nbytes=case.nbytes + tokens * hidden * x.element_size(),
                                      note="also writes the normalized rows: + T*H*e bytes; column-major scales"))
    return Setup(expected, tolerance, contenders, inplace=True)


FAMILY = Family("fused_quant", "Fused FP8 quantization: an activation or residual add + RMSNorm, then FP8 per group",
                ("silu_and_mul_quant_fp8", "fused_add_rms_norm_quant_fp8"), fused_quant_cases, build_fused_quant,
                order=55)
