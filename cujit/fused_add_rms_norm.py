"""``fused_add_rms_norm(x, residual, weight, eps=1e-6, *, gemma=False)``: the residual add and RMSNorm, in place.

``residual += x`` (the sum rounded to the storage dtype, as the unfused torch code and vLLM / FlashInfer do), then
``x = rms_norm(residual) * weight`` (``* (1 + weight)`` with ``gemma=True``), normalising the rounded sum; one pass
over both tensors. Both are [tokens, hidden] float32, float16 or bfloat16 tensors whose rows may be strided; they
must not overlap. The kernel is ``fused_add_rms_norm_kernel`` in ``cujit/kernels/rms_norm.cuh``, with the
configurations of :func:`cujit.rms_norm.norm_config`.
"""

from __future__ import annotations

import sys
from typing import Any

import cujit

from ._runtime.ops import aligned
from ._runtime.tensors import tensor_info
from .rms_norm import NormConfig, layout_config, norm_precompile

__all__ = ["fused_add_rms_norm"]

_FLOATS = ("float32", "float16", "bfloat16")
_T, _H = cujit.SymbolicSize("T"), cujit.SymbolicSize("H")
_X_STRIDE, _RESIDUAL_STRIDE = cujit.SymbolicSize("x_stride"), cujit.SymbolicSize("residual_stride")
_DTYPE = cujit.SymbolicDType("dtype")


def _vector(x: Any, residual: Any, weight: Any, T: Any, H: Any, x_stride: Any, residual_stride: Any,
            dtype: cujit.DType) -> bool:
    """Whole vectors per row, and every row start and the weight 16-byte aligned.

    False without a look at a traced call's symbolic sizes: tracing picks no kernel, and a test of a symbolic size
    would constrain the compiled graph.
    """
    if type(H) is not int:
        return False
    lanes = 16 // dtype.itemsize
    return (H % lanes == 0 and aligned(x, 16) and aligned(residual, 16) and aligned(weight, 16)
            and (T <= 1 or (x_stride % lanes == 0 and residual_stride % lanes == 0)))


def _config(H: Any, dtype: cujit.DType, vector: bool, T: Any, x: Any, residual: Any, weight: Any, x_stride: Any,
            residual_stride: Any) -> NormConfig:
    """:func:`cujit.rms_norm.layout_config` of one call (the op passes its values by these names)."""
    return layout_config(H, dtype, vector, T, x, residual, weight, x_stride, residual_stride)


def _address(tensor: Any) -> int:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensor, torch.Tensor):
        return int(tensor.data_ptr())
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(tensor, cupy.ndarray):
        return int(tensor.data.ptr)
    return tensor_info(tensor).ptr


def _distinct(x: Any, residual: Any, T: int, H: int) -> bool:
    """Whether x and residual start at different addresses (a partial overlap is the caller's to avoid)."""
    return T == 0 or H == 0 or _address(x) != _address(residual)


fused_add_rms_norm = cujit.op(
    "cujit::fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps=1e-6, *, "
    "bool gemma=False) -> ()",
    source="kernels/rms_norm.cuh",
    kernel="fused_add_rms_norm_kernel<{dtype}, {gemma}, {path}, {block}, {row_threads}, {vecs}, {rows}>",
    tensors={
        "x": cujit.TensorMatcher([_T, _H]).with_strides([_X_STRIDE, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "residual": cujit.TensorMatcher([_T, _H]).with_strides([_RESIDUAL_STRIDE, 1])
        .with_dtype(*_FLOATS, symbol=_DTYPE),
        "weight": cujit.TensorMatcher([_H]).with_dtype(*_FLOATS, symbol=_DTYPE),
    },
    values={
        "vector": _vector,
        "config": _config,
        "path": "config.path",
        "block": "config.block",
        "row_threads": "config.row_threads",
        "vecs": "config.vecs",
        "rows": "config.rows",
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
