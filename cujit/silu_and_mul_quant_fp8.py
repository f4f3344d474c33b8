"""``silu_and_mul_quant_fp8(x, group_size=128, *, column_major_scales=False) -> (q, scales)``.

SiLU-and-mul and per-group dynamic FP8 (e4m3) quantization in one pass: for x [tokens, 2d] (float32, float16 or
bfloat16; rows at any stride), ``y = silu(x[:, :d]) * x[:, d:]`` is computed in fp32 and rounded to x's dtype
(round to nearest even), exactly as :func:`cujit.silu_and_mul.silu_and_mul` stores it, then quantized with one scale
per group of ``group_size`` values (a power of two from 16 to 1024 dividing d) by the rule of
cujit/fp8_quant.py. So ``q`` [tokens, d] (float8_e4m3fn, contiguous) and ``scales`` [tokens, d / group_size]
(row-major, or column-major with ``column_major_scales``) are bit for bit those of
``per_token_group_quant_fp8(silu_and_mul(x), group_size, column_major_scales=...)``, without y's round trip
through memory. The kernel is ``silu_and_mul_quant_fp8_kernel`` in ``cujit/kernels/fused_quant.cuh``.
"""

from __future__ import annotations

from typing import Any

import cujit

from .fp8_quant import divider

__all__ = ["GROUP_THREADS", "silu_and_mul_quant_fp8"]

#: Threads per block: 8 groups of 128 bf16 values (16 threads each), one 16-byte vector of each half per thread.
GROUP_THREADS = 128
_GROUPS = (16, 32, 64, 128, 256, 512, 1024)


def _divider(G: Any) -> tuple[int, int]:
    return divider(G)


def _per_block(group_size: int, dtype: cujit.DType) -> int:
    return GROUP_THREADS // min(group_size // (16 // dtype.itemsize), 32) if group_size in _GROUPS else 1


_T, _TWO_D, _XS, _D, _G, _SR, _SC = (cujit.SymbolicSize(n) for n in ("T", "two_d", "XS", "D", "G", "SR", "SC"))
_DTYPE = cujit.SymbolicDType("dtype")

silu_and_mul_quant_fp8 = cujit.op(
    "cujit::silu_and_mul_quant_fp8(Tensor x, int group_size=128, *, bool column_major_scales=False, "
    "Tensor(a!)? out=None, Tensor(b!)? scales=None) -> (Tensor, Tensor)",
    source="kernels/fused_quant.cuh",
    kernel="silu_and_mul_quant_fp8_kernel<{dtype}, {group_size}, {threads}>",
    tensors={
        "x": cujit.TensorMatcher([_T, _TWO_D]).with_strides([_XS, 1])
        .with_dtype("float32", "float16", "bfloat16", symbol=_DTYPE),
        "out": cujit.TensorMatcher([_T, _D]).with_dtype("float8_e4m3fn"),
        "scales": cujit.TensorMatcher([_T, _G]).with_strides([_SR, _SC]).with_dtype("float32"),
    },
    values={
        "D": "two_d // 2",
        "G": "D // group_size if group_size > 0 else 0",
        "SR": "1 if column_major_scales else G",
        "SC": "T if column_major_scales else 1",
        "groups": "T * G",
        "threads": str(GROUP_THREADS),
        "per_block": _per_block,
        "div": _divider,
        "magic": "div[0]",
        "shift": "div[1]",
    },
    checks=[
        ("two_d % 2 == 0", "x: the last dimension must be even (2 * d)"),
        ("group_size in (16, 32, 64, 128, 256, 512, 1024)", "group_size: expected a power of two from 16 to 1024"),
        ("D % group_size == 0", "x: expected d (half the columns) to be a multiple of group_size"),
        ("T * G < 2**31 and two_d < 2**31", "x: expected fewer than 2**31 groups"),
    ],
    grid="cdiv(groups, per_block)",
    block="threads",
    args=("out", "scales", "x", "XS", "D", "groups", "G", "magic", "shift", "SR", "SC"),
    precompile=[{"dtype": d, "group_size": g, "threads": GROUP_THREADS}
                for d in ("float32", "float16", "bfloat16") for g in (64, 128)],
    pdl=True,
)
