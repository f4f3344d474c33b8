"""KV-cache store: store_kv_cache of k, v [T, Hkv, D] into bf16 and fp8 caches, against eager and torch.compile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import references as refs
from .case import ITEMSIZE, QUICK_TOKENS, SHORT, TOKENS, Case
from .contenders import (
    REL_TOL,
    Contender,
    Env,
    Family,
    Setup,
    Unavailable,
    bind,
    cujit_or_reason,
    restore,
    torch_dtype,
    unavailable,
)

__all__ = ["FAMILY", "build_kv_cache", "kv_caches", "kv_outputs", "store_kv_bytes"]


def store_kv_bytes(tokens: int, kv_heads: int, head_size: int, itemsize: int, cache_itemsize: int,
                   slot_itemsize: int = 8, scale_bytes: int = 0) -> int:
    """store_kv_cache: read k and v [T, Hkv, D] and slot_mapping, write T rows of each cache (and read scales).

    2*T*Hkv*D*(e + c) + T*s + scales (c bytes per cache element: 2 for bf16, 1 for fp8; s per slot).
    """
    return 2 * tokens * kv_heads * head_size * (itemsize + cache_itemsize) + tokens * slot_itemsize + scale_bytes


def kv_cases(op: str, quick: bool) -> list[Case]:
    """8 kv heads of 128, bf16 k and v, into a bf16 and an fp8 cache, at every token count."""
    tokens = QUICK_TOKENS if quick else TOKENS
    kh, hs = 8, 128
    cases = []
    for cache in ("bfloat16", "float8_e4m3fn"):
        scales = 8 if cache == "float8_e4m3fn" else 0
        for t in tokens:
            nbytes = store_kv_bytes(t, kh, hs, ITEMSIZE["bfloat16"], ITEMSIZE[cache], 8, scales)
            cases.append(Case(op, "bfloat16", t, {"kv_heads": kh, "head_size": hs},
                              f"{kh}x{hs}", nbytes, "2*T*Hkv*D*(e + c) + 8*T" + (" + 8" if scales else ""),
                              f"{SHORT[cache]} cache", {"cache_dtype": cache}))
    return cases


def kv_caches(slots: int, kh: int, hs: int, cache_dtype: Any, device: str) -> tuple[Any, Any]:
    """Random k and v caches [slots, Hkv, D] of cache_dtype."""
    import torch

    shape = (slots, kh, hs)
    return (torch.randn(shape, device=device).to(cache_dtype), torch.randn(shape, device=device).to(cache_dtype))


def kv_outputs(k_cache: Any, v_cache: Any, slots: Any, untouched: Any) -> Callable[[], dict[str, Any]]:
    """The outputs of a store: the rows written at slots, and every other row (which must keep its bytes)."""
    def outputs() -> dict[str, Any]:
        return {"k_rows": k_cache[slots], "v_rows": v_cache[slots], "k_rest": k_cache[untouched],
                "v_rest": v_cache[untouched]}

    return outputs


def build_kv_cache(case: Case, env: Env) -> Setup:
    """store_kv_cache of k, v [T, Hkv, D] into caches [env.num_slots (32768), Hkv, D] at distinct random slots."""
    import torch

    dtype, device = torch_dtype(case.dtype), env.device
    cache_dtype = torch_dtype(case.extra["cache_dtype"])
    tokens, kh, hs = case.tokens, case.params["kv_heads"], case.params["head_size"]
    k = torch.randn(tokens, kh, hs, dtype=dtype, device=device)
    v = torch.randn(tokens, kh, hs, dtype=dtype, device=device)
    slots = torch.randperm(env.num_slots, device=device)[:tokens]
    untouched = torch.ones(env.num_slots, dtype=torch.bool, device=device)
    untouched[slots] = False
    k_init, v_init = kv_caches(env.num_slots, kh, hs, cache_dtype, device)
    fp8 = cache_dtype == torch.float8_e4m3fn
    k_scale = (k.abs().amax().float() / refs.FP8_MAX).reshape(1) if fp8 else None
    v_scale = (v.abs().amax().float() / refs.FP8_MAX).reshape(1) if fp8 else None

    def store(name: str, call: Callable[[Any, Any], Any]) -> Contender:
        kc, vc = k_init.clone(), v_init.clone()
        return Contender(name, lambda: call(kc, vc), kv_outputs(kc, vc, slots, untouched),
                         restore([(kc, k_init), (vc, v_init)]))

    contenders: list[Contender] = []
    op, reason = cujit_or_reason("store_kv_cache")
    cujit_kwargs: dict[str, Any] = {}
    if op is not None:
        values: dict[str, Any] = {"k": k, "v": v, "slot_mapping": slots, "k_cache": None, "v_cache": None}
        if fp8:
            values.update(k_scale=k_scale, v_scale=v_scale, scale=k_scale, kv_scale=k_scale)
        try:
            cujit_kwargs = bind(op, values, "store_kv_cache")
            scales = sorted(name for name in cujit_kwargs if "scale" in name)
            if fp8 and not scales:
                raise Unavailable("not available: store_kv_cache takes no scale for an fp8 cache")
            if fp8 and scales != ["k_scale", "v_scale"] and v_scale is not None and k_scale is not None:
                v_scale = k_scale  # one scale for both caches: the other contenders use it too
        except Unavailable as exc:
            op, reason = None, str(exc)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        def cujit_call(kc: Any, vc: Any) -> Any:
            return op(**{**cujit_kwargs, "k_cache": kc, "v_cache": vc})

        contenders.append(store("cujit", cujit_call))
    want_k, want_v = k_init.clone(), v_init.clone()
    refs.store_kv_cache(k, v, want_k, want_v, slots, k_scale, v_scale)
    expected = kv_outputs(want_k, want_v, slots, untouched)()
    rows_tol = REL_TOL["float8_e4m3fn"] if fp8 else 0.0
    tolerance = {"k_rows": rows_tol, "v_rows": rows_tol, "k_rest": 0.0, "v_rest": 0.0}
    contenders.append(store("eager", lambda kc, vc: refs.store_kv_cache(k, v, kc, vc, slots, k_scale, v_scale)))
    kk, vk = k_init.clone(), v_init.clone()
    args = (k, v, kk, vk, slots, *((k_scale, v_scale) if fp8 else ()))

    def ref(*args: Any) -> None:
        refs.store_kv_cache(*args)

    contenders.append(env.compiler.contender(case, "ref", ref, args, reset=restore([(kk, k_init), (vk, v_init)]),
                                             outputs=kv_outputs(kk, vk, slots, untouched)))
    return Setup(expected, tolerance, contenders)


FAMILY = Family("kv_cache", "KV-cache store", ("store_kv_cache",), kv_cases, build_kv_cache, order=40)
