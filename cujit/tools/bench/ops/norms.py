"""Norms: rms_norm and fused_add_rms_norm at [T, H], against torch eager, torch.compile and Liger."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import liger
from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    EPS,
    Contender,
    Env,
    Family,
    Setup,
    allocating,
    cujit_or_reason,
    liger_or_reason,
    restore,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)

__all__ = ["FAMILY", "build_norms", "fused_add_rms_norm_bytes", "rms_norm_bytes"]


def rms_norm_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """rms_norm: read x [T, H] and weight [H], write out [T, H]: (2*T*H + H) * e."""
    return (2 * tokens * hidden + hidden) * itemsize


def fused_add_rms_norm_bytes(tokens: int, hidden: int, itemsize: int) -> int:
    """fused_add_rms_norm: read x, residual and weight, write residual and x in place: (4*T*H + H) * e."""
    return (4 * tokens * hidden + hidden) * itemsize


def norm_cases(op: str, quick: bool) -> list[Case]:
    """bf16 at every token count and hidden size; fp16 and fp32 at a few."""
    fn = rms_norm_bytes if op == "rms_norm" else fused_add_rms_norm_bytes
    formula = "(2*T*H + H)*e" if op == "rms_norm" else "(4*T*H + H)*e"
    tokens = QUICK_TOKENS if quick else TOKENS
    hiddens = (4096, 8192) if quick else (4096, 5120, 8192, 16384)
    shapes = [("bfloat16", t, h) for h in hiddens for t in tokens]
    for dtype in ("float16", "float32"):
        shapes += [(dtype, t, h) for h in ((4096,) if quick else (4096, 8192))
                   for t in ((HEADLINE_TOKENS,) if quick else (16, HEADLINE_TOKENS))]
    return [Case(op, dtype, t, {"hidden": h}, str(h), fn(t, h, ITEMSIZE[dtype]), formula) for dtype, t, h in shapes]


def build_norms(case: Case, env: Env) -> Setup:
    """rms_norm and fused_add_rms_norm at [T, H]."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, hidden = case.tokens, case.params["hidden"]
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    weight = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    bound = tol(dtype)
    contenders: list[Contender] = []
    op, reason = cujit_or_reason(case.op)
    if case.op == "rms_norm":
        expected = {"out": refs.rms_norm(upcast(x), upcast(weight), EPS)}
        if op is None:
            contenders.append(unavailable("cujit", reason))
        else:
            out = torch.empty_like(x)
            contenders.append(Contender("cujit", lambda: op(x, weight, EPS, out=out), lambda: {"out": out},
                                        poison=lambda: out.fill_(math.nan)))
        contenders.append(allocating("eager", lambda: refs.rms_norm(x, weight, EPS), ["out"]))
        contenders.append(env.compiler.contender(case, "ref", lambda x, w: refs.rms_norm(x, w, EPS), (x, weight),
                                                 names=["out"]))
        fn, why = liger_or_reason(lambda: liger.rms_norm(EPS))
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            contenders.append(allocating("liger", lambda: fn(x, weight), ["out"], nbytes=case.nbytes + 4 * tokens,
                                         note="+ 4*T bytes of rstd"))
        return Setup(expected, {"out": bound}, contenders)

    residual = torch.randn(tokens, hidden, dtype=dtype, device=device)
    want_x, want_r = upcast(x), upcast(residual)
    # The reference rounds the sum to the storage dtype, as the op does; the upcast copy rounds it to its own.
    refs.fused_add_rms_norm(want_x, want_r, upcast(weight), EPS)
    expected = {"x": want_x, "residual": want_r}

    def inplace(name: str, call: Callable[[Any, Any], Any]) -> Contender:
        xc, rc = x.clone(), residual.clone()
        return Contender(name, lambda: call(xc, rc), lambda: {"x": xc, "residual": rc},
                         restore([(xc, x), (rc, residual)]))

    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        contenders.append(inplace("cujit", lambda xc, rc: op(xc, rc, weight, EPS)))
    contenders.append(inplace("eager", lambda xc, rc: refs.fused_add_rms_norm(xc, rc, weight, EPS)))
    xk, rk = x.clone(), residual.clone()
    contenders.append(env.compiler.contender(
        case, "ref", lambda x, r, w: refs.fused_add_rms_norm(x, r, w, EPS), (xk, rk, weight),
        reset=restore([(xk, x), (rk, residual)]), outputs=lambda: {"x": xk, "residual": rk}))
    fn, why = liger_or_reason(lambda: liger.fused_add_rms_norm(EPS))
    if fn is None:
        contenders.append(unavailable("liger", why))
    else:
        contenders.append(allocating("liger", lambda: fn(x, residual, weight), ["x", "residual"],
                                     nbytes=case.nbytes + 4 * tokens, note="out of place, + 4*T bytes of rstd"))
    return Setup(expected, {"x": bound, "residual": bound}, contenders, inplace=True)


FAMILY = Family("norms", "Norms", ("rms_norm", "fused_add_rms_norm"), norm_cases, build_norms, order=10)
