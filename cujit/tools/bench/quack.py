"""QuACK's CuTe DSL kernels as contenders, where QuACK has the op (``pip install quack-kernels``; optional).

Written against quack-kernels 0.6.5 (Python over nvidia-cutlass-dsl, which compiles each kernel on its first
call for a shape and dtype, and apache-tvm-ffi, which launches it on torch's current stream). QuACK has RMSNorm
(with a residual, Gemma's ``1 + w`` and per-head weights), rotary embedding at per-sequence offsets and a top-k
with a softmax of the k values; it has no standalone gated activation, FP8 quantization or KV-cache store (those
exist only as epilogues of its GEMMs), so those rows have no QuACK cell.

Every import is guarded (``adapters.py``): without QuACK or its CUTLASS DSL, each function raises ``Unavailable``
with the reason and the report's QuACK cell says "n/a". The functions called are QuACK's forward entry points,
not its autograd wrappers (nothing is saved for a backward pass). What each adapter changes about the inputs,
and the bytes QuACK really moves, is in its docstring.

On a machine without network (Python 3.12, torch 2.11 + CUDA 13, Triton, numpy), QuACK imports from these wheels
installed with ``pip install --no-deps --target DIR`` and ``PYTHONPATH=DIR:DIR/nvidia_cutlass_dsl/dsl_packages``
(``--target`` does not read the DSL's ``.pth`` file): quack-kernels 0.6.5, nvidia-cutlass-dsl 4.8.1 with its
libs-base, libs-cu13 and libs-core 4.8.1 (about 94 MB, the bulk; without libs-core ``cutlass.cutlass_dsl`` is
missing), apache-tvm-ffi 0.1.15.post2; ``.ci/gpu/fetch_wheels.sh`` packs them into parts small enough to send.
torch-c-dlpack-ext and einops are not needed by the functions used here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .adapters import Package, Unavailable

__all__ = ["PACKAGE", "Unavailable", "fused_add_rms_norm", "problem", "qk_rms_norm", "rms_norm", "rotary_embedding",
           "topk_softmax", "version"]

PACKAGE = Package("quack-kernels", "quack")
_NORM = "quack.rmsnorm"


def version() -> str | None:
    """The installed quack-kernels version, or None."""
    return PACKAGE.version()


def problem() -> str | None:
    """Why QuACK's kernels cannot be used here (one short phrase), or None."""
    return PACKAGE.problem(_NORM)


def rms_norm(eps: float, gemma: bool = False) -> Callable[[Any, Any], Any]:
    """``quack.rmsnorm.rmsnorm_fwd(x, w, eps=eps, weight_offset=0 or 1)[0]``: returns a new [T, H] tensor.

    Same inputs and bytes as the op, (2*T*H + H)*e: no rstd is stored (``store_rstd=False``), and the output is
    allocated by QuACK on each call. Gemma's ``* (1 + w)`` is QuACK's ``weight_offset=1.0``, added in fp32.
    """
    fn = PACKAGE.function(_NORM, "rmsnorm_fwd")
    offset = 1.0 if gemma else 0.0
    return lambda x, w: fn(x, w, eps=eps, weight_offset=offset)[0]


def fused_add_rms_norm(eps: float, gemma: bool = False) -> Callable[[Any, Any, Any], Any]:
    """``rmsnorm_fwd(x, w, residual=r, eps=eps)`` -> (norm, sum): out of place, the same bytes as the op.

    QuACK writes the normalized rows and the sum ``x + r`` (rounded to r's dtype) to two new tensors instead of
    x and residual: it reads x, r and w and writes two [T, H] tensors, (4*T*H + H)*e as the in-place op does.
    """
    fn = PACKAGE.function(_NORM, "rmsnorm_fwd")
    offset = 1.0 if gemma else 0.0

    def call(x: Any, r: Any, w: Any) -> tuple[Any, Any]:
        out, total, _ = fn(x, w, residual=r, eps=eps, weight_offset=offset)
        return out, total

    return call


def qk_rms_norm(eps: float, q_weight: Any, k_weight: Any, q_heads: int, kv_heads: int) -> Callable[[Any, Any], None]:
    """Per-head RMSNorm in place, two launches: ``_rmsnorm_fwd(x3, w_heads, out=x3)`` for q, then for k.

    QuACK's per-head mode normalizes x [T, H, D] with one weight row per head, ``w_heads`` [H, D]; q and k are
    given as [T, H, D] views of the qkv slices (any row stride) and written in place (``out`` is the same view).
    The adapter repeats each [D] weight over the heads into a [H, D] tensor once, untimed, and QuACK reads a
    weight row per head: (Hq + Hkv)*D*e bytes of weights instead of 2*D*e, counted in its row.
    ``_rmsnorm_fwd`` is QuACK's entry point with a given ``out`` (the public ones allocate it). Call as
    ``fn(q, k)`` with q [T, Hq*D] and k [T, Hkv*D] (row strides free).
    """
    fn = PACKAGE.function(_NORM, "_rmsnorm_fwd")
    d = q_weight.shape[0]
    plan = ((q_heads, q_weight.expand(q_heads, d).contiguous()), (kv_heads, k_weight.expand(kv_heads, d).contiguous()))

    def call(q: Any, k: Any) -> None:
        for x, (heads, weight) in zip((q, k), plan, strict=True):
            x3 = x.unflatten(1, (heads, d))
            fn(x3, weight, x3, eps=eps)

    return call


def rotary_embedding(is_neox: bool) -> Callable[..., None]:
    """``quack.rotary.apply_rotary(x, cos, sin, seqlen_offsets=positions, inplace=True)`` on q, then on k.

    QuACK's rotary takes x [batch, seqlen, heads, D] with one position offset per sequence: each token is a
    sequence of one token whose offset is its position, so ``seqlen_offsets`` is the positions tensor as it is.
    cos and sin [max_position, R/2] are the two halves of the cos/sin cache as views (no copy); q and k are
    [T, 1, H, D] views of the op's [T, H*D] tensors, rotated in place. Two launches (q, k); the bytes are the
    op's: q and k read and written, T cos/sin rows and the positions read. ``interleaved`` is the GPT-J style.
    Call as ``fn(positions, q, k, cos_sin_cache, head_size)``.
    """
    fn = PACKAGE.function("quack.rotary", "apply_rotary")

    def call(positions: Any, q: Any, k: Any, cache: Any, head_size: int) -> None:
        half = cache.shape[1] // 2
        cos, sin = cache[:, :half], cache[:, half:]
        for x in (q, k):
            fn(x.view(x.shape[0], 1, -1, head_size), cos, sin, seqlen_offsets=positions, interleaved=not is_neox,
               inplace=True)

    return call


def topk_softmax(k: int) -> Callable[[Any], tuple[Any, Any]]:
    """``quack.topk.topk_fwd(logits, k, softmax=True)`` -> (weights, int32 ids).

    The softmax of the k largest logits, which equals the renormalized top k of the softmax. QuACK writes the
    weights in the logits' dtype (bf16 in these rows), not fp32: 2*T*k bytes fewer than the op, counted in its
    row, and they are checked at bf16's bound. QuACK needs E and k powers of two, E <= 4096, k <= 128.
    """
    fn = PACKAGE.function("quack.topk", "topk_fwd")
    return lambda logits: fn(logits, k, softmax=True)
