"""``fused_add_rms_norm_quant_fp8(x, residual, weight, ...) -> (q, scales)``: add, RMSNorm and FP8 in one pass.

Keywords: ``eps=1e-6, *, group_size=0, column_major_scales=False, gemma=False, out=None, scales=None``. Residual
add, RMSNorm and dynamic FP8 (e4m3) quantization:

``residual = residual + x`` in place (rounded to the storage dtype, as :func:`cujit.fused_add_rms_norm` does), then
``y = rms_norm(residual) * weight`` (``* (1 + weight)`` with ``gemma=True``), rounded to the storage dtype as
fused_add_rms_norm writes it to x, then quantized by the rule of cujit/fp8_quant.py: per token with
``group_size=0`` (scales [tokens, 1]), or per group of ``group_size`` values (a power of two from 16 to 1024
dividing hidden; scales [tokens, hidden / group_size], row-major or column-major with ``column_major_scales``). x is
only read (y never reaches memory). x and residual are [tokens, hidden] float32, float16 or bfloat16 with rows at
any stride; they must not overlap. ``q`` is a contiguous float8_e4m3fn [tokens, hidden].

Rows whose hidden size is a whole number of 16-byte vectors, with x, residual, weight and q 16-byte aligned at
every row, are held in registers and cross memory once each way. Per token (``group_size=0``), so are the other
rows (odd sizes, misaligned views): they split at the residual's own 16-byte boundaries, with single elements at
each end and x, the weight and q read or written at their own alignments. Per group, those rows take a three-pass
form that reads the residual row back from cache.

So the results are those of ``fused_add_rms_norm(x, residual, weight)`` followed by ``per_token_quant_fp8(x)`` or
``per_token_group_quant_fp8(x, group_size)``, except that the sum of squares is added in another order than
fused_add_rms_norm's (one block per row here): y may differ from the unfused one by one unit in its last place.
The kernel is ``fused_add_rms_norm_quant_fp8_kernel`` in ``cujit/kernels/fused_quant.cuh``.
"""

from __future__ import annotations

from typing import Any

import cujit

from .rms_norm import data_address

__all__ = ["MAX_HELD_VECS", "MAX_SPLIT_VECS", "fused_add_rms_norm_quant_fp8", "held_vecs", "split_vecs", "threads_for"]

_GROUPS = (0, 16, 32, 64, 128, 256, 512, 1024)
#: The most 16-byte vectors a thread holds on the register path (bf16 rows up to 32768 values at 1024 threads).
MAX_HELD_VECS = 4
#: The same for the per-token path at any alignment, which holds its edges and reads x and the weight at the
#: residual's alignment besides: at 4 vectors of 16-bit values and 1024 threads (64 registers) it spills.
MAX_SPLIT_VECS = 3


def threads_for(hidden: int, lanes: int = 8) -> int:
    """Threads of the block that takes a row (``lanes`` values a 16-byte vector): about 8 values each, 128-1024.

    A row's whole vectors, not its values, decide: a row of 4097 bf16 values has at most 512 (the rest are
    single edge elements), so 512 threads hold it at one vector each. Twice as many threads would leave half of
    them idle and halve the rows an SM works on at once (two blocks of 1024 instead of four of 512): measured on an
    H100 at 1024 threads, 4097 rows of 4097 values took 0.55x a copy's time against 0.98x at 8192 values.
    """
    threads = 128
    while threads < 1024 and threads * 8 < hidden // lanes * lanes:
        threads *= 2
    return threads


