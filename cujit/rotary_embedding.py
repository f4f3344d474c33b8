"""``rotary_embedding(positions, q, k, cos_sin_cache, *, is_neox=True, rotary_dim=None, head_size=None)``.

Rotary position embedding, in place on ``q`` and ``k`` (kernel: cujit/kernels/rotary.cuh).

- ``q`` [tokens, q_heads * head_size] and ``k`` [tokens, kv_heads * head_size]: fp16, bf16 or fp32, rows at any
  stride (views of a fused qkv tensor work as they are), or 3-D [tokens, heads, head_size] views whose heads are
  contiguous (viewed as 2-D here; a 3-D tensor that cannot be viewed so is refused, never copied).
- ``positions`` [tokens], int32 or int64; ``cos_sin_cache`` [max_position, rotary_dim] in fp32 or q's dtype, cos
  in the first half of a row and sin in the second (vLLM's layout).
- ``is_neox``: rotate halves (x[i], x[i + rotary_dim / 2]) if true, interleaved pairs (x[2i], x[2i + 1]) (gpt-j)
  if false. Only the first ``rotary_dim`` values of each head change (partial rotary when rotary_dim <
  head_size). ``rotary_dim`` defaults to the cache's width and must equal it when given. ``head_size`` is
  required with 2-D q and k (as in vLLM and FlashInfer: a row of heads does not say how wide a head is, and a
  guess would rotate the wrong values when rotary_dim < head_size); 3-D views give it as their last dimension.
- Rounding: each pair (a, b) becomes (a cos - b sin, b cos + a sin), computed in fp32 with a fused multiply-add
  for the second product, and rounded once to q's dtype (round to nearest even).
- Positions outside [0, max_position): the kernel never reads past the cache, and the launch fails (a device-side
  trap, as torch's indexing asserts): ``cujit.device_check()`` or the next synchronising call raises, after which
  the CUDA context is unusable, as after any device-side fault. The check is one compare per token.
"""

from __future__ import annotations

import functools
from typing import Any

import cujit

__all__ = ["STAGED_BYTES", "launch_plan", "rotary_embedding", "rows_for", "staged_form", "staged_plan"]

#: From this many tokens on, one block rotates all heads of a token (cos/sin read once per token, the position's
#: load latency paid once per token); below it, blocks take one row of heads each so that there are enough of them
#: to fill the GPU (1024 blocks of 256 threads are about 1.3 waves on a 132-SM H100 at 5-6 blocks per SM).
WHOLE_TOKEN_BLOCKS = 1024


