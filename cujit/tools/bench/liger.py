"""Liger-Kernel's Triton kernels as contenders, where Liger has the op (``pip install liger-kernel``; optional).

Written against liger-kernel 0.8.5. Every import is guarded (``adapters.py``): without Liger (or with one whose
API moved), the function raises ``Unavailable`` with the reason, and the report's Liger column says "n/a". Liger's
forward functions are autograd Functions; they are called under ``torch.no_grad()`` here, so nothing is saved for
a backward pass. What each adapter changes about the inputs, and the bytes Liger really moves, is in its
docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .adapters import Package, Unavailable

__all__ = ["PACKAGE", "Unavailable", "fused_add_rms_norm", "gelu_tanh_and_mul", "problem", "rms_norm", "rope",
           "silu_and_mul", "version"]

PACKAGE = Package("liger-kernel", "liger_kernel")


def version() -> str | None:
    """The installed liger-kernel version, or None."""
    return PACKAGE.version()


def problem() -> str | None:
    """Why Liger's kernels cannot be used here (one short phrase), or None."""
    return PACKAGE.problem("liger_kernel.ops.rms_norm")


def _function(module: str, name: str) -> Any:
    return PACKAGE.function(module, name)


def rms_norm(eps: float, gemma: bool = False) -> Callable[[Any, Any], Any]:
    """``LigerRMSNormFunction.apply(x, w, eps, offset, casting_mode)``.

    Llama's form: offset 0, "llama" casting (x * rstd rounded to x's dtype, then * w). Gemma's: offset 1 and
    "gemma" casting (everything in fp32, rounded once), ``* (1 + w)``. Same inputs as the op (x must be
    contiguous). It also writes one fp32 rstd per row for its backward pass: 4*T bytes more than the op must
    move, counted in its row.
    """
    fn = _function("liger_kernel.ops.rms_norm", "LigerRMSNormFunction")
    if gemma:
        return lambda x, w: fn.apply(x, w, eps, 1.0, "gemma")
    return lambda x, w: fn.apply(x, w, eps)


def fused_add_rms_norm(eps: float, gemma: bool = False) -> Callable[[Any, Any, Any], Any]:
    """``LigerFusedAddRMSNormFunction.apply(x, r, w, eps) -> (norm, sum)``: out of place, same bytes + 4*T (rstd).

    Liger writes the normalized rows and the sum to new tensors instead of x and residual: the same number of
    bytes as the in-place op, plus its fp32 rstd per row. Gemma's form as in :func:`rms_norm` (offset 1, "gemma"
    casting).
    """
    fn = _function("liger_kernel.ops.fused_add_rms_norm", "LigerFusedAddRMSNormFunction")
    if gemma:
        return lambda x, r, w: fn.apply(x, r, w, eps, 1.0, "gemma")
    return lambda x, r, w: fn.apply(x, r, w, eps)


def silu_and_mul() -> Callable[[Any, Any], Any]:
    """``LigerSiLUMulFunction.apply(a, b)``: gate and up as two contiguous [T, d] tensors, split once, untimed.

    Liger's kernel walks a, b and the output with one row stride, so the halves of x [T, 2d] cannot be passed as
    views: they are copied into two tensors when the row is set up. Same bytes as the op: 3*T*d*e.
    """
    fn = _function("liger_kernel.ops.swiglu", "LigerSiLUMulFunction")
    return lambda a, b: fn.apply(a, b)


def gelu_tanh_and_mul() -> Callable[[Any, Any], Any]:
    """``LigerGELUMulFunction.apply(a, b)``: GELU's tanh form only (Liger has no exact-erf GEGLU); a, b as above."""
    fn = _function("liger_kernel.ops.geglu", "LigerGELUMulFunction")
    return lambda a, b: fn.apply(a, b)


def rope() -> Callable[[Any, Any, Any, Any], Any]:
    """``LigerRopeFunction.apply(q, k, cos, sin)``: HF layout, neox style only, in place on q and k's storage.

    q [1, Hq, T, D] and k [1, Hkv, T, D] as transposed views of the op's [T, H*D] tensors (Liger transposes them
    back and finds them contiguous: no copy); cos and sin [1, T, R], gathered per token from the cache once when
    the row is set up (HF models build them once per step, for all layers). Liger reads half of each of cos and
    sin and no positions: 2*T*(Hq + Hkv)*R*e + T*R*c bytes.
    """
    fn = _function("liger_kernel.ops.rope", "LigerRopeFunction")
    return lambda q, k, cos, sin: fn.apply(q, k, cos, sin)
