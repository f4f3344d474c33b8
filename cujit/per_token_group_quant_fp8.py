"""``per_token_group_quant_fp8(x, group_size=128, *, column_major_scales=False) -> (q, scales)``.

Dynamic FP8 (e4m3) quantization with one scale per group of ``group_size`` consecutive values of a row (a power of
two from 16 to 1024 dividing the row): scales [tokens, hidden / group_size], row-major, or column-major (strides
(1, tokens), the layout DeepGEMM-style GEMMs read) with ``column_major_scales``. The rule, bit for bit:
cujit/fp8_quant.py. The kernel takes the groups of all rows in order, a few consecutive ones per block
(cujit.fp8_quant.group_plan). A group is whole 16-byte vectors, but it starts mid-vector when x is a view such as
x[:, 1:] or has an odd row stride; such calls, and an out that starts mid-vector, take the row path: each group
split at x's own 16-byte boundaries, its head and tail values one by one (cujit.fp8_quant.GROUP_ROW_PATH).
"""

from __future__ import annotations

from typing import Any

import cujit

from .fp8_quant import GROUP_ROW_PATH, T, divider, group_plan, q_matcher, x_matcher

__all__ = ["per_token_group_quant_fp8"]


def _precompiled() -> list[dict[str, Any]]:
    """Groups of 128 in bf16 and fp16, few and many tokens, on both paths."""
    found = []
    for d, itemsize in (("bfloat16", 2), ("float16", 2)):
        for tokens in (1, 1 << 20):
            threads, vecs, _ = group_plan(tokens, 128, itemsize)
            for row_path in (False, True):
                entry = {"dtype": d, "group_size": 128, "threads": threads, "vecs": vecs, "row_path": row_path}
                if entry not in found:
                    found.append(entry)
    return found


G, SR, SC = (cujit.SymbolicSize(n) for n in ("G", "SR", "SC"))

per_token_group_quant_fp8 = cujit.op(
    "cujit::per_token_group_quant_fp8(Tensor x, int group_size=128, *, bool column_major_scales=False, "
    "Tensor(a!)? out=None, Tensor(b!)? scales=None) -> (Tensor, Tensor)",
    source="kernels/fp8_quant.cuh",
    kernel="per_token_group_quant_fp8_kernel<{dtype}, {group_size}, {threads}, {vecs}, true, {row_path}>",
    tensors={"x": x_matcher, "out": q_matcher,
             "scales": cujit.TensorMatcher([T, G]).with_strides([SR, SC]).with_dtype("float32")},
    values={
        "G": "H // group_size if group_size > 0 else 0",
        "SR": "1 if column_major_scales else G",
        "SC": "T if column_major_scales else 1",
        "groups": "T * G",
        "plan": (group_plan, "T", "group_size", "dtype.itemsize"),
        "threads": "plan[0]",
        "vecs": "plan[1]",
        "per_block": "plan[2]",
        "div": (divider, "G"),
        "magic": "div[0]",
        "shift": "div[1]",
        "lanes": "16 // dtype.itemsize",
        "row_path": GROUP_ROW_PATH,
    },
    checks=[
        ("16 <= group_size <= 1024 and group_size & (group_size - 1) == 0",
         "group_size: expected a power of two from 16 to 1024"),
        ("H % group_size == 0", "x: expected a number of columns that is a multiple of group_size"),
        ("T * G < 2**31 and H < 2**31", "x: expected fewer than 2**31 groups"),
    ],
    grid="cdiv(groups, per_block)",
    block="threads",
    args=("x", "out", "scales", "XS", "H", "groups", "G", "magic", "shift", "SR", "SC"),
    precompile=_precompiled,
)
