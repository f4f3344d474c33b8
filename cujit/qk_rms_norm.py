"""``qk_rms_norm(q, k, q_weight, k_weight, eps=1e-6, *, gemma=False)``: per-head RMSNorm of q and k, in place.

The q / k norm of Qwen3 and Gemma 3 attention, one launch for both: ``q`` [tokens, q_heads * head_dim] and ``k``
[tokens, kv_heads * head_dim] (float32, float16 or bfloat16; rows at any stride, such as the q and k slices of a
fused qkv tensor; they must not overlap), ``q_weight`` and ``k_weight`` [head_dim] of the same dtype. Each head
becomes ``head * rsqrt(mean(head**2) + eps) * w`` (``* (1 + w)`` with ``gemma=True``, Gemma's form), computed in
fp32 from the stored values and rounded once, as :func:`cujit.rms_norm.rms_norm` computes a row. head_dim is
``q_weight``'s length, up to 1024 values for fp16 and bf16 and 512 for fp32. A [tokens, heads, head_dim] tensor
is passed as its ``flatten(1)`` view.

The kernel is ``qk_rms_norm_kernel`` in ``cujit/kernels/qk_norm.cuh``, with rms_norm's per-row code.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cujit

from ._runtime.ops import aligned
from .rms_norm import data_address

__all__ = ["MANY_HEADS", "MANY_HEADS_FROM", "QkNormConfig", "distinct", "head_config", "heads_per_group",
           "qk_norm_config", "qk_rms_norm", "vector_layout"]

#: (lanes per head, 16-byte vectors per lane) of the instantiations, by increasing capacity.
CONFIGS: tuple[tuple[int, int], ...] = ((8, 1), (16, 1), (32, 1), (32, 2), (32, 4))
_BLOCK = 128
#: Heads per row group from MANY_HEADS_FROM heads in all (16384 heads are about 16 blocks of 128 threads per SM of
#: a 132-SM GPU at one head per group, 4 at four); fewer heads take one per group, so that they spread over more SMs.
MANY_HEADS = 4
MANY_HEADS_FROM = 16384


class QkNormConfig(NamedTuple):
    """The template parameters of one qk_rms_norm instantiation (besides dtype, gemma and vector)."""

    block: int  #: threads per block
    row_threads: int  #: lanes per head
    vecs: int  #: 16-byte vectors' worth of the head per lane

    @property
    def heads_per_block(self) -> int:
        """Heads that one block normalises."""
        return self.block // self.row_threads


def qk_norm_config(head_dim: int, itemsize: int) -> QkNormConfig | None:
    """The smallest configuration whose lanes hold a head of ``head_dim`` values; None beyond the largest.

    A head is 128 to 512 bytes in the models that use this norm (64 to 256 bf16 values): 8 to 32 lanes of one
    16-byte vector each, so that a warp normalises one to four heads with shuffles only and every lane moves one
    vector in and one out. Longer heads give each lane up to 4 vectors. Blocks of 128 threads.
    """
    lanes = 16 // itemsize
    for row_threads, vecs in CONFIGS:
        if row_threads * vecs * lanes >= head_dim:
            return QkNormConfig(_BLOCK, row_threads, vecs)
    return None


def heads_per_group(count: Any) -> int:
    """Heads each row group normalises: MANY_HEADS for MANY_HEADS_FROM heads or more in all, else one."""
    return MANY_HEADS if type(count) is int and count >= MANY_HEADS_FROM else 1


def _precompile() -> list[dict[str, Any]]:
    return [
        {"dtype": dtype, "gemma": gemma, "vector": vector, **QkNormConfig(_BLOCK, *c)._asdict(), "heads": heads}
        for dtype in ("float32", "float16", "bfloat16")
        for gemma in (False, True)
        for vector in (True, False)
        for c in CONFIGS
        for heads in (1, MANY_HEADS)
    ]


def head_config(D: Any, dtype: cujit.DType) -> QkNormConfig:
    """The configuration of a call with heads of ``D`` values (the largest for a size refused or traced)."""
    found = qk_norm_config(D, dtype.itemsize) if type(D) is int else None
    return found if found is not None else QkNormConfig(_BLOCK, *CONFIGS[-1])  # refused below, or traced


def vector_layout(q: Any, k: Any, q_weight: Any, k_weight: Any, D: Any, T: Any, QS: Any, KS: Any,
                  dtype: cujit.DType) -> bool:
    """Whether a call takes the 16-byte vector layout (whole vectors per head; q, k, their rows and weights aligned).

    The two layouts sum a head's squares in different orders: a kernel that must give qk_rms_norm's bits decides
    with this function.
    """
    if type(D) is not int:
        return False  # a traced call launches nothing: no test of symbolic sizes
    lanes = 16 // dtype.itemsize
    return (D % lanes == 0 and aligned(q, 16) and aligned(k, 16) and aligned(q_weight, 16)
            and aligned(k_weight, 16) and (T <= 1 or (QS % lanes == 0 and KS % lanes == 0)))


def distinct(q: Any, k: Any, T: Any, QW: Any, KW: Any) -> bool:
    """Whether q and k start at different addresses (a partial overlap is the caller's to avoid)."""
    if T == 0 or QW == 0 or KW == 0:
        return True
    pq, pk = data_address(q), data_address(k)
    return pq is None or pq != pk


_T, _QW, _KW, _QS, _KS, _D = (cujit.SymbolicSize(n) for n in ("T", "QW", "KW", "QS", "KS", "D"))
_DTYPE = cujit.SymbolicDType("dtype")
_FLOATS = ("float32", "float16", "bfloat16")

qk_rms_norm = cujit.op(
    "cujit::qk_rms_norm(Tensor(a!) q, Tensor(b!) k, Tensor q_weight, Tensor k_weight, float eps=1e-6, *, "
    "bool gemma=False) -> ()",
    source="kernels/qk_norm.cuh",
    kernel="qk_rms_norm_kernel<{dtype}, {gemma}, {vector}, {block}, {row_threads}, {vecs}, {heads}>",
    tensors={
        "q": cujit.TensorMatcher([_T, _QW]).with_strides([_QS, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "k": cujit.TensorMatcher([_T, _KW]).with_strides([_KS, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "q_weight": cujit.TensorMatcher([_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "k_weight": cujit.TensorMatcher([_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
    },
    values={
        "q_heads": "QW // D if D > 0 else 0",
        "kv_heads": "KW // D if D > 0 else 0",
        "per_token": "max(q_heads + kv_heads, 1)",
        "count": "T * (q_heads + kv_heads)",
        "config": head_config,
        "vector": vector_layout,
        "block": "config.block",
        "row_threads": "config.row_threads",
        "vecs": "config.vecs",
        "heads": (heads_per_group, "count"),
    },
    checks=[
        ("D > 0", "q_weight: expected at least one value (head_dim)"),
        ("D * dtype.itemsize <= 2048", "q_weight: expected head_dim up to 2048 bytes (1024 fp16 / bf16, 512 fp32)"),
        ("QW % D == 0 and KW % D == 0", "q and k: expected rows of whole heads (widths multiples of head_dim)"),
        ("T <= 1 or (abs(QS) >= QW and abs(KS) >= KW)", "q and k: rows overlap (a row stride below the width)"),
        ("count < 2**31", "q and k: expected fewer than 2**31 heads in all"),
        (distinct, "q and k must be different tensors"),
    ],
    grid="cdiv(count, config.heads_per_block * heads)",
    block="block",
    args=("q", "k", "q_weight", "k_weight", "count", "q_heads", "per_token", "QS", "KS", "D", "eps"),
    precompile=_precompile(),
    pdl=True,
)
