"""Norms: rms_norm and fused_add_rms_norm at [T, H], Llama's ``* w`` and Gemma's ``* (1 + w)``.

Against torch eager, torch.compile, Liger, QuACK and FlashInfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import flashinfer, liger, quack
from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    EPS,
    Contender,
    Env,
    Family,
    Setup,
    accepts,
    adapter_or_reason,
    allocating,
    cujit_or_reason,
    restore,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)

if TYPE_CHECKING:
    import torch

__all__ = ["FAMILY", "build_norms", "fused_add_rms_norm_bytes", "rms_norm_bytes"]


def rms_norm_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """rms_norm: read x [T, H] and weight [H], write out [T, H]: (2*T*H + H) * e."""
    return (2 * tokens * hidden + hidden) * itemsize


def fused_add_rms_norm_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """fused_add_rms_norm: read x, residual and weight, write residual and x in place: (4*T*H + H) * e."""
    return (4 * tokens * hidden + hidden) * itemsize


def norm_cases(op: str, quick: bool) -> list[Case]:
    """bf16 at every token count and hidden size; fp16 and fp32 at a few; Gemma's form at the headline shape."""
    fn = rms_norm_bytes if op == "rms_norm" else fused_add_rms_norm_bytes
    formula = "(2*T*H + H)*e" if op == "rms_norm" else "(4*T*H + H)*e"
    tokens = QUICK_TOKENS if quick else TOKENS
    hiddens = (4096, 8192) if quick else (4096, 5120, 8192, 16384)
    shapes = [("bfloat16", t, h, "") for h in hiddens for t in tokens]
    for dtype in ("float16", "float32"):
        shapes += [(dtype, t, h, "") for h in ((4096,) if quick else (4096, 8192))
                   for t in ((HEADLINE_TOKENS,) if quick else (16, HEADLINE_TOKENS))]
    # Gemma's ``* (1 + w)`` moves the same bytes: bf16 at the headline shape of each hidden size only.
    shapes += [("bfloat16", HEADLINE_TOKENS, h, "gemma") for h in hiddens]
    return [Case(op, dtype, t, {"hidden": h}, str(h), fn(t, h, ITEMSIZE[dtype]), formula, variant)
            for dtype, t, h, variant in shapes]


def _gemma_weight(weight: torch.Tensor) -> torch.Tensor:
    """Gemma's effective weight ``1 + w``, in fp32 (as the kernels add it): what the references multiply by."""
    return weight.float() + 1.0


