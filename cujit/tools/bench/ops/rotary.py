"""Rotary embedding in place on q [T, Hq*D] and k [T, Hkv*D], neox and gptj styles.

Against torch eager, torch.compile, Liger (neox only), QuACK and FlashInfer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import flashinfer, liger, quack
from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    Contender,
    Env,
    Family,
    Setup,
    accepts,
    adapter_or_reason,
    cujit_or_reason,
    restore,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)

__all__ = ["FAMILY", "ROTARY_HEADS", "build_rotary", "cos_sin_cache", "rotary_bytes", "rotary_inputs"]

#: (q heads, kv heads, head size) of the rows.
ROTARY_HEADS = ((64, 16, 128), (32, 8, 128), (40, 10, 128))


def rotary_bytes(tokens: int, q_heads: int, kv_heads: int, rotary_dim: int, itemsize: int, cache_itemsize: int,
                 pos_itemsize: int) -> int:
    """rotary_embedding, in place: read + write the rotated part of q and k, read positions and T cache rows.

    2*T*(Hq + Hkv)*R*e + T*R*c + T*p (R rotary_dim, c bytes per cache element, p per position). The part of each
    head past rotary_dim is neither read nor written.
    """
    return 2 * tokens * (q_heads + kv_heads) * rotary_dim * itemsize + tokens * rotary_dim * cache_itemsize \
        + tokens * pos_itemsize


def rotary_cases(op: str, quick: bool) -> list[Case]:
    """bf16, neox style at every token count; the GPT-J style at the headline shape."""
    tokens = QUICK_TOKENS if quick else TOKENS
    heads = ROTARY_HEADS[:1] if quick else ROTARY_HEADS
    cases: list[Case] = []
    for style in ("neox", "gptj"):
        # The GPT-J (interleaved) style moves the same bytes: measured at the headline shape only.
        for qh, kh, hs in heads:
            for t in tokens if style == "neox" else (HEADLINE_TOKENS,):
                e = ITEMSIZE["bfloat16"]
                nbytes = rotary_bytes(t, qh, kh, hs, e, e, ITEMSIZE["int64"])
                cases.append(Case(op, "bfloat16", t,
                                  {"q_heads": qh, "kv_heads": kh, "head_size": hs, "rotary_dim": hs},
                                  f"{qh}q{kh}kv{hs}", nbytes, "2*T*(Hq+Hkv)*R*e + T*R*c + 8*T", style))
    return cases


def cos_sin_cache(env: Env, rotary_dim: int, dtype: Any) -> Any:
    """[env.max_position, rotary_dim] in ``dtype``: cos of each frequency in a row's first half, sin in its second."""
    import torch

    rd, device = rotary_dim, env.device
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rd, 2, dtype=torch.float64, device=device) / rd))
    angles = torch.outer(torch.arange(env.max_position, dtype=torch.float64, device=device), inv_freq)
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)


def rotary_inputs(case: Case, env: Env) -> dict[str, Any]:
    """Positions, a cos/sin cache of env.max_position rows, q and k of a rotary row; with the head counts."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens = case.tokens
    qh, kh, hs, rd = (case.params[k] for k in ("q_heads", "kv_heads", "head_size", "rotary_dim"))
    cache = cos_sin_cache(env, rd, dtype)
    positions = torch.randperm(env.max_position, device=device)[:tokens]
    return {"positions": positions, "cos_sin_cache": cache, "head_size": hs, "qh": qh, "kh": kh, "rd": rd,
            "q": torch.randn(tokens, qh * hs, dtype=dtype, device=device),
            "k": torch.randn(tokens, kh * hs, dtype=dtype, device=device)}


def build_rotary(case: Case, env: Env) -> Setup:
    """rotary_embedding in place on q [T, Hq*D] and k [T, Hkv*D]; ``variant`` neox or gptj."""
    import torch

    inputs = rotary_inputs(case, env)
    positions, cache, hs = inputs["positions"], inputs["cos_sin_cache"], inputs["head_size"]
    q, k = inputs["q"], inputs["k"]
    is_neox = case.variant == "neox"
    want_q, want_k = upcast(q), upcast(k)
    refs.rotary_embedding(positions, want_q, want_k, upcast(cache), hs, is_neox)
    expected = {"q": want_q, "k": want_k}
    bound = tol(q.dtype)

    def inplace(name: str, call: Callable[[Any, Any], Any], **extra: Any) -> Contender:
        qc, kc = q.clone(), k.clone()
        return Contender(name, lambda: call(qc, kc), lambda: {"q": qc, "k": kc}, restore([(qc, q), (kc, k)]),
                         **extra)

    contenders: list[Contender] = []
    op, reason = cujit_or_reason("rotary_embedding")
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        extra: dict[str, Any] = {"head_size": hs} if accepts(op, "head_size") else {}
        contenders.append(inplace("cujit", lambda qc, kc: op(positions, qc, kc, cache, is_neox=is_neox, **extra)))
    contenders.append(inplace("eager", lambda qc, kc: refs.rotary_embedding(positions, qc, kc, cache, hs, is_neox)))
    q_compiled, k_compiled = q.clone(), k.clone()
    contenders.append(env.compiler.contender(
        case, "ref", lambda p, q, k, c: refs.rotary_embedding(p, q, k, c, hs, is_neox),
        (positions, q_compiled, k_compiled, cache), reset=restore([(q_compiled, q), (k_compiled, k)]),
        outputs=lambda: {"q": q_compiled, "k": k_compiled}))
    if not is_neox:
        contenders.append(unavailable("liger", "n/a: Liger's rope is the neox (rotate-half) style only"))
    else:
        fn, why = adapter_or_reason(liger.rope)
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            tokens, rd = case.tokens, inputs["rd"]
            rows = cache.index_select(0, positions)
            cos = torch.cat((rows[:, : rd // 2], rows[:, : rd // 2]), dim=-1)[None].contiguous()
            sin = torch.cat((rows[:, rd // 2:], rows[:, rd // 2:]), dim=-1)[None].contiguous()
            nbytes = case.nbytes - tokens * positions.element_size()

            def liger_call(qc: Any, kc: Any) -> Any:
                return fn(qc.view(1, tokens, inputs["qh"], hs).transpose(1, 2),
                          kc.view(1, tokens, inputs["kh"], hs).transpose(1, 2), cos, sin)

            contenders.append(inplace("liger", liger_call, nbytes=nbytes,
                                      note="[1, H, T, D] views, cos/sin gathered per token untimed, no positions"))
    qa, why = adapter_or_reason(lambda: quack.rotary_embedding(is_neox))
    if qa is None:
        contenders.append(unavailable("quack", why))
    else:
        contenders.append(inplace("quack", lambda qc, kc: qa(positions, qc, kc, cache, hs),
                                  note="each token a sequence of one at offset = its position; q and k in two calls"))
    fi, why = adapter_or_reason(lambda: flashinfer.rotary_embedding(is_neox, q.dtype))
    if fi is None:
        contenders.append(unavailable("flashinfer", why))
    else:
        cache32 = cache.float()
        nbytes = case.nbytes + case.tokens * inputs["rd"] * (cache32.element_size() - cache.element_size())
        contenders.append(inplace("flashinfer", lambda qc, kc: fi(positions, qc, kc, cache32, hs), nbytes=nbytes,
                                  note="cos/sin cache in fp32 (converted once untimed): + 2*T*R bytes"))
    return Setup(expected, {"q": bound, "k": bound}, contenders, inplace=True)

FAMILY = Family("rotary", "Rotary embedding (in place on q and k)", ("rotary_embedding",), rotary_cases, build_rotary,
                order=30)
