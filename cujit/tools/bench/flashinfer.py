"""FlashInfer's kernels as contenders, where FlashInfer has the op (``pip install flashinfer-python``; optional).

Written against flashinfer-python 0.7.4. FlashInfer compiles its CUDA kernels on first use (nvcc and ninja, into
``~/.cache/flashinfer``); its norms run CuTe DSL kernels instead where nvidia-cutlass-dsl imports (the row's note
says which). FlashInfer has RMSNorm (Llama's and Gemma's forms, fused with the residual add, per head on a 3-D
view), the gated activations, rotary embedding from a cos/sin cache, per-group FP8 quantization and a fused
residual add + RMSNorm + per-group FP8 quantization; it has no per-token or per-tensor FP8 quantization, no
top-k softmax router and no standalone KV-cache store of this layout, so those rows have no FlashInfer cell or
say n/a.

Every import is guarded (``adapters.py``): without FlashInfer or one of its dependencies, each function raises
``Unavailable`` with the reason, and the report's FlashInfer cell says "n/a". Programmatic dependent launch is
left as FlashInfer defaults it (on for sm_90 and later). What each adapter changes about the inputs, and the
bytes FlashInfer really moves, is in its docstring.

On a machine without network (Python 3.12, torch 2.11 + CUDA 13, nvcc, ninja), the modules used here import from
flashinfer-python 0.7.4 (about 101 MB) and apache-tvm-ffi 0.1.15.post2 installed with ``pip install --no-deps
--target DIR``; add QuACK's CUTLASS DSL wheels (``quack.py``) for the CuTe DSL norms, or set
``FLASHINFER_USE_CUDA_NORM=1`` for the CUDA ones. Its other declared dependencies are not imported by them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .adapters import Package, Unavailable

__all__ = [
    "PACKAGE",
    "Unavailable",
    "fused_add_rms_norm",
    "fused_add_rms_norm_quant_fp8",
    "gated_activation",
    "norm_backend",
    "per_token_group_quant_fp8",
    "problem",
    "qk_rms_norm",
    "rms_norm",
    "rotary_embedding",
    "version",
]

PACKAGE = Package("flashinfer-python", "flashinfer")
_NORM = "flashinfer.norm"
_HALVES = ("float16", "bfloat16")


def version() -> str | None:
    """The installed flashinfer-python version, or None."""
    return PACKAGE.version()


def problem() -> str | None:
    """Why FlashInfer's kernels cannot be used here (one short phrase), or None."""
    return PACKAGE.problem(_NORM)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def norm_backend(device: Any) -> str:
    """Which kernels FlashInfer's norms run on ``device``: "CuTe DSL" or "CUDA" (its own dispatch decides)."""
    import torch

    choose = getattr(PACKAGE.module(_NORM), "_use_cuda_norm", None)
    where = torch.device(device)
    if choose is None or where.type != "cuda":
        return "unknown"
    return "CUDA" if choose(where) else "CuTe DSL"


def _norm_dtype(dtype: Any, device: Any) -> None:
    """FlashInfer's CUDA norm kernels take fp16 and bf16; its CuTe DSL ones fp32 too."""
    if _dtype_name(dtype) not in _HALVES and norm_backend(device) != "CuTe DSL":
        raise Unavailable(f"FlashInfer's CUDA norm kernels take fp16 and bf16 only, not {_dtype_name(dtype)}")


def rms_norm(eps: float, dtype: Any, device: Any, gemma: bool = False) -> Callable[[Any, Any, Any], Any]:
    """``flashinfer.norm.rmsnorm(x, w, eps, out=out)`` (``gemma_rmsnorm`` for ``* (1 + w)``): the op's bytes.

    Same inputs, a given output [T, H]: (2*T*H + H)*e. Call as ``fn(x, w, out)``.
    """
    _norm_dtype(dtype, device)
    fn = PACKAGE.function(_NORM, "gemma_rmsnorm" if gemma else "rmsnorm")
    return lambda x, w, out: fn(x, w, eps, out=out)


def fused_add_rms_norm(eps: float, dtype: Any, device: Any, gemma: bool = False) -> Callable[[Any, Any, Any], None]:
    """``flashinfer.norm.fused_add_rmsnorm(x, r, w, eps)`` (``gemma_fused_add_rmsnorm``): in place, the op's bytes.

    The op's semantics exactly: ``r += x`` (rounded to r's dtype), then ``x = rmsnorm(r) * w``; (4*T*H + H)*e.
    """
    _norm_dtype(dtype, device)
    fn = PACKAGE.function(_NORM, "gemma_fused_add_rmsnorm" if gemma else "fused_add_rmsnorm")
    return lambda x, r, w: fn(x, r, w, eps)


def qk_rms_norm(eps: float, dtype: Any, device: Any, head_dim: int) -> Callable[[Any, Any, Any, Any], None]:
    """Per-head RMSNorm in place, two launches: ``rmsnorm(x3, w, eps, out=x3)`` for q, then for k.

    FlashInfer's rmsnorm normalizes each head of a 3-D [T, H, D] input (any token and head strides) with one
    [D] weight; q and k are given as [T, H, D] views of the qkv slices and written in place (``out`` is the same
    view). The op's bytes. Call as ``fn(q, k, q_weight, k_weight)`` with q [T, Hq*D] and k [T, Hkv*D].
    """
    _norm_dtype(dtype, device)
    fn = PACKAGE.function(_NORM, "rmsnorm")

    def call(q: Any, k: Any, q_weight: Any, k_weight: Any) -> None:
        for x, w in ((q, q_weight), (k, k_weight)):
            x3 = x.unflatten(1, (-1, head_dim))
            fn(x3, w, eps, out=x3)

    return call