def build_norms(case: Case, env: Env) -> Setup:
    """rms_norm and fused_add_rms_norm at [T, H]; ``variant`` "gemma" for Gemma's ``* (1 + w)``."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, hidden = case.tokens, case.params["hidden"]
    gemma = case.variant == "gemma"
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    weight = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    effective: Callable[[Any], Any] = _gemma_weight if gemma else (lambda w: w)
    bound = tol(dtype)
    contenders: list[Contender] = []
    op, reason = cujit_or_reason(case.op)
    if op is not None and gemma and not accepts(op, "gemma"):
        op, reason = None, f"not available: cujit.{case.op} has no gemma flag"
    flags: dict[str, Any] = {"gemma": True} if gemma else {}
    if case.op == "rms_norm":
        expected = {"out": refs.rms_norm(upcast(x), upcast(effective(weight)), EPS)}
        if op is None:
            contenders.append(unavailable("cujit", reason))
        else:
            out = torch.empty_like(x)
            contenders.append(Contender("cujit", lambda: op(x, weight, EPS, out=out, **flags), lambda: {"out": out},
                                        poison=lambda: out.fill_(math.nan)))
        contenders.append(allocating("eager", lambda: refs.rms_norm(x, effective(weight), EPS), ["out"]))
        contenders.append(env.compiler.contender(case, "ref", lambda x, w: refs.rms_norm(x, effective(w), EPS),
                                                 (x, weight), names=["out"]))
        fn, why = adapter_or_reason(lambda: liger.rms_norm(EPS, gemma))
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            contenders.append(allocating("liger", lambda: fn(x, weight), ["out"], nbytes=case.nbytes + 4 * tokens,
                                         note="+ 4*T bytes of rstd"))
        qk, why = adapter_or_reason(lambda: quack.rms_norm(EPS, gemma))
        if qk is None:
            contenders.append(unavailable("quack", why))
        else:
            contenders.append(allocating("quack", lambda: qk(x, weight), ["out"]))
        fi, why = adapter_or_reason(lambda: flashinfer.rms_norm(EPS, dtype, device, gemma))
        if fi is None:
            contenders.append(unavailable("flashinfer", why))
        else:
            fi_out = torch.empty_like(x)
            contenders.append(Contender("flashinfer", lambda: fi(x, weight, fi_out), lambda: {"out": fi_out},
                                        poison=lambda: fi_out.fill_(math.nan), note=_backend_note(device)))
        return Setup(expected, {"out": bound}, contenders)

    residual = torch.randn(tokens, hidden, dtype=dtype, device=device)
    want_x, want_r = upcast(x), upcast(residual)
    # The reference rounds the sum to the storage dtype, as the op does; the upcast copy rounds it to its own.
    refs.fused_add_rms_norm(want_x, want_r, upcast(effective(weight)), EPS)
    expected = {"x": want_x, "residual": want_r}

    def inplace(name: str, call: Callable[[Any, Any], Any], **extra: Any) -> Contender:
        xc, rc = x.clone(), residual.clone()
        return Contender(name, lambda: call(xc, rc), lambda: {"x": xc, "residual": rc},
                         restore([(xc, x), (rc, residual)]), **extra)

    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        contenders.append(inplace("cujit", lambda xc, rc: op(xc, rc, weight, EPS, **flags)))
    contenders.append(inplace("eager", lambda xc, rc: refs.fused_add_rms_norm(xc, rc, effective(weight), EPS)))
    xk, rk = x.clone(), residual.clone()
    contenders.append(env.compiler.contender(
        case, "ref", lambda x, r, w: refs.fused_add_rms_norm(x, r, effective(w), EPS), (xk, rk, weight),
        reset=restore([(xk, x), (rk, residual)]), outputs=lambda: {"x": xk, "residual": rk}))
    fn, why = adapter_or_reason(lambda: liger.fused_add_rms_norm(EPS, gemma))
    if fn is None:
        contenders.append(unavailable("liger", why))
    else:
        contenders.append(allocating("liger", lambda: fn(x, residual, weight), ["x", "residual"],
                                     nbytes=case.nbytes + 4 * tokens, note="out of place, + 4*T bytes of rstd"))
    qk, why = adapter_or_reason(lambda: quack.fused_add_rms_norm(EPS, gemma))
    if qk is None:
        contenders.append(unavailable("quack", why))
    else:
        contenders.append(allocating("quack", lambda: qk(x, residual, weight), ["x", "residual"],
                                     note="out of place (two new tensors, the same bytes)"))
    fi, why = adapter_or_reason(lambda: flashinfer.fused_add_rms_norm(EPS, dtype, device, gemma))
    if fi is None:
        contenders.append(unavailable("flashinfer", why))
    else:
        contenders.append(inplace("flashinfer", lambda xc, rc: fi(xc, rc, weight), note=_backend_note(device)))
    return Setup(expected, {"x": bound, "residual": bound}, contenders, inplace=True)


def _backend_note(device: str) -> str:
    """Which kernels FlashInfer's norms ran: its dispatch picks CuTe DSL ones where nvidia-cutlass-dsl imports."""
    try:
        return f"{flashinfer.norm_backend(device)} kernels"
    except flashinfer.Unavailable as exc:
        return f"kernels unknown ({exc})"


FAMILY = Family("norms", "Norms", ("rms_norm", "fused_add_rms_norm"), norm_cases, build_norms, order=10)
