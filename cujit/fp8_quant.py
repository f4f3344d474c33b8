"""FP8 (e4m3) quantization of activations: per token, per tensor and per group of a token's values.

Kernels: cujit/kernels/fp8_quant.cuh. Each op is declared in the module of its name (cujit/per_token_quant_fp8.py,
...), from the rule, matchers and launch plans of this module, and is importable from here as well.

- ``per_token_quant_fp8(x, *, scale_ub=None) -> (q, scales)``: dynamic, scales [tokens, 1].
- ``per_tensor_quant_fp8(x, scale=None) -> (q, scale)``: static with ``scale`` (a device float32 tensor [1],
  returned as a copy), dynamic without (a max over the whole tensor, computed on the device: no host sync).
- ``per_token_group_quant_fp8(x, group_size=128, *, column_major_scales=False) -> (q, scales)``: dynamic, scales
  [tokens, hidden / group_size], row-major, or column-major (strides (1, tokens): the layout DeepGEMM-style GEMMs
  read).

``x`` is [tokens, hidden] in fp16, bf16 or fp32 with rows at any stride; ``q`` is a new contiguous
float8_e4m3fn tensor (or ``out``). Rule, bit for bit the torch expression (true IEEE divisions, round to nearest
even)::

    amax  = x.abs().amax(dim=..., keepdim=True).float()     # over the row, the tensor or the group
    amax  = amax.clamp(max=scale_ub)                          # per token, when scale_ub is given
    scale = (amax / 448).clamp(min=1 / (448 * 512))           # a dynamic scale; a given static scale is used as is
    q     = (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)

So an all-zero row (tensor, group) gets the floor scale 1 / (448 * 512) and zeros; values beyond the range
saturate to +-448. inf and NaN follow from the rule: a row holding inf gets scale inf, its finite values become 0
and its infs NaN (inf / inf); a row holding NaN gets scale NaN and NaN everywhere (NaN is 0x7F in e4m3).

The kernels do not run an IEEE division per value: all values of a row (group, tensor) share the scale, so they
take the scale's correctly rounded reciprocal once and each quotient as a multiplication and two FMAs, which is the
IEEE quotient itself (Markstein's theorem; the range conditions and the exhaustive check are at
``divide_by_reciprocal`` in cujit/include/cujit/fp8.cuh). Scales outside that range take the IEEE division.

Plans (the functions below) depend on the token count as well as the row: per token, few tokens (up to FEW_TOKENS)
spread a row over more threads, one 16-byte vector each, so that the serial work per thread is short; many tokens
hold MANY_VECS vectors per thread. Per group, one group a thread at every count. benchmarks/tune_quant.py times the
alternatives; a one-block kernel for small dynamic per-tensor scales (one launch instead of two) was among them and
lost to the two kernels at every size measured (1 and 16 tokens of 4096 values: 6.7 and 9.9 us against 4.4 and 4.5
us on an H200), so it is not kept.

Torch tensors: q is float8_e4m3fn, which CuPy (NumPy) has no dtype for; CuPy callers pass ``out`` as they can.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import cujit

__all__ = [
    "GROUP_ROW_PATH",
    "ROW_PATH",
    "SIZE_CHECK",
    "T",
    "TENSOR_ROW_PATH",
    "divider",
    "group_plan",
    "one_float",
    "per_tensor_plan",
    "per_tensor_row_plan",
    "per_token_plan",
    "q_matcher",
    "split_chunks",
    "tensor_launch",
    "x_matcher",
]

#: Token counts up to this take the plans for few rows: one 16-byte vector per thread, so that the serial work of a
#: thread (loads, max, divisions, conversions) is short when the GPU is far from full.
FEW_TOKENS = 256
#: Vectors a thread holds at once for many rows: enough bytes in flight per SM to cover the memory latency.
MANY_VECS = 4
#: Threads of a per-group block.
GROUP_THREADS = 128
#: Threads of the partial-maxima kernel (tiles of 4 vectors per thread).
AMAX_THREADS = 512
#: Blocks of the partial-maxima kernel at most (kMaxPartials in the kernel): each block of the quantization kernel
#: reduces that many floats.
MAX_PARTIALS = 256
#: Per tensor, dynamic: tensors of at most this many values take blocks of 128 threads with one vector each, larger
#: ones 256 threads with MANY_VECS vectors (fewer blocks, each of which reduces the partial maxima first).
SMALL_TENSOR_VALUES = 1 << 20
#: Per tensor, dynamic: tensors of at most this many values take one kernel of one block, which holds every value
#: while it reduces their maximum (no partial-maxima kernel: one launch instead of two, about half the time of a
#: single token's call).
ONE_BLOCK_VALUES = 8192


@functools.lru_cache(maxsize=1024)
def per_token_plan(tokens: int, hidden: int, itemsize: int) -> tuple[int, int]:
    """(threads, vecs) for rows of ``hidden`` values: one block of ``threads`` per row.

    threads: the smallest power of two from 32 to 1024 that holds the row in at most 1 (up to FEW_TOKENS rows) or
    MANY_VECS 16-byte vectors per thread; vecs: the vectors each thread keeps in registers (1 to 4; rows beyond
    1024 x 4 vectors re-read the rest). A row's whole vectors count, hidden // lanes of them: on the row path
    (odd widths, misaligned views) its head and tail, under a vector each, take one value a thread besides, so
    that a row of 4097 values takes the plan of one of 4096.
    """
    chunks = max(1, hidden // (16 // itemsize))
    target = 1 if tokens <= FEW_TOKENS else MANY_VECS
    threads = 32
    while threads < 1024 and threads * target < chunks:
        threads *= 2
    return threads, max(1, min(4, -(-chunks // threads)))


@functools.lru_cache(maxsize=1024)
def group_plan(tokens: int, group_size: int, itemsize: int) -> tuple[int, int, int]:
    """(threads, vecs, groups per block) of per_token_group_quant_fp8_kernel.

    A group is kLanes threads of one warp (up to 32, each one 16-byte vector or more for groups beyond 32
    vectors); a thread holds ``vecs`` groups, one at every token count: with 4 groups a thread for many tokens the
    kernel was 5-8% slower at 4097 x 4096 and x 7168 bf16 on an H200 (benchmarks/tune_quant.py), the extra loads
    in flight not paying for the registers. Groups per block = vecs * threads / kLanes, as the kernel's
    GroupGeometry computes them. ``tokens`` is part of the signature so that every plan is asked the same way.
    """
    vec = 16 // itemsize
    lanes = min(group_size // vec, 32)
    vecs = 1
    return GROUP_THREADS, vecs, vecs * GROUP_THREADS // lanes


def divider(d: int) -> tuple[int, int]:
    """(magic, shift) with n // d == umulhi(n, magic) >> shift for every 0 <= n < 2**31 (d from 2 to 2**31 - 1).

    magic = ceil(2**p / d) for p = 31 + ceil(log2(d)): below 2**32, and n * magic / 2**p exceeds n / d by less than
    1 / d, so the floor is the quotient. d = 1 gives (0, 0): the kernel takes n itself.
    """
    if d <= 1:
        return 0, 0
    p = 31 + (d - 1).bit_length()
    return ((1 << p) + d - 1) // d, p - 32


@functools.lru_cache(maxsize=1024)
def per_tensor_plan(total: int, itemsize: int, dynamic: bool) -> tuple[int, int, int, int]:
    """(threads, vecs, blocks, partials) for a tensor of ``total`` values.

    The quantization kernel: ``blocks`` (at least 1, the one that writes the scale) of ``threads`` threads with
    ``vecs`` 16-byte vectors each. A static scale takes 128 x 1 at every size; a dynamic one 128 x 1 up to
    SMALL_TENSOR_VALUES values and 256 x MANY_VECS beyond, after ``partials`` blocks of the partial-maxima kernel
    (tiles of AMAX_THREADS x 4 vectors, at most MAX_PARTIALS blocks). A dynamic scale of at most
    ONE_BLOCK_VALUES values (and 1024 vectors) takes one block of one vector a thread and no partials
    (``partials`` 0: the block reduces the maximum of the values it holds).
    """
    vec = 16 // itemsize
    if dynamic and total <= min(ONE_BLOCK_VALUES, 1024 * vec):
        threads = 128
        while threads * vec < total:
            threads *= 2
        return threads, 1, 1, 0
    threads, vecs = (256, MANY_VECS) if dynamic and total > SMALL_TENSOR_VALUES else (128, 1)
    blocks = max(1, -(-total // (threads * vecs * vec)))
    partials = max(1, min(MAX_PARTIALS, -(-total // (AMAX_THREADS * 4 * vec))))
    return threads, vecs, blocks, partials


def split_chunks(tokens: int, hidden: int, x_stride: int, itemsize: int) -> int:
    """The chunks of x [tokens, hidden] on the per-tensor row path, as the kernel's SplitRows counts them.

    A contiguous x (rows ``hidden`` apart, or at most one row) is one row of all its values, otherwise each row is
    split on its own; a row of n values is n // (16 / itemsize) + 2 chunks (its body vectors at most, its head and
    its tail).
    """
    lanes = 16 // itemsize
    total = tokens * hidden
    if x_stride == hidden or total <= hidden:
        return total // lanes + 2 if total else 0
    return tokens * (hidden // lanes + 2)


@functools.lru_cache(maxsize=1024)
def per_tensor_row_plan(tokens: int, hidden: int, x_stride: int, itemsize: int) -> tuple[int, int, int, int]:
    """(threads, vecs, blocks, partials) of the per-tensor row path (x's pointer or rows not 16-byte aligned).

    Blocks of ``threads`` threads with ``vecs`` chunks each, as many blocks as cover :func:`split_chunks` (the
    kernel strides over the blocks, so any count is correct; this one gives each block one turn). 128 x 1 up to
    SMALL_TENSOR_VALUES values, 256 x MANY_VECS beyond, static scale or not: the row path holds more per chunk
    than the vector path (about 47 registers a thread at 128 x 1), so that 128 x 1 would keep fewer loads in
    flight than the vector path's; 256 x 4 keeps 48 KB per SM at its 78 registers. ``partials``: blocks of the
    partial-maxima kernel, tiles of AMAX_THREADS x 4 chunks.
    """
    total = tokens * hidden
    chunks = split_chunks(tokens, hidden, x_stride, itemsize)
    threads, vecs = (256, MANY_VECS) if total > SMALL_TENSOR_VALUES else (128, 1)
    blocks = max(1, -(-chunks // (threads * vecs)))
    partials = max(1, min(MAX_PARTIALS, -(-chunks // (AMAX_THREADS * 4))))
    return threads, vecs, blocks, partials


def tensor_launch(tokens: int, hidden: int, x_stride: int, itemsize: int, dynamic: bool,
                  row_path: bool) -> tuple[int, int, int, int]:
    """The plan of one per-tensor call: :func:`per_tensor_row_plan` on the row path, else :func:`per_tensor_plan`."""
    if row_path:
        return per_tensor_row_plan(tokens, hidden, x_stride, itemsize)
    return per_tensor_plan(tokens * hidden, itemsize, dynamic)


T, H, XS = (cujit.SymbolicSize(n) for n in ("T", "H", "XS"))
dtype = cujit.SymbolicDType("dtype")
#: x [tokens, hidden]: rows at any stride, values of a row contiguous.
x_matcher = cujit.TensorMatcher([T, H]).with_strides([XS, 1]).with_dtype("float16", "bfloat16", "float32",
                                                                         symbol=dtype)
#: q: contiguous, like x.
q_matcher = cujit.TensorMatcher([T, H]).with_dtype("float8_e4m3fn")
#: A device float32 value: a static scale, a scale bound, a returned per-tensor scale.
one_float = cujit.TensorMatcher([1]).with_dtype("float32")
SIZE_CHECK = ("T < 2**31 and H < 2**31", "x: expected fewer than 2**31 rows and columns")
#: Per token: whether the call takes the row path, the negation of the vector path's condition (x 16-byte aligned,
#: its row stride and hidden whole vectors, q aligned to a vector's values), which the kernel's vector path does not
#: test again. ``lanes`` is 16 // dtype.itemsize; ``out`` is q.
ROW_PATH = "not (aligned(x, 16) and XS % lanes == 0 and H % lanes == 0 and aligned(out, lanes))"
#: Per group: the same, but q aligned to a thread's store on the vector path: a group is min(group_size / lanes,
#: 32) threads, each storing group_size / that many bytes (lanes, or group_size / 32 for groups beyond 32 vectors)
#: in accesses of up to 16 bytes. Aligned to lanes only, q + 8 (fp16, bf16) with groups of 512 or more, or q + 4
#: (fp32) with groups of 256 or more, would be stored with misaligned 16- or 8-byte accesses.
GROUP_ROW_PATH = ("not (aligned(x, 16) and XS % lanes == 0 and H % lanes == 0 "
                  "and aligned(out, min(16, max(lanes, group_size // 32))))")
#: Per tensor: the same for the flat vector path (x 16-byte aligned, its rows whole vectors unless x is contiguous:
#: the kernels' flat_of; q aligned to a vector's values, else the vector path would store q byte by byte). Either
#: path is correct for every layout; this picks the faster.
TENSOR_ROW_PATH = ("not (aligned(x, 16) and (XS == H or T <= 1 or H == 0 or (XS % lanes == 0 and H % lanes == 0)) "
                   "and aligned(out, lanes))")


def __getattr__(name: str) -> Any:
    """``from cujit.fp8_quant import per_token_quant_fp8``: each op is declared in the module of its name."""
    if name in _OPS:
        return getattr(importlib.import_module(f"cujit.{name}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_OPS = ("per_tensor_quant_fp8", "per_token_group_quant_fp8", "per_token_quant_fp8")
