"""``per_token_quant_fp8(x, *, scale_ub=None) -> (q, scales)``: dynamic per-token FP8 (e4m3) quantization.

scales [tokens, 1] = max(rowmax / 448, 1 / (448 * 512)), the row's absolute max first capped at ``scale_ub`` (a
device float32 tensor [1]) when given; the rule, bit for bit, and what zeros, inf and NaN give: cujit/fp8_quant.py.
One block per row keeps the row in registers between the max and the quantization.
"""

from __future__ import annotations

import cujit

from .fp8_quant import SIZE_CHECK, T, cached, one_float, per_token_plan, q_matcher, x_matcher

__all__ = ["per_token_quant_fp8"]


def _token_plan(H: int, dtype: cujit.DType) -> tuple[int, int]:
    return cached(per_token_plan, H, dtype.itemsize)  # type: ignore[no-any-return]


per_token_quant_fp8 = cujit.op(
    "cujit::per_token_quant_fp8(Tensor x, *, Tensor? scale_ub=None, Tensor(a!)? out=None, "
    "Tensor(b!)? scales=None) -> (Tensor, Tensor)",
    source="kernels/fp8_quant.cuh",
    kernel="per_token_quant_fp8_kernel<{dtype}, {threads}, {vecs}>",
    tensors={"x": x_matcher, "scale_ub": one_float, "out": q_matcher,
             "scales": cujit.TensorMatcher([T, 1]).with_dtype("float32")},
    values={"plan": _token_plan, "threads": "plan[0]", "vecs": "plan[1]"},
    checks=[SIZE_CHECK],
    grid="T",
    block="threads",
    args=("x", "out", "scales", "scale_ub", "XS", "H"),
    # hidden 4096 and 7168 in bf16, 4096 in fp16
    precompile=[{"dtype": d, "threads": t, "vecs": 4} for d, t in (("bfloat16", 128), ("bfloat16", 256),
                                                                   ("float16", 128))],
)
