"""Rotary + KV-cache store in one op (rotary_embedding_with_kv_cache) against cujit's two ops in sequence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import references as refs
from .case import ITEMSIZE, QUICK_TOKENS, TOKENS, Case
from .contenders import Contender, Env, Family, Setup, accepts, cujit_or_reason, restore, tol, unavailable, upcast
from .kv_cache import kv_caches, kv_outputs
from .rotary import rotary_inputs

__all__ = ["FAMILY", "build_fused", "fused_rotary_store_bytes"]


def fused_rotary_store_bytes(tokens: int, q_heads: int, kv_heads: int, head_size: int, rotary_dim: int,
                             itemsize: int, cache_itemsize: int, cos_itemsize: int, pos_itemsize: int,
                             slot_itemsize: int = 8) -> int:
    """Rotary + KV store in one pass: what the pair must move at the least.

    Read + write the rotated part of q; read k and v once; write k (rotated) and v into the caches; read positions,
    slots and T cos/sin rows: 2*T*Hq*R*e + 2*T*Hkv*D*(e + c) + T*R*cs + T*(p + s). Writing the rotated k back to
    k is not needed (the cache holds it); the unfused sequence does, and is measured against the same count.
    """
    q = 2 * tokens * q_heads * rotary_dim * itemsize
    kv = 2 * tokens * kv_heads * head_size * (itemsize + cache_itemsize)
    return q + kv + tokens * rotary_dim * cos_itemsize + tokens * (pos_itemsize + slot_itemsize)


def fused_cases(op: str, quick: bool) -> list[Case]:
    """32 q and 8 kv heads of 128, bf16 caches, every token count."""
    tokens = QUICK_TOKENS if quick else TOKENS
    qh, kh, hs = 32, 8, 128
    e = ITEMSIZE["bfloat16"]
    return [Case(op, "bfloat16", t,
                 {"q_heads": qh, "kv_heads": kh, "head_size": hs, "rotary_dim": hs}, f"{qh}q{kh}kv{hs}",
                 fused_rotary_store_bytes(t, qh, kh, hs, hs, e, e, e, 8, 8),
                 "2*T*Hq*R*e + 2*T*Hkv*D*(e + c) + T*R*e + 16*T", "neox") for t in tokens]


def build_fused(case: Case, env: Env) -> Setup:
    """rotary_embedding_with_kv_cache: cujit's fused op, cujit's two ops in sequence, and the unfused reference.

    q [T, Hq, D], k and v [T, Hkv, D] (3-D views of [T, H*D] tensors), caches [env.num_slots, Hkv, D] in q's
    dtype. The fused op rotates q in place and writes the rotated k and v into the caches without writing k back; the
    unfused sequence also rotates k in place. All are measured against the bytes the fused op must move.
    """
    import torch

    inputs = rotary_inputs(case, env)
    positions, cache, hs = inputs["positions"], inputs["cos_sin_cache"], inputs["head_size"]
    q, k = inputs["q"], inputs["k"]
    tokens, kh = case.tokens, inputs["kh"]
    v = torch.randn_like(k)
    slots = torch.randperm(env.num_slots, device=env.device)[:tokens]
    untouched = torch.ones(env.num_slots, dtype=torch.bool, device=env.device)
    untouched[slots] = False
    k_init, v_init = kv_caches(env.num_slots, kh, hs, q.dtype, env.device)
    want_q, want_k = upcast(q), upcast(k)
    want_kc, want_vc = upcast(k_init), upcast(v_init)
    refs.rotary_store_kv_cache(positions, want_q, want_k, upcast(v), upcast(cache), want_kc, want_vc, slots, hs)
    # v is stored as it is, and the slots not in slot_mapping keep their bytes: both compared bit for bit.
    expected = {"q": want_q, "k_rows": want_kc[slots], "v_rows": v.view(tokens, kh, hs),
                "k_rest": k_init[untouched], "v_rest": v_init[untouched]}
    bound = tol(q.dtype)
    tolerance = {"q": bound, "k_rows": bound, "v_rows": 0.0, "k_rest": 0.0, "v_rest": 0.0}

    def fused(name: str, call: Callable[[Any, Any, Any, Any], Any]) -> Contender:
        qc, kc, kcache, vcache = q.clone(), k.clone(), k_init.clone(), v_init.clone()

        def outputs() -> dict[str, Any]:
            return {"q": qc, **kv_outputs(kcache, vcache, slots, untouched)()}

        return Contender(name, lambda: call(qc, kc, kcache, vcache), outputs,
                         restore([(qc, q), (kc, k), (kcache, k_init), (vcache, v_init)]))

    qh = inputs["qh"]
    contenders: list[Contender] = []
    op, reason = cujit_or_reason("rotary_embedding_with_kv_cache")
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        def fused_call(qc: Any, kc: Any, kcache: Any, vcache: Any) -> Any:
            return op(positions, qc.view(tokens, qh, hs), kc.view(tokens, kh, hs), v.view(tokens, kh, hs), cache,
                      kcache, vcache, slots, is_neox=True)

        contenders.append(fused("cujit", fused_call))
    rotary, why_rotary = cujit_or_reason("rotary_embedding")
    store, why_store = cujit_or_reason("store_kv_cache")
    if rotary is None or store is None:
        contenders.append(unavailable("cujit unfused", why_rotary or why_store))
    else:
        extra: dict[str, Any] = {"head_size": hs} if accepts(rotary, "head_size") else {}

        def unfused(qc: Any, kc: Any, kcache: Any, vcache: Any) -> None:
            rotary(positions, qc, kc, cache, is_neox=True, **extra)
            store(kc.view(tokens, kh, hs), v.view(tokens, kh, hs), kcache, vcache, slots)

        contenders.append(fused("cujit unfused", unfused))

    def eager(qc: Any, kc: Any, kcache: Any, vcache: Any) -> None:
        refs.rotary_store_kv_cache(positions, qc, kc, v, cache, kcache, vcache, slots, hs)

    contenders.append(fused("eager", eager))
    qk, kk, kck, vck = q.clone(), k.clone(), k_init.clone(), v_init.clone()

    def compiled_outputs() -> dict[str, Any]:
        return {"q": qk, **kv_outputs(kck, vck, slots, untouched)()}

    contenders.append(env.compiler.contender(
        case, "ref", lambda p, q, k, v, c, kc, vc, s: refs.rotary_store_kv_cache(p, q, k, v, c, kc, vc, s, hs),
        (positions, qk, kk, v, cache, kck, vck, slots), outputs=compiled_outputs,
        reset=restore([(qk, q), (kk, k), (kck, k_init), (vck, v_init)])))
    return Setup(expected, tolerance, contenders, inplace=True)


FAMILY = Family("fused", "Rotary + KV-cache store: one fused op against the unfused sequence",
                ("rotary_embedding_with_kv_cache",), fused_cases, build_fused, order=60)
