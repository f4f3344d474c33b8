"""Per-head RMSNorm of q and k in place (qk_rms_norm), on the q and k slices of a fused qkv tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import flashinfer, quack
from .. import references as refs
from .case import HEADLINE_TOKENS, ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import (
    EPS,
    Contender,
    Env,
    Family,
    Setup,
    adapter_or_reason,
    cujit_or_reason,
    restore,
    tol,
    torch_dtype,
    unavailable,
    upcast,
)

if TYPE_CHECKING:
    import torch

__all__ = ["FAMILY", "QK_HEADS", "build_qk_norm", "qk_rms_norm", "qk_rms_norm_bytes"]

#: (q heads, kv heads, head_dim) of the rows: Qwen3-8B, then Qwen3-235B-A22B.
QK_HEADS = ((32, 8, 128), (64, 4, 128))


def qk_rms_norm_bytes(tokens: int, q_heads: int, kv_heads: int, head_dim: int, itemsize: int) -> int:
    """qk_rms_norm, in place: read and write q and k, read both weights: 2*T*(Hq + Hkv)*D*e + 2*D*e."""
    return 2 * tokens * (q_heads + kv_heads) * head_dim * itemsize + 2 * head_dim * itemsize


def qk_norm_cases(op: str, quick: bool) -> list[Case]:
    """bf16, 32 q and 8 kv heads of 128 at every token count; 64 q and 4 kv heads at the headline shape."""
    tokens = QUICK_TOKENS if quick else TOKENS
    shapes = [(t, *QK_HEADS[0]) for t in tokens]
    if not quick:
        shapes += [(HEADLINE_TOKENS, *heads) for heads in QK_HEADS[1:]]
    e = ITEMSIZE["bfloat16"]
    return [Case(op, "bfloat16", t, {"q_heads": qh, "kv_heads": kh, "head_dim": d}, f"{qh}q{kh}kv{d}",
                 qk_rms_norm_bytes(t, qh, kh, d, e), "2*T*(Hq+Hkv)*D*e + 2*D*e") for t, qh, kh, d in shapes]


def qk_rms_norm(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                eps: float) -> None:
    """In place: each head of q [T, Hq*D] and k [T, Hkv*D] becomes rms_norm(head) * weight."""
    d = q_weight.shape[0]
    q.copy_(refs.rms_norm(q.unflatten(1, (-1, d)), q_weight, eps).flatten(1))
    k.copy_(refs.rms_norm(k.unflatten(1, (-1, d)), k_weight, eps).flatten(1))


def build_qk_norm(case: Case, env: Env) -> Setup:
    """qk_rms_norm on the q and k column slices of qkv [T, (Hq + 2*Hkv)*D]; v, the rest, must keep its bytes."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    tokens, qh, kh, d = (case.tokens, *(case.params[k] for k in ("q_heads", "kv_heads", "head_dim")))
    qkv = torch.randn(tokens, (qh + 2 * kh) * d, dtype=dtype, device=device)
    q_weight = (torch.rand(d, device=device) + 0.5).to(dtype)
    k_weight = (torch.rand(d, device=device) + 0.5).to(dtype)
    q_end, k_end = qh * d, (qh + kh) * d

    def parts(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"q": t[:, :q_end], "k": t[:, q_end:k_end], "v": t[:, k_end:]}

    want = parts(upcast(qkv))
    qk_rms_norm(want["q"], want["k"], upcast(q_weight), upcast(k_weight), EPS)
    expected = {"q": want["q"], "k": want["k"], "v": parts(qkv)["v"]}
    tolerance = {"q": tol(dtype), "k": tol(dtype), "v": 0.0}

    def inplace(name: str, call: Callable[[Any, Any], Any], **extra: Any) -> Contender:
        copy = qkv.clone()
        views = parts(copy)
        return Contender(name, lambda: call(views["q"], views["k"]), lambda: views, restore([(copy, qkv)]), **extra)

    contenders: list[Contender] = []
    op, reason = cujit_or_reason(case.op)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        contenders.append(inplace("cujit", lambda q, k: op(q, k, q_weight, k_weight, EPS)))
    contenders.append(inplace("eager", lambda q, k: qk_rms_norm(q, k, q_weight, k_weight, EPS)))
    compiled = qkv.clone()
    views = parts(compiled)
    contenders.append(env.compiler.contender(
        case, "ref", lambda q, k, qw, kw: qk_rms_norm(q, k, qw, kw, EPS), (views["q"], views["k"], q_weight, k_weight),
        outputs=lambda: views, reset=restore([(compiled, qkv)])))
    contenders += _peers(case, inplace, q_weight, k_weight)
    return Setup(expected, tolerance, contenders, inplace=True)


def _peers(case: Case, inplace: Callable[..., Contender], q_weight: torch.Tensor,
           k_weight: torch.Tensor) -> list[Contender]:
    """QuACK's and FlashInfer's per-head RMSNorm, in place on the same views (each adapter says how)."""
    qh, kh, d = (case.params[k] for k in ("q_heads", "kv_heads", "head_dim"))
    found: list[Contender] = []
    qk, why = adapter_or_reason(lambda: quack.qk_rms_norm(EPS, q_weight, k_weight, qh, kh))
    if qk is None:
        found.append(unavailable("quack", why))
    else:
        extra = (qh + kh - 2) * d * q_weight.element_size()
        found.append(inplace("quack", qk, nbytes=case.nbytes + extra,
                             note="weights repeated per head ([H, D], made once untimed); q and k in two calls"))
    fi, why = adapter_or_reason(lambda: flashinfer.qk_rms_norm(EPS, q_weight.dtype, q_weight.device, d))
    if fi is None:
        found.append(unavailable("flashinfer", why))
    else:
        found.append(inplace("flashinfer", lambda q, k: fi(q, k, q_weight, k_weight), note="q and k in two calls"))
    return found


FAMILY = Family("qk_norm", "Per-head RMSNorm of q and k (in place on the slices of qkv)", ("qk_rms_norm",),
                qk_norm_cases, build_qk_norm, order=15)
