"""Plain torch references of the serving ops.

What torch eager runs, what torch.compile compiles, and (on inputs upcast to float32 or float64) what every
contender's output is checked against.

Each is written the way a model author would write it: fp32 arithmetic, the result rounded once to the storage
dtype, in place where the op is in place. None syncs with the host, so each runs under CUDA-graph capture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "FP8_MAX",
    "FP8_MIN_SCALE",
    "fused_add_rms_norm",
    "gelu_and_mul",
    "per_tensor_quant_fp8",
    "per_token_group_quant_fp8",
    "per_token_quant_fp8",
    "rms_norm",
    "rotary_embedding",
    "rotary_store_kv_cache",
    "silu_and_mul",
    "store_kv_cache",
]

#: The largest finite float8 e4m3 value: quantized values saturate there.
FP8_MAX = 448.0
#: The floor of a dynamic scale (an all-zero row quantizes to zeros with a finite scale).
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
#: Group quantization divides by max(amax, this) / 448.
GROUP_EPS = 1e-10


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dimension, in fp32, rounded to x's dtype."""
    xf = x.to(_compute_dtype(x))
    inv = (xf.square().mean(-1, keepdim=True) + eps).rsqrt()
    return (xf * inv * weight.to(xf.dtype)).to(x.dtype)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In place: ``residual += x`` (rounded to the storage dtype), then ``x = rms_norm(residual) * weight``."""
    total = (x.to(_compute_dtype(x)) + residual.to(_compute_dtype(x))).to(x.dtype)
    residual.copy_(total)
    x.copy_(rms_norm(total, weight, eps))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` in fp32, rounded to x's dtype."""
    import torch

    d = x.shape[-1] // 2
    xf = x.to(_compute_dtype(x))
    return (torch.nn.functional.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)


def gelu_and_mul(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """``gelu(x[..., :d], approximate) * x[..., d:]`` in fp32, rounded to x's dtype."""
    import torch

    d = x.shape[-1] // 2
    xf = x.to(_compute_dtype(x))
    return (torch.nn.functional.gelu(xf[..., :d], approximate=approximate) * xf[..., d:]).to(x.dtype)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_size: int, rotary_dim: int,
            is_neox: bool) -> None:
    """Rotate the first ``rotary_dim`` values of each head of ``t`` [T, heads * head_size] in place."""
    import torch

    tokens = t.shape[0]
    heads = t.view(tokens, -1, head_size)
    part = heads[..., :rotary_dim].to(cos.dtype)
    c, s = cos[:, None, :], sin[:, None, :]
    if is_neox:
        x1, x2 = part[..., : rotary_dim // 2], part[..., rotary_dim // 2:]
        rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    else:
        x1, x2 = part[..., 0::2], part[..., 1::2]
        rotated = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    heads[..., :rotary_dim].copy_(rotated.to(t.dtype))


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                     head_size: int, is_neox: bool = True) -> None:
    """In place on q and k [T, heads * head_size]: rotate by the cos/sin of each token's position.

    ``cos_sin_cache`` [max_position, rotary_dim] holds cos in its first half and sin in its second (vLLM's
    layout); neox style rotates the two halves of the rotary part, GPT-J style the even/odd pairs.
    """
    rows = cos_sin_cache.index_select(0, positions).to(_compute_dtype(q))
    rotary_dim = cos_sin_cache.shape[-1]
    cos, sin = rows[:, : rotary_dim // 2], rows[:, rotary_dim // 2:]
    _rotate(q, cos, sin, head_size, rotary_dim, is_neox)
    _rotate(k, cos, sin, head_size, rotary_dim, is_neox)


def _to_fp8(values: torch.Tensor) -> torch.Tensor:
    import torch

    return values.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def store_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None) -> None:
    """``k_cache[slot_mapping] = k`` and the same for v (caches [slots, heads, head_size]).

    An fp8 cache stores ``k / k_scale`` saturated to +-448 (scales are one-element fp32 tensors); the store goes
    through a byte view, as torch indexes fp8 tensors only on recent versions.
    """
    import torch

    for src, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        if cache.dtype == torch.float8_e4m3fn:
            if scale is None:
                raise ValueError("store_kv_cache: expected a scale tensor for an fp8 cache, got None")
            quantized = _to_fp8(src.to(torch.float32) / scale)
            cache.view(torch.uint8).index_put_((slot_mapping,), quantized.view(torch.uint8))
        else:
            cache.index_put_((slot_mapping,), src.to(cache.dtype))


def rotary_store_kv_cache(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          slot_mapping: torch.Tensor, head_size: int, is_neox: bool = True) -> None:
    """The unfused sequence: ``rotary_embedding`` on q and k in place, then ``store_kv_cache`` of k and v."""
    rotary_embedding(positions, q, k, cos_sin_cache, head_size, is_neox)
    tokens = k.shape[0]
    store_kv_cache(k.view(tokens, -1, head_size), v.view(tokens, -1, head_size), k_cache, v_cache, slot_mapping)


def per_token_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token e4m3: ``scale = max(rowmax|x| / 448, floor)``, ``q = sat(x / scale)``; scales [T, 1]."""
    import torch

    xf = x.to(torch.float32)
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    return _to_fp8(xf / scale), scale


def per_tensor_quant_fp8(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3: a given scale (static), else ``max(max|x| / 448, floor)`` (dynamic); scale [1]."""
    import torch

    xf = x.to(torch.float32)
    if scale is None:
        scale = (xf.abs().amax() / FP8_MAX).clamp(min=FP8_MIN_SCALE).reshape(1)
    return _to_fp8(xf / scale), scale


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group e4m3 (groups of ``group_size`` along the last dimension): ``scale = max(amax, 1e-10) / 448``.

    Returns q [T, H] and row-major scales [T, H / group_size].
    """
    import torch

    tokens, hidden = x.shape
    groups = x.to(torch.float32).view(tokens, hidden // group_size, group_size)
    scale = groups.abs().amax(-1, keepdim=True).clamp(min=GROUP_EPS) / FP8_MAX
    return _to_fp8(groups / scale).view(tokens, hidden), scale.view(tokens, hidden // group_size)
