"""Rotary embedding fused with the KV-cache store: ``rotary_embedding_with_kv_cache``.

``rotary_embedding_with_kv_cache(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, *,
is_neox=True, k_scale=None, v_scale=None)``, one kernel (cujit/kernels/rotary_kv_cache.cuh): ``q`` is
rotated in place; ``k`` is rotated into ``k_cache`` and ``v`` copied into ``v_cache`` at each token's slot. ``k``
itself is not written (attention reads the keys from the cache). The cache contents and q are bit for bit those of
``rotary_embedding(positions, q, k, ...)`` followed by ``store_kv_cache(k, v, ...)``, with one launch and one
pass over k instead of two.

- ``q`` [tokens, q_heads, head_size], ``k`` and ``v`` [tokens, kv_heads, head_size]: fp16, bf16 or fp32, any token
  stride, heads contiguous (3-D views of a fused qkv tensor work as they are).
- ``cos_sin_cache`` [max_position, rotary_dim], fp32 or q's dtype, cos then sin; rotary_dim <= head_size.
- Caches and slots as ``store_kv_cache`` takes them: [num_slots or num_blocks, block_size, ..., kv_heads,
  head_size] contiguous, in k's dtype or float8_e4m3fn with device float32 scales [1]; a negative slot skips the
  token's cache writes (q is still rotated).
- Each (dtype, cache dtypes, head size, rotary dim, style) is its own instantiation, compiled on first use, with
  every loop bound a compile-time constant.
- Positions outside the cache and slots >= num_slots fail the launch as in the unfused ops (a device-side trap).
"""

from __future__ import annotations

import functools

import cujit

from .rotary_embedding import rows_for

__all__ = ["launch_plan", "rotary_embedding_with_kv_cache"]

#: From this many tokens on, one block handles all the heads of a token (see cujit/rotary_embedding.py).
WHOLE_TOKEN_BLOCKS = 1024


