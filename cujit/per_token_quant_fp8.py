"""``per_token_quant_fp8(x, *, scale_ub=None) -> (q, scales)``: dynamic per-token FP8 (e4m3) quantization.

scales [tokens, 1] = max(rowmax / 448, 1 / (448 * 512)), the row's absolute max first capped at ``scale_ub`` (a
device float32 tensor [1]) when given; the rule, bit for bit, and what zeros, inf and NaN give: cujit/fp8_quant.py.
One block per row keeps the row in registers between the max and the quantization: one 16-byte vector per thread
for few tokens, four for many (cujit.fp8_quant.per_token_plan). Rows that are not whole 16-byte vectors at aligned
addresses (odd widths, views such as x[:, 1:], an out that starts mid-vector) take the row path: 16-byte loads
between each row's own 16-byte boundaries, its first and last few values one by one (cujit.fp8_quant.ROW_PATH).
"""

from __future__ import annotations

from typing import Any

import cujit

from .fp8_quant import ROW_PATH, SIZE_CHECK, T, one_float, per_token_plan, q_matcher, x_matcher

__all__ = ["per_token_quant_fp8"]


def _precompiled() -> list[dict[str, Any]]:
    """The plans of hidden 4096 and 7168 in bf16 and fp16, few and many tokens, on both paths."""
    found = []
    for d, itemsize in (("bfloat16", 2), ("float16", 2)):
        for hidden in (4096, 7168):
            for tokens in (1, 1 << 20):
                threads, vecs = per_token_plan(tokens, hidden, itemsize)
                for row_path in (False, True):
                    found.append({"dtype": d, "threads": threads, "vecs": vecs, "row_path": row_path})
    return [dict(t) for t in dict.fromkeys(tuple(f.items()) for f in found)]


per_token_quant_fp8 = cujit.op(
    "cujit::per_token_quant_fp8(Tensor x, *, Tensor? scale_ub=None, Tensor(a!)? out=None, "
    "Tensor(b!)? scales=None) -> (Tensor, Tensor)",
    source="kernels/fp8_quant.cuh",
    kernel="per_token_quant_fp8_kernel<{dtype}, {threads}, {vecs}, true, {row_path}>",
    tensors={"x": x_matcher, "scale_ub": one_float, "out": q_matcher,
             "scales": cujit.TensorMatcher([T, 1]).with_dtype("float32")},
    values={"plan": (per_token_plan, "T", "H", "dtype.itemsize"), "threads": "plan[0]", "vecs": "plan[1]",
            "lanes": "16 // dtype.itemsize", "row_path": ROW_PATH},
    checks=[SIZE_CHECK],
    grid="T",
    block="threads",
    args=("x", "out", "scales", "scale_ub", "XS", "H"),
    precompile=_precompiled,
)