@functools.lru_cache(maxsize=4096)
def launch_plan(tokens: int, heads: int, rotary_dim: int, head_size: int, itemsize: int,
                is_neox: bool) -> tuple[int, int, int, int]:
    """(vec, block_x, block_y, heads_per_block) for one call.

    vec: values per thread chunk, the widest power of two up to 16 bytes that divides the rotated span (half the
    rotary dim for neox, all of it for gpt-j) and the head size, so that every chunk of every head is one aligned
    vector; gpt-j chunks hold at least one pair. block_x: the chunks of a head (one pass over a head); block_y:
    heads in flight per block (see rows_for).
    """
    span = rotary_dim // 2 if is_neox else rotary_dim
    vec = 16 // itemsize
    while vec > 1 and (span % vec or head_size % vec):
        vec //= 2
    if not is_neox:
        vec = max(vec, 2)  # an odd head size then takes the kernel's element-wise path
    block_x = max(1, min(span // vec, 256))
    block_y = rows_for(heads, block_x)
    heads_per_block = heads if tokens >= WHOLE_TOKEN_BLOCKS else block_y
    return vec, block_x, block_y, max(heads_per_block, 1)


def rows_for(heads: int, block_x: int) -> int:
    """Rows of heads per block (threadIdx.y) for blocks of 256, 128 or 64 threads.

    The one that leaves the fewest rows idle on the last pass over ``heads`` (80 heads: 16 rows, five passes, none
    idle, where 32 rows would idle half the block on the third), the widest on a tie.
    """
    candidates = [max(1, min(threads // block_x, heads)) for threads in (256, 128, 64)]
    return min(candidates, key=lambda rows: (-(-heads // rows) * rows, -rows))


#: The staged form's shared memory a block may take for its heads' runs (rotary.cuh, kStaged): a few tokens' worth
#: of heads for blocks of 256 threads, so that eight such blocks (a full SM) fit in 228 KB with room to spare.
STAGED_BYTES = 24 * 1024
#: Shared memory the staged form adds to its runs: up to 15 bytes before q's run, before k's and between them, so
#: that each run keeps its global address's offset within 16 bytes.
STAGED_SLACK = 48
STAGED_THREADS = 256


def staged_form(vec: int, itemsize: int, head_size: int, vector_ok: bool) -> bool:
    """Whether a call takes the staged form (rotary.cuh, kStaged).

    It does where the chunks would be narrower than 8 bytes, or the pointers, strides or head size do not allow
    them (``vector_ok`` false), and a head fits the staged form's shared memory.
    """
    return (vec * itemsize < 8 or not vector_ok or head_size % vec != 0) and head_size * itemsize <= STAGED_BYTES


@functools.lru_cache(maxsize=4096)
def staged_plan(tokens: int, heads: int, head_size: int, itemsize: int) -> tuple[int, int]:
    """(heads_per_block, shared-memory bytes) of the staged form.

    As few groups of heads as fit STAGED_BYTES; below WHOLE_TOKEN_BLOCKS tokens, more groups (down to one head a
    block) so that the grid has about WHOLE_TOKEN_BLOCKS blocks.
    """
    groups = -(-heads * head_size * itemsize // STAGED_BYTES)
    if tokens < WHOLE_TOKEN_BLOCKS:
        groups = max(groups, -(-WHOLE_TOKEN_BLOCKS // max(tokens, 1)))
    per_block = -(-heads // min(max(groups, 1), heads))
    return per_block, per_block * head_size * itemsize + STAGED_SLACK


def _plan(T: int, QW: int, QS: int, KW: int, KS: int, R: int, D: int, dtype: cujit.DType, is_neox: bool,
          aligned_16: bool, aligned_8: bool) -> tuple[int, ...]:
    """(vec, block_x, block_y, heads_per_block, q_heads, k_heads, shared bytes, staged).

    ``aligned_16`` / ``aligned_8``: whether q and k both start at a multiple of 16 / 8 bytes.
    """
    if D <= 0 or R <= 0:  # refused by the checks below; any plan will do until then
        return 1, 1, 1, 1, 0, 0, 0, False
    q_heads, k_heads = QW // D, KW // D
    vec, bx, by, per_block = launch_plan(T, q_heads + k_heads, R, D, dtype.itemsize, is_neox)
    nbytes = vec * dtype.itemsize
    vector_ok = (aligned_16 if nbytes == 16 else aligned_8 if nbytes == 8 else True) and (
        T <= 1 or (QS % vec == 0 and KS % vec == 0))
    if staged_form(vec, dtype.itemsize, D, vector_ok):
        per_block, smem = staged_plan(T, q_heads + k_heads, D, dtype.itemsize)
        return 1, STAGED_THREADS, 1, per_block, q_heads, k_heads, smem, True
    return vec, bx, by, per_block, q_heads, k_heads, 0, False


T, QW, QS, KW, KS, P, R = (cujit.SymbolicSize(n) for n in ("T", "QW", "QS", "KW", "KS", "P", "R"))
dtype, pos_dtype, cs_dtype = cujit.SymbolicDType("dtype"), cujit.SymbolicDType("pos_dtype"), cujit.SymbolicDType(
    "cs_dtype")
FLOATS = ("float16", "bfloat16", "float32")

_rotary_embedding = cujit.op(
    "cujit::rotary_embedding(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor cos_sin_cache, *, "
    "bool is_neox=True, int? rotary_dim=None, int? head_size=None) -> ()",
    source="kernels/rotary.cuh",
    kernel="rotary_embedding_kernel<{dtype}, {cs_dtype}, {pos_dtype}, {is_neox}, {vec}, {staged}>",
    tensors={
        "positions": cujit.TensorMatcher([T]).with_dtype("int32", "int64", symbol=pos_dtype),
        "q": cujit.TensorMatcher([T, QW]).with_strides([QS, 1]).with_dtype(*FLOATS, symbol=dtype),
        "k": cujit.TensorMatcher([T, KW]).with_strides([KS, 1]).with_dtype(*FLOATS, symbol=dtype),
        "cos_sin_cache": cujit.TensorMatcher([P, R]).with_dtype(*FLOATS, symbol=cs_dtype),
    },
    values={
        "D": "R if head_size is None else head_size",  # refused by the first check when None
        "aligned_16": "aligned(q, 16) and aligned(k, 16)",
        "aligned_8": "aligned(q, 8) and aligned(k, 8)",
        "plan": _plan,
        "vec": "plan[0]",
        "staged": "plan[7]",
        "q_heads": "plan[4]",
        "k_heads": "plan[5]",
        "heads_per_block": "plan[3]",
    },
    checks=[
        ("head_size is not None", "head_size: expected the head size for 2-D q and k [tokens, heads * head_size]"),
        ("rotary_dim is None or rotary_dim == R", "rotary_dim: expected the width of cos_sin_cache"),
        ("R > 0 and R % 2 == 0", "cos_sin_cache: expected an even, non-zero number of columns (the rotary dim)"),
        ("D >= R", "head_size: expected at least the rotary dim"),
        ("QW % D == 0 and KW % D == 0", "q and k: expected rows of whole heads (widths multiples of head_size)"),
        ("cs_dtype == 'float32' or cs_dtype == dtype", "cos_sin_cache: expected float32 or the dtype of q and k"),
        ("T == 0 or P > 0", "cos_sin_cache: expected at least one row"),
        ("T < 2 or (QS >= QW and KS >= KW)", "q and k: expected rows that do not overlap (row stride >= width)"),
        ("T < 2**31 and q_heads + k_heads < 2**31", "q and k: expected fewer than 2**31 tokens and heads"),
    ],
    grid=("T", "cdiv(q_heads + k_heads, heads_per_block)"),
    block=("plan[1]", "plan[2]"),
    shared_mem="plan[6]",
    args=("positions", "q", "k", "cos_sin_cache", "QS", "KS", "q_heads", "k_heads", "D", "R", "P",
          "heads_per_block"),
    precompile=[
        {"dtype": d, "cs_dtype": c, "pos_dtype": "int64", "is_neox": neox, "vec": 8, "staged": False}
        for d, c, neox in (("bfloat16", "float32", True), ("bfloat16", "float32", False),
                           ("bfloat16", "bfloat16", True), ("float16", "float32", True), ("float16", "float16", True))
    ] + [
        {"dtype": d, "cs_dtype": "float32", "pos_dtype": "int64", "is_neox": neox, "vec": 1, "staged": True}
        for d in FLOATS for neox in (True, False)
    ],
)


def _as_rows(x: Any, name: str) -> Any:
    """A [tokens, heads, head_size] view as the [tokens, heads * head_size] view of the same memory."""
    shape, strides = tuple(x.shape), _element_strides(x)
    if strides[2] != 1 or (shape[1] > 1 and strides[1] != shape[2]):
        raise cujit.TensorMatchError(
            f"rotary_embedding: {name}: expected a 3-D view whose heads are contiguous (strides [row, head_size, "
            f"1]), got shape {list(shape)} and strides {list(strides)}")
    return x.reshape(shape[0], shape[1] * shape[2])  # a view: the layout was checked above


def _element_strides(x: Any) -> tuple[int, ...]:
    strides = x.stride() if callable(getattr(x, "stride", None)) else x.strides
    if not callable(getattr(x, "stride", None)):  # CuPy and NumPy give bytes
        strides = tuple(s // x.itemsize for s in strides)
    return tuple(strides)


def rotary_embedding(positions: Any, q: Any, k: Any, cos_sin_cache: Any, *, is_neox: bool = True,
                     rotary_dim: int | None = None, head_size: int | None = None) -> None:
    """Rotate ``q`` and ``k`` in place by the angles of ``positions``; see the module's docstring.

    Raises:
        TensorMatchError: a tensor has the wrong dtype, shape, layout or device; nothing is launched.
        CujitError: inconsistent sizes (rotary dim, head size, widths); nothing is launched.
    """
    if q.ndim == 3 or k.ndim == 3:
        sizes = {int(x.shape[2]) for x in (q, k) if x.ndim == 3} | ({head_size} if head_size is not None else set())
        if len(sizes) != 1:
            raise cujit.CujitError(f"rotary_embedding: head_size: expected one head size for q, k and head_size, "
                                   f"got {sorted(sizes)}")
        head_size = sizes.pop()
        q = _as_rows(q, "q") if q.ndim == 3 else q
        k = _as_rows(k, "k") if k.ndim == 3 else k
    _rotary_embedding(positions, q, k, cos_sin_cache, is_neox=is_neox, rotary_dim=rotary_dim, head_size=head_size)


rotary_embedding.op = _rotary_embedding.op  # type: ignore[attr-defined]
