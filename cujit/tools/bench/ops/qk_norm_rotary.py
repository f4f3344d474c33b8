"""Per-head RMSNorm of q and k then rotary embedding, in place (qk_norm_rotary), against cujit's two ops in sequence.

Rows: the q and k slices of a fused qkv tensor, as Qwen3 (neox, plain weights) and Gemma 3 (neox, ``1 + w``)
attention normalise and rotate them. Contenders: the fused op, ``cujit unfused`` (qk_rms_norm then
rotary_embedding), and torch eager and torch.compile of the reference below. Liger has no such op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    EPS,
    Contender,
    Env,
    Family,
    Setup,
    cujit_or_reason,
    restore,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)
from .qk_norm import qk_rms_norm
from .rotary import cos_sin_cache

if TYPE_CHECKING:
    import torch

__all__ = ["FAMILY", "build_qk_norm_rotary", "qk_norm_rotary", "qk_norm_rotary_bytes"]


def qk_norm_rotary_bytes(tokens: int, q_heads: int, kv_heads: int, head_size: int, rotary_dim: int, itemsize: int,
                         cache_itemsize: int, pos_itemsize: int) -> int:
    """In place: read and write q and k, read both weights, T cos/sin rows and T positions.

    2*T*(Hq + Hkv)*D*e + 2*D*e + T*R*c + T*p. The unfused pair moves q and k twice (and the cos/sin rows once):
    it is measured against the same count.
    """
    return (2 * tokens * (q_heads + kv_heads) * head_size * itemsize + 2 * head_size * itemsize
            + tokens * rotary_dim * cache_itemsize + tokens * pos_itemsize)


def qk_norm_rotary_cases(op: str, quick: bool) -> list[Case]:
    """bf16 rows, neox style, a bf16 cos/sin cache and int64 positions.

    Qwen3-8B's 32 q and 8 kv heads of 128 at every token count; Gemma 3's 16 and 8 heads of 256 (``1 + w``) at the
    headline shape.
    """
    e, p = ITEMSIZE["bfloat16"], ITEMSIZE["int64"]
    rows = [(t, 32, 8, 128, "qwen3") for t in (QUICK_TOKENS if quick else TOKENS)]
    if not quick:
        rows.append((HEADLINE_TOKENS, 16, 8, 256, "gemma3"))
    return [Case(op, "bfloat16", t, {"q_heads": qh, "kv_heads": kh, "head_size": d, "rotary_dim": d},
                 f"{qh}q{kh}kv{d}", qk_norm_rotary_bytes(t, qh, kh, d, d, e, e, p),
                 "2*T*(Hq+Hkv)*D*e + 2*D*e + T*R*e + 8*T", variant) for t, qh, kh, d, variant in rows]


def qk_norm_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor,
                   k_weight: torch.Tensor, cos_sin_cache: torch.Tensor, head_size: int, eps: float,
                   gemma: bool) -> None:
    """In place: each head of q and k normalised, rounded to its dtype, then rotated (neox style).

    A head becomes rms_norm(head) * w (``1 + w`` for gemma), then is rotated by its token's cos/sin row.
    """
    if gemma:
        q_weight, k_weight = q_weight.float() + 1, k_weight.float() + 1
    qk_rms_norm(q, k, q_weight, k_weight, eps)
    refs.rotary_embedding(positions, q, k, cos_sin_cache, head_size, True)


def build_qk_norm_rotary(case: Case, env: Env) -> Setup:
    """qk_norm_rotary on the q and k column slices of qkv [T, (Hq + 2*Hkv)*D]; v, the rest, must keep its bytes."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, qh, kh, d, rd = (case.tokens, *(case.params[k] for k in ("q_heads", "kv_heads", "head_size",
                                                                      "rotary_dim")))
    gemma = case.variant == "gemma3"
    qkv = torch.randn(tokens, (qh + 2 * kh) * d, dtype=dtype, device=device)
    q_weight = (torch.rand(d, device=device) + 0.5).to(dtype)
    k_weight = (torch.rand(d, device=device) + 0.5).to(dtype)
    cache = cos_sin_cache(env, rd, dtype)
    positions = torch.randperm(env.max_position, device=device)[:tokens]
    q_end, k_end = qh * d, (qh + kh) * d

    def parts(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"q": t[:, :q_end], "k": t[:, q_end:k_end], "v": t[:, k_end:]}

    want = parts(upcast(qkv))
    qk_norm_rotary(positions, want["q"], want["k"], upcast(q_weight), upcast(k_weight), upcast(cache), d, EPS, gemma)
    expected = {"q": want["q"], "k": want["k"], "v": parts(qkv)["v"]}
    tolerance = {"q": tol(dtype), "k": tol(dtype), "v": 0.0}

    def inplace(name: str, call: Callable[[Any, Any], Any]) -> Contender:
        copy = qkv.clone()
        views = parts(copy)
        return Contender(name, lambda: call(views["q"], views["k"]), lambda: views, restore([(copy, qkv)]))

    contenders: list[Contender] = []
    op, reason = cujit_or_reason(case.op)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        contenders.append(inplace("cujit", lambda q, k: op(positions, q, k, q_weight, k_weight, cache, head_size=d,
                                                           eps=EPS, gemma=gemma)))
    norm, why_norm = cujit_or_reason("qk_rms_norm")
    rotary, why_rotary = cujit_or_reason("rotary_embedding")
    if norm is None or rotary is None:
        contenders.append(unavailable("cujit unfused", why_norm or why_rotary))
    else:
        def unfused(q: Any, k: Any) -> None:
            norm(q, k, q_weight, k_weight, EPS, gemma=gemma)
            rotary(positions, q, k, cache, head_size=d)

        contenders.append(inplace("cujit unfused", unfused))
    contenders.append(inplace("eager", lambda q, k: qk_norm_rotary(positions, q, k, q_weight, k_weight, cache, d, EPS,
                                                                   gemma)))
    compiled = qkv.clone()
    views = parts(compiled)
    contenders.append(env.compiler.contender(
        case, "ref", lambda p, q, k, qw, kw, c: qk_norm_rotary(p, q, k, qw, kw, c, d, EPS, gemma),
        (positions, views["q"], views["k"], q_weight, k_weight, cache), outputs=lambda: views,
        reset=restore([(compiled, qkv)])))
    return Setup(expected, tolerance, contenders, inplace=True)


FAMILY = Family("qk_norm_rotary", "Per-head RMSNorm of q and k, then rotary embedding: one fused op against the two",
                ("qk_norm_rotary",), qk_norm_rotary_cases, build_qk_norm_rotary, order=16)