def gated_activation(op: str, approximate: str, dtype: Any) -> Callable[[Any, Any], Any]:
    """``flashinfer.activation.silu_and_mul(x, out=out)``, ``gelu_and_mul`` (erf) or ``gelu_tanh_and_mul``.

    The op's inputs and bytes, 3*T*d*e, into a given out [T, d]; fp16 and bf16 only. Call as ``fn(x, out)``.
    """
    if _dtype_name(dtype) not in _HALVES:
        raise Unavailable(f"FlashInfer's activations take fp16 and bf16 only, not {_dtype_name(dtype)}")
    if op == "silu_and_mul":
        name = "silu_and_mul"
    else:
        name = "gelu_tanh_and_mul" if approximate == "tanh" else "gelu_and_mul"
    fn = PACKAGE.function("flashinfer.activation", name)
    return lambda x, out: fn(x, out=out)


def rotary_embedding(is_neox: bool, dtype: Any) -> Callable[[Any, Any, Any, Any, int], None]:
    """``flashinfer.rope.apply_rope_with_cos_sin_cache_inplace(positions, q, k, head_size, cache, is_neox)``.

    vLLM's and SGLang's calling convention: q [T, Hq*D] and k [T, Hkv*D] rotated in place, int32 or int64
    positions, cos in the first half of each cache row and sin in the second. FlashInfer requires the cache in
    fp32: the row's bf16 cache is converted once, untimed (the same values), and FlashInfer reads T*R*4 bytes of
    it instead of T*R*2, counted in its row. fp16 and bf16 q and k only. Call as
    ``fn(positions, q, k, fp32_cache, head_size)``.
    """
    if _dtype_name(dtype) not in _HALVES:
        raise Unavailable(f"FlashInfer's rotary takes fp16 and bf16 q and k only, not {_dtype_name(dtype)}")
    fn = PACKAGE.function("flashinfer.rope", "apply_rope_with_cos_sin_cache_inplace")
    return lambda positions, q, k, cache, head_size: fn(positions, q, k, head_size, cache, is_neox=is_neox)


def per_token_group_quant_fp8(group_size: int) -> Callable[[Any], tuple[Any, Any]]:
    """``flashinfer.quantization.per_token_group_quant_8bit(x, g, eps=1e-10, backend="cuda")`` -> (q, scales).

    Its native CUDA kernel (``backend="cuda"``; the default cuTile one needs the cuda-tile package and a GPU it
    supports): fp8 e4m3 values and row-major fp32 scales [T, H/g], ``scale = max(amax, 1e-10) / 448`` as the
    op's. The op's bytes; outputs allocated on each call. Group size 128, fp16 and bf16 x only.
    """
    if group_size != 128:
        raise Unavailable(f"FlashInfer's CUDA group quantization takes groups of 128 only, not {group_size}")
    import torch

    fn = PACKAGE.function("flashinfer.quantization", "per_token_group_quant_8bit")
    return lambda x: fn(x, group_size, eps=1e-10, dst_dtype=torch.float8_e4m3fn, backend="cuda")


def fused_add_rms_norm_quant_fp8(eps: float, hidden: int, dtype: Any) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``flashinfer.norm.fused_add_rmsnorm_fp8_block_quant(q, scales, normed, x, r, w, eps)``, one pass.

    The residual add, RMSNorm and FP8 quantization per 128 values in one kernel: ``r += x`` in place; the
    normalized rows, rounded to x's dtype, go to ``normed`` [T, H] and, quantized, to q (e4m3); x is only read.
    The scales are written column-major for DeepGEMM ([H/128, round_up(T, 4)]), and the adapter returns their
    [T, H/128] transposed view; ``scale = max(amax, 1e-4) / 448``. The outputs are allocated on each call, as the
    op allocates q and its scales. FlashInfer also writes ``normed``: T*H*e bytes more than the op, counted in its
    row. fp16 and bf16 only; H a multiple of 256 (of 512 above 8192), at most 16384. Call as ``fn(x, r, w)``.
    """
    if _dtype_name(dtype) not in _HALVES:
        raise Unavailable(f"FlashInfer's fused norm quantization takes fp16 and bf16 only, not {_dtype_name(dtype)}")
    if hidden % (256 if hidden <= 8192 else 512) or hidden > 16384:
        raise Unavailable(f"FlashInfer's fused norm quantization needs H a multiple of 256 (512 above 8192), "
                          f"at most 16384, not {hidden}")
    import torch

    fn = PACKAGE.function(_NORM, "fused_add_rmsnorm_fp8_block_quant")

    def call(x: Any, r: Any, w: Any) -> tuple[Any, Any]:
        tokens = x.shape[0]
        q = torch.empty(tokens, hidden, dtype=torch.float8_e4m3fn, device=x.device)
        scales = torch.empty(hidden // 128, (tokens + 3) // 4 * 4, dtype=torch.float32, device=x.device)
        normed = torch.empty_like(x)
        fn(q, scales, normed, x, r, w, eps)
        return q, scales.t()[:tokens]

    return call