@functools.lru_cache(maxsize=1024)
def launch_plan(tokens: int, units: int, rotary_dim: int, head_size: int, itemsize: int,
                is_neox: bool) -> tuple[int, int, int]:
    """(block_x, block_y, units_per_block); units are q's heads, k's heads and v's heads of one token.

    block_x is the kernel's compile-time chunk count (at most 256): the rotated span (half the rotary dim for neox,
    all of it for gpt-j) over the widest vector, up to 16 bytes, that divides it and the head size (the kernel's
    ``widest``).
    """
    span = rotary_dim // 2 if is_neox else rotary_dim
    vec = 16 // itemsize
    while vec > 1 and (span % vec or head_size % vec):
        vec //= 2
    block_x = max(1, min(span // vec, 256))  # wider spans loop in the kernel
    block_y = rows_for(units, block_x)
    per_block = units if tokens >= WHOLE_TOKEN_BLOCKS else block_y
    return block_x, block_y, max(per_block, 1)


def _plan(T: int, HQ: int, HK: int, R: int, D: int, dtype: cujit.DType, is_neox: bool) -> tuple[int, int, int]:
    if R <= 0 or D <= 0:  # refused by the checks
        return 1, 1, 1
    return launch_plan(T, HQ + 2 * HK, R, D, dtype.itemsize, is_neox)


T, HQ, HK, D, P, R, QS, KS, VS = (cujit.SymbolicSize(n) for n in ("T", "HQ", "HK", "D", "P", "R", "QS", "KS", "VS"))
S = cujit.SymbolicShape("S")
dtype, cs_dtype, cache_dtype = (cujit.SymbolicDType(n) for n in ("dtype", "cs_dtype", "cache_dtype"))
pos_dtype, slot_dtype = cujit.SymbolicDType("pos_dtype"), cujit.SymbolicDType("slot_dtype")
FLOATS = ("float16", "bfloat16", "float32")
cache = cujit.TensorMatcher([S, HK, D]).with_dtype(*FLOATS, "float8_e4m3fn", symbol=cache_dtype)
scale = cujit.TensorMatcher([1]).with_dtype("float32")

rotary_embedding_with_kv_cache = cujit.op(
    "cujit::rotary_embedding_with_kv_cache(Tensor positions, Tensor(a!) q, Tensor k, Tensor v, "
    "Tensor cos_sin_cache, Tensor(b!) k_cache, Tensor(c!) v_cache, Tensor slot_mapping, *, bool is_neox=True, "
    "Tensor? k_scale=None, Tensor? v_scale=None) -> ()",
    source="kernels/rotary_kv_cache.cuh",
    kernel="rotary_embedding_with_kv_cache_kernel<{dtype}, {cs_dtype}, {cache_dtype}, {pos_dtype}, {slot_dtype}, "
           "{is_neox}, {D}, {R}>",
    tensors={
        "positions": cujit.TensorMatcher([T]).with_dtype("int32", "int64", symbol=pos_dtype),
        "q": cujit.TensorMatcher([T, HQ, D]).with_strides([QS, D, 1]).with_dtype(*FLOATS, symbol=dtype),
        "k": cujit.TensorMatcher([T, HK, D]).with_strides([KS, D, 1]).with_dtype(*FLOATS, symbol=dtype),
        "v": cujit.TensorMatcher([T, HK, D]).with_strides([VS, D, 1]).with_dtype(*FLOATS, symbol=dtype),
        "cos_sin_cache": cujit.TensorMatcher([P, R]).with_dtype(*FLOATS, symbol=cs_dtype),
        "k_cache": cache,
        "v_cache": cache,
        "slot_mapping": cujit.TensorMatcher([T]).with_dtype("int32", "int64", symbol=slot_dtype),
        "k_scale": scale,
        "v_scale": scale,
    },
    values={"plan": _plan, "units_per_block": "plan[2]", "num_slots": "prod(S)"},
    checks=[
        ("R > 0 and R % 2 == 0 and R <= D",
         "cos_sin_cache: expected an even, non-zero number of columns (the rotary dim) of at most head_size"),
        ("is_neox or D % 2 == 0", "q, k and v: expected an even head_size for gpt-j style"),
        ("cs_dtype == 'float32' or cs_dtype == dtype", "cos_sin_cache: expected float32 or the dtype of q and k"),
        ("cache_dtype == 'float8_e4m3fn' or cache_dtype == dtype",
         "k_cache and v_cache: expected the dtype of k and v, or float8_e4m3fn"),
        ("cache_dtype != 'float8_e4m3fn' or (k_scale is not None and v_scale is not None)",
         "k_scale and v_scale: expected both for an fp8 cache"),
        ("cache_dtype == 'float8_e4m3fn' or (k_scale is None and v_scale is None)",
         "k_scale and v_scale: expected none for a cache that is not fp8"),
        ("T == 0 or P > 0", "cos_sin_cache: expected at least one row"),
        ("T < 2**31 and HQ + 2 * HK < 2**31", "q, k and v: expected fewer than 2**31 tokens and heads"),
    ],
    grid=("T", "cdiv(HQ + 2 * HK, units_per_block)"),
    block=("plan[0]", "plan[1]"),
    args=("positions", "q", "k", "v", "cos_sin_cache", "k_cache", "v_cache", "slot_mapping", "k_scale", "v_scale",
          "QS", "KS", "VS", "HQ", "HK", "P", "num_slots", "units_per_block"),
    precompile=[
        {"dtype": d, "cs_dtype": c, "cache_dtype": kc, "pos_dtype": "int64", "slot_dtype": "int64", "is_neox": neox,
         "D": hd, "R": hd}
        for d, c, kc, neox, hd in (
            ("bfloat16", "float32", "bfloat16", True, 128), ("bfloat16", "float32", "float8_e4m3fn", True, 128),
            ("bfloat16", "bfloat16", "bfloat16", True, 128), ("bfloat16", "float32", "bfloat16", True, 64),
        )
    ],
)