def held_vecs(hidden: int, lanes: int, threads: int, group_size: int) -> int:
    """16-byte vectors a thread holds on the register path, or 0 where the row does not fit it.

    A group must span one vector to a warp's vectors; otherwise, too, the three-pass form serves the row.
    """
    vecs = -(-hidden // (threads * lanes))
    if vecs > MAX_HELD_VECS or (group_size and not lanes <= group_size <= 32 * lanes):
        return 0
    return vecs


def split_vecs(hidden: int, lanes: int, threads: int) -> int:
    """16-byte vectors a thread holds on the per-token path at any alignment, or 0 where the row does not fit it.

    The row's body has at most hidden // lanes whole vectors (fewer when it starts mid-vector); a row shorter
    than a vector is all head and tail, which one vector's worth of registers holds too.
    """
    vecs = max(1, -(-(hidden // lanes) // threads))
    return vecs if vecs <= MAX_SPLIT_VECS else 0


def _threads(H: Any, lanes: int) -> int:
    return threads_for(H, lanes) if type(H) is int else 1024


def _vecs(vector: bool, H: Any, lanes: int, threads: int, group_size: int) -> int:
    """The kernel's kVecs: > 0 the aligned register path, < 0 the per-token one at any alignment, 0 three passes."""
    if type(H) is not int or H <= 0:
        return 0
    held = held_vecs(H, lanes, threads, group_size) if vector else 0
    if held or group_size:
        return held
    return -split_vecs(H, lanes, threads)


def _precompile() -> list[dict[str, Any]]:
    """The three-pass form and the register paths at the vectors each block size takes, for each dtype."""
    out = []
    for dtype, lanes in (("float32", 4), ("float16", 8), ("bfloat16", 8)):
        for threads in (128, 256, 512, 1024):
            held = range(1, (MAX_HELD_VECS if threads == 1024 else -(-8 // lanes)) + 1)
            for vecs in (0, *held):
                out += [{"dtype": dtype, "group_size": g, "gemma": gemma, "threads": threads, "vecs": vecs}
                        for g in (0, 128) for gemma in (False, True)]
            out += [{"dtype": dtype, "group_size": 0, "gemma": gemma, "threads": threads, "vecs": -vecs}
                    for vecs in held if vecs <= MAX_SPLIT_VECS for gemma in (False, True)]
    return out


def _distinct(x: Any, residual: Any, T: Any, H: Any) -> bool:
    if T == 0 or H == 0:
        return True
    px, pr = data_address(x), data_address(residual)
    return px is None or px != pr


_T, _H, _XS, _RS, _G, _SR, _SC = (cujit.SymbolicSize(n) for n in ("T", "H", "XS", "RS", "G", "SR", "SC"))
_DTYPE = cujit.SymbolicDType("dtype")
_FLOATS = ("float32", "float16", "bfloat16")

fused_add_rms_norm_quant_fp8 = cujit.op(
    "cujit::fused_add_rms_norm_quant_fp8(Tensor x, Tensor(a!) residual, Tensor weight, float eps=1e-6, *, "
    "int group_size=0, bool column_major_scales=False, bool gemma=False, Tensor(b!)? out=None, "
    "Tensor(c!)? scales=None) -> (Tensor, Tensor)",
    source="kernels/fused_quant.cuh",
    kernel="fused_add_rms_norm_quant_fp8_kernel<{dtype}, {group_size}, {gemma}, {threads}, {vecs}>",
    tensors={
        "x": cujit.TensorMatcher([_T, _H]).with_strides([_XS, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "residual": cujit.TensorMatcher([_T, _H]).with_strides([_RS, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "weight": cujit.TensorMatcher([_H]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "out": cujit.TensorMatcher([_T, _H]).with_dtype("float8_e4m3fn"),
        "scales": cujit.TensorMatcher([_T, _G]).with_strides([_SR, _SC]).with_dtype("float32"),
    },
    values={
        "G": "H // group_size if group_size > 0 else 1",
        "SR": "1 if column_major_scales else G",
        "SC": "T if column_major_scales else 1",
        "lanes": "16 // dtype.itemsize",  # values per 16-byte vector
        "threads": (_threads, "H", "lanes"),
        # The register path: whole vectors per row and every row start, the weight and q 16-byte aligned. It
        # reads out, so it is computed once out is allocated (or checked).
        "vector": "H % lanes == 0 and aligned(x, 16) and aligned(residual, 16) and aligned(weight, 16) "
                  "and aligned(out, 16) and (T <= 1 or (XS % lanes == 0 and RS % lanes == 0))",
        "vecs": (_vecs, "vector", "H", "lanes", "threads", "group_size"),
    },
    checks=[
        ("group_size in (0, 16, 32, 64, 128, 256, 512, 1024)",
         "group_size: expected 0 (per token) or a power of two from 16 to 1024"),
        ("group_size == 0 or H % group_size == 0", "x: expected a number of columns that is a multiple of group_size"),
        ("T <= 1 or abs(XS) >= H", "x: rows overlap (a row stride below hidden)"),
        ("T <= 1 or abs(RS) >= H", "residual: rows overlap (a row stride below hidden)"),
        ("T < 2**31", "x: expected fewer than 2**31 rows"),
        (_distinct, "x and residual must be different tensors"),
    ],
    grid="T if H else 0",
    block="threads",
    args=("out", "scales", "x", "residual", "weight", "H", "XS", "RS", "SR", "SC", "eps"),
    precompile=_precompile(),
    pdl=True,
)
