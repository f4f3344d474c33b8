"""``fused_add_rms_norm(x, residual, weight, eps=1e-6, *, gemma=False)``: the residual add and RMSNorm, in place.

``residual += x`` (the sum rounded to the storage dtype, as the unfused torch code and vLLM / FlashInfer do), then
``x = rms_norm(residual) * weight`` (``* (1 + weight)`` with ``gemma=True``), normalising the rounded sum; one pass
over both tensors. Both are [tokens, hidden] float32, float16 or bfloat16 tensors whose rows may be strided; they
must not overlap. The kernel is ``fused_add_rms_norm_kernel`` in ``cujit/kernels/rms_norm.cuh``, with the
configurations of :func:`cujit.rms_norm.norm_config`.
"""

from __future__ import annotations

from typing import Any

import cujit

from ._runtime.dtypes import DType
from .rms_norm import TRACING_CONFIG, NormConfig, address, norm_config, norm_precompile, vector_rows

__all__ = ["fused_add_rms_norm"]

_FLOATS = ("float32", "float16", "bfloat16")
_T, _H = cujit.SymbolicSize("T"), cujit.SymbolicSize("H")
_X_STRIDE, _RESIDUAL_STRIDE = cujit.SymbolicSize("x_stride"), cujit.SymbolicSize("residual_stride")
_DTYPE = cujit.SymbolicDType("dtype")


def _kernel_config(x: Any, residual: Any, weight: Any, T: int, H: int, x_stride: int, residual_stride: int,
                   dtype: DType) -> NormConfig:
    if address(x) is None:
        return TRACING_CONFIG
    return norm_config(H, dtype, vector_rows(T, H, dtype.itemsize, weight, (x, x_stride),
                                              (residual, residual_stride)))


def _distinct(x: Any, residual: Any, T: int, H: int) -> bool:
    """Whether x and residual are different tensors (a partial overlap is the caller's to avoid)."""
    if T == 0 or H == 0:
        return True
    at = address(x)
    return at is None or at != address(residual)


fused_add_rms_norm = cujit.op(
    "cujit::fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps=1e-6, *, "
    "bool gemma=False) -> ()",
    source="kernels/rms_norm.cuh",
    kernel="fused_add_rms_norm_kernel<{dtype}, {gemma}, {path}, {block}, {row_threads}, {vecs}>",
    tensors={
        "x": cujit.TensorMatcher([_T, _H]).with_strides([_X_STRIDE, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "residual": cujit.TensorMatcher([_T, _H]).with_strides([_RESIDUAL_STRIDE, 1])
        .with_dtype(*_FLOATS, symbol=_DTYPE),
        "weight": cujit.TensorMatcher([_H]).with_dtype(*_FLOATS, symbol=_DTYPE),
    },
    values={
        "config": _kernel_config,
        "path": "config.path",
        "block": "config.block",
        "row_threads": "config.row_threads",
        "vecs": "config.vecs",
    },
    checks=[
        ("T <= 1 or abs(x_stride) >= H", "x: rows overlap (a row stride below hidden)"),
        ("T <= 1 or abs(residual_stride) >= H", "residual: rows overlap (a row stride below hidden)"),
        (_distinct, "x and residual must be different tensors"),
    ],
    grid="cdiv(T, config.rows_per_block) if H else 0",
    block="block",
    args=("x", "residual", "weight", "T", "H", "x_stride", "residual_stride", "eps"),
    precompile=norm_precompile(),
    pdl=True,
)
