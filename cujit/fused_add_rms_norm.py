"""``fused_add_rms_norm(x, residual, weight, eps=1e-6, *, gemma=False)``: the residual add and RMSNorm, in place.

``residual += x`` (the sum rounded to the storage dtype, as the unfused torch code and vLLM / FlashInfer do), then
``x = rms_norm(residual) * weight`` (``* (1 + weight)`` with ``gemma=True``), normalising the rounded sum; one pass
over both tensors. Both are [tokens, hidden] float32, float16 or bfloat16 tensors whose rows may be strided; they
must not overlap. The kernel is ``fused_add_rms_norm_kernel`` in ``cujit/kernels/rms_norm.cuh``, with the
configurations of :func:`cujit.rms_norm.norm_config` (``fused=True``).
"""

from __future__ import annotations

from typing import Any

import cujit

from .rms_norm import data_address, fused_layout_config, norm_precompile

__all__ = ["fused_add_rms_norm"]

_FLOATS = ("float32", "float16", "bfloat16")
_T, _H = cujit.SymbolicSize("T"), cujit.SymbolicSize("H")
_X_STRIDE, _RESIDUAL_STRIDE = cujit.SymbolicSize("x_stride"), cujit.SymbolicSize("residual_stride")
_DTYPE = cujit.SymbolicDType("dtype")


def _distinct(x: Any, residual: Any, T: int, H: int) -> bool:
    """Whether x and residual start at different addresses (a partial overlap is the caller's to avoid)."""
    return T == 0 or H == 0 or data_address(x) != data_address(residual)


fused_add_rms_norm = cujit.op(
    "cujit::fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps=1e-6, *, "
    "bool gemma=False) -> ()",
    source="kernels/rms_norm.cuh",
    kernel="fused_add_rms_norm_kernel<{dtype}, {gemma}, {config.path}, {config.block}, {config.row_threads}, "
           "{config.vecs}, {config.rows}>",
    tensors={
        "x": cujit.TensorMatcher([_T, _H]).with_strides([_X_STRIDE, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "residual": cujit.TensorMatcher([_T, _H]).with_strides([_RESIDUAL_STRIDE, 1])
        .with_dtype(*_FLOATS, symbol=_DTYPE),
        "weight": cujit.TensorMatcher([_H]).with_dtype(*_FLOATS, symbol=_DTYPE),
    },
    values={
        "lanes": "16 // dtype.itemsize",  # values per 16-byte vector
        # Whole vectors per row, and every row start and the weight 16-byte aligned.
        "vector": "H % lanes == 0 and aligned(x, 16) and aligned(residual, 16) and aligned(weight, 16) "
                  "and (T <= 1 or (x_stride % lanes == 0 and residual_stride % lanes == 0))",
        "config": (fused_layout_config, "H", "dtype", "vector", "T", "weight"),
    },
    checks=[
        ("T <= 1 or abs(x_stride) >= H", "x: rows overlap (a row stride below hidden)"),
        ("T <= 1 or abs(residual_stride) >= H", "residual: rows overlap (a row stride below hidden)"),
        (_distinct, "x and residual must be different tensors"),
    ],
    grid="cdiv(T, config.rows_per_block) if H else 0",
    block="config.block",
    args=("x", "residual", "weight", "T", "H", "x_stride", "residual_stride", "eps"),
    precompile=norm_precompile(fused=True),
    pdl=True,
)
