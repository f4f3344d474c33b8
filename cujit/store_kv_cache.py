"""``store_kv_cache(k, v, k_cache, v_cache, slot_mapping, *, k_scale=None, v_scale=None)``.

Write each token's k and v rows into the KV cache at the token's slot (kernel: cujit/kernels/kv_cache.cuh).

- ``k``, ``v`` [tokens, kv_heads, head_size]: fp16, bf16 or fp32, any token stride, heads contiguous.
- ``k_cache``, ``v_cache``: contiguous [num_slots, kv_heads, head_size], or paged [num_blocks, block_size, kv_heads,
  head_size] (any number of leading dimensions: slot = block * block_size + offset is the flat index over them),
  in k's dtype or float8_e4m3fn.
- ``slot_mapping`` [tokens], int32 or int64. A negative slot skips the token (padding). Two tokens with the same
  slot: every value of the slot's row comes from one of them, which one is not defined (refusing repeats would
  need a sort or a device-wide pass). A slot >= num_slots writes nothing and fails the launch (a device-side
  trap, as torch's indexing asserts; the next synchronising call raises).
- fp8 cache: ``k_scale`` and ``v_scale`` are device float32 tensors [1], read by the kernel (no host sync); the
  stored value is ``(x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`` bit for bit: an IEEE division
  (not a multiplication by the reciprocal), rounded to nearest even, saturating; NaN stays NaN. A cache in k's
  dtype takes no scales.
"""

from __future__ import annotations

import functools

import cujit

__all__ = ["ONE_TOKEN_BLOCKS", "launch_plan", "store_kv_cache"]


#: Up to this many tokens a block takes one token (a block of `group` threads); beyond, 256 // group tokens. A few
#: tokens in blocks of 256 threads would leave most SMs idle while a few move every byte: 16 tokens of 8 heads of
#: 128 (bf16) are four blocks that each read and write 16 KB, where blocks of one token spread the same bytes over
#: sixteen SMs. Up to 512 tokens that is at most 512 blocks, all resident at once (an H100 SM holds 32 blocks).
ONE_TOKEN_BLOCKS = 512


@functools.lru_cache(maxsize=1024)
def launch_plan(row: int, itemsize: int) -> tuple[int, int]:
    """(vec, group) for rows of ``row`` values of ``itemsize`` bytes.

    vec: values per thread chunk, the widest power of two up to 16 bytes that divides the row (every chunk one
    aligned vector). group: threads per token, a power of two from 32 to 256, the smallest that covers the row with
    two chunks of k and two of v per thread (the kernel's batch), so that each thread has four 16-byte loads in
    flight and a 256-thread block holds 256 / group tokens (one token a block up to ONE_TOKEN_BLOCKS tokens).
    """
    vec = 16 // itemsize
    while vec > 1 and row % vec:
        vec //= 2
    chunks = row // vec
    group = 32
    while group < 256 and group * 2 < chunks:
        group *= 2
    return vec, group


T, H, D, KS, VS = (cujit.SymbolicSize(n) for n in ("T", "H", "D", "KS", "VS"))
S = cujit.SymbolicShape("S")
dtype, cache_dtype, slot_dtype = (cujit.SymbolicDType(n) for n in ("dtype", "cache_dtype", "slot_dtype"))
FLOATS = ("float16", "bfloat16", "float32")
cache = cujit.TensorMatcher([S, H, D]).with_dtype(*FLOATS, "float8_e4m3fn", symbol=cache_dtype)
scale = cujit.TensorMatcher([1]).with_dtype("float32")

store_kv_cache = cujit.op(
    "cujit::store_kv_cache(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping, *, "
    "Tensor? k_scale=None, Tensor? v_scale=None) -> ()",
    source="kernels/kv_cache.cuh",
    kernel="store_kv_cache_kernel<{dtype}, {cache_dtype}, {slot_dtype}, {vec}, {group}>",
    tensors={
        "k": cujit.TensorMatcher([T, H, D]).with_strides([KS, D, 1]).with_dtype(*FLOATS, symbol=dtype),
        "v": cujit.TensorMatcher([T, H, D]).with_strides([VS, D, 1]).with_dtype(*FLOATS, symbol=dtype),
        "k_cache": cache,
        "v_cache": cache,
        "slot_mapping": cujit.TensorMatcher([T]).with_dtype("int32", "int64", symbol=slot_dtype),
        "k_scale": scale,
        "v_scale": scale,
    },
    values={"row": "H * D", "num_slots": "prod(S)", "plan": (launch_plan, "max(row, 1)", "dtype.itemsize"),
            "vec": "plan[0]", "group": "plan[1]", "block": f"group if T <= {ONE_TOKEN_BLOCKS} else 256"},
    checks=[
        ("cache_dtype == 'float8_e4m3fn' or cache_dtype == dtype",
         "k_cache and v_cache: expected the dtype of k and v, or float8_e4m3fn"),
        ("cache_dtype != 'float8_e4m3fn' or (k_scale is not None and v_scale is not None)",
         "k_scale and v_scale: expected both for an fp8 cache"),
        ("cache_dtype == 'float8_e4m3fn' or (k_scale is None and v_scale is None)",
         "k_scale and v_scale: expected none for a cache that is not fp8"),
        ("T < 2**31 and row < 2**31", "k and v: expected fewer than 2**31 tokens and values per token"),
    ],
    grid="cdiv(T, block // group)",
    block="block",
    args=("k", "v", "k_cache", "v_cache", "slot_mapping", "k_scale", "v_scale", "KS", "VS", "row", "num_slots", "T"),
    precompile=[
        {"dtype": d, "cache_dtype": c, "slot_dtype": "int64", "vec": 8, "group": 64}
        for d in ("bfloat16", "float16") for c in (d, "float8_e4m3fn")
    ],
)
