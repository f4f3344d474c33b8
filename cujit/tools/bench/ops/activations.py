"""Gated activations: silu_and_mul and gelu_and_mul (none and tanh) on x [T, 2d].

Against torch eager, torch.compile, Liger and FlashInfer (QuACK has no standalone gated activation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import flashinfer, liger
from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    Contender,
    Env,
    Family,
    Setup,
    adapter_or_reason,
    allocating,
    cujit_or_reason,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)

__all__ = ["FAMILY", "build_activations", "gated_act_bytes"]


def gated_act_bytes(tokens: int, d: int, itemsize: int) -> int:
    """silu/gelu_and_mul: read x [T, 2d], write out [T, d]: 3*T*d * e."""
    return 3 * tokens * d * itemsize


def act_cases(op: str, quick: bool) -> list[Case]:
    """bf16 at every token count and d; fp16 and fp32 at d = 8192; GELU's tanh form at the headline shape."""
    tokens = QUICK_TOKENS if quick else TOKENS
    ds = (8192,) if quick else (4096, 8192, 14336)
    variants = ["none", "tanh"] if op == "gelu_and_mul" else [""]
    cases: list[Case] = []
    for variant in variants:
        # GELU's tanh form costs the same bytes: the full sweep runs it at the headline shape of each d only.
        if variant == "tanh":
            shapes = [("bfloat16", HEADLINE_TOKENS, d) for d in ds]
        else:
            shapes = [("bfloat16", t, d) for d in ds for t in tokens]
            if not (quick and variant == "none"):
                shapes += [(dtype, t, 8192) for dtype in ("float16", "float32")
                           for t in ((HEADLINE_TOKENS,) if quick else (16, HEADLINE_TOKENS))]
        cases += [Case(op, dtype, t, {"d": d}, str(d), gated_act_bytes(t, d, ITEMSIZE[dtype]), "3*T*d*e", variant)
                  for dtype, t, d in shapes]
    return cases


def build_activations(case: Case, env: Env) -> Setup:
    """silu_and_mul and gelu_and_mul (``variant`` = approximate) on x [T, 2d]."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, d = case.tokens, case.params["d"]
    x = torch.randn(tokens, 2 * d, dtype=dtype, device=device)
    gelu = case.op == "gelu_and_mul"
    approximate = case.variant
    ref: Callable[[Any], Any] = (lambda x: refs.gelu_and_mul(x, approximate)) if gelu else refs.silu_and_mul
    expected = {"out": ref(upcast(x))}
    contenders: list[Contender] = []
    op, reason = cujit_or_reason(case.op)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        out = torch.empty(tokens, d, dtype=dtype, device=device)
        if gelu:
            def call() -> Any:
                return op(x, approximate, out=out)
        else:
            def call() -> Any:
                return op(x, out=out)
        contenders.append(Contender("cujit", call, lambda: {"out": out}, poison=lambda: out.fill_(math.nan)))
    contenders.append(allocating("eager", lambda: ref(x), ["out"]))
    contenders.append(env.compiler.contender(case, "ref", lambda x: ref(x), (x,), names=["out"]))
    if gelu and approximate != "tanh":
        contenders.append(unavailable("liger", "n/a: Liger's GEGLU has the tanh form only"))
    else:
        fn, why = adapter_or_reason(liger.gelu_tanh_and_mul if gelu else liger.silu_and_mul)
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            a, b = x[:, :d].contiguous(), x[:, d:].contiguous()
            contenders.append(allocating("liger", lambda: fn(a, b), ["out"], note="gate and up as two tensors"))
    fi, why = adapter_or_reason(lambda: flashinfer.gated_activation(case.op, approximate, dtype))
    if fi is None:
        contenders.append(unavailable("flashinfer", why))
    else:
        fi_out = torch.empty(tokens, d, dtype=dtype, device=device)
        contenders.append(Contender("flashinfer", lambda: fi(x, fi_out), lambda: {"out": fi_out},
                                    poison=lambda: fi_out.fill_(math.nan)))
    return Setup(expected, {"out": tol(dtype)}, contenders)


FAMILY = Family("activations", "Gated activations", ("silu_and_mul", "gelu_and_mul"), act_cases, build_activations,
                order=20)
