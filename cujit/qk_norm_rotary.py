"""Per-head RMSNorm of q and k, then rotary embedding, in place, in one kernel: ``qk_norm_rotary``.

``qk_norm_rotary(positions, q, k, q_weight, k_weight, cos_sin_cache, *, head_size, eps=1e-6, is_neox=True,
gemma=False, rotary_dim=None)``: the q / k norm and RoPE of Qwen3 and Gemma 3 attention in one pass over q and k.
Each head becomes ``rope(round(head * rsqrt(mean(head**2) + eps) * w))`` (``w`` is ``q_weight`` or ``k_weight``;
``1 + w`` with ``gemma=True``).

- ``q`` [tokens, q_heads * head_size] and ``k`` [tokens, kv_heads * head_size]: float32, float16 or bfloat16, rows
  at any stride (the q and k slices of a fused qkv tensor work as they are; they must not overlap). A
  [tokens, heads, head_size] tensor is passed as its ``flatten(1)`` view.
- ``q_weight`` and ``k_weight`` [head_size] of q's dtype; ``head_size`` must equal their length, up to 2048 bytes
  (1024 fp16 / bf16 values, 512 fp32), as for :func:`cujit.qk_rms_norm.qk_rms_norm`.
- ``positions`` [tokens], int32 or int64; ``cos_sin_cache`` [max_position, rotary_dim], float32 or q's dtype, cos
  in the first half of a row and sin in the second; ``rotary_dim`` (the cache's width, which ``rotary_dim`` must
  equal when given) even and at most ``head_size``: only the first ``rotary_dim`` values of each head are rotated.
  ``is_neox``: rotate halves (neox) or interleaved pairs (gpt-j), as :func:`cujit.rotary_embedding.rotary_embedding`.

Rounding: the normalised head is computed in fp32 from the stored values and rounded to the storage dtype, then
rotated in fp32 (a fused multiply-add per value) and rounded again. The rounding in between is deliberate: a model
that runs its q_norm and its rope as two ops rounds there, and with it the result is bit for bit
``qk_rms_norm(q, k, q_weight, k_weight, eps, gemma=gemma)`` followed by ``rotary_embedding(positions, q, k,
cos_sin_cache, is_neox=is_neox, head_size=head_size)``, in one launch that reads and writes q and k once instead of
twice.

Positions outside [0, max_position) fail the launch as in rotary_embedding (a device-side trap; the context is
unusable afterwards). The kernel is ``qk_norm_rotary_kernel`` in ``cujit/kernels/qk_norm_rotary.cuh``, in one of two
forms (:func:`halves_form`): the halves form where it applies (neox style, the whole head rotated, aligned rows and
weights, heads of 2 to 32 vectors' worth), the exchanging form for every other call.
"""

from __future__ import annotations

import functools
from typing import Any

import cujit

from .qk_rms_norm import (
    CONFIGS,
    MANY_HEADS_FROM,
    QkNormConfig,
    distinct,
    head_config,
    qk_norm_config,
    vector_layout,
)

__all__ = ["HALVES_HEADS", "HALVES_SPAN", "ROTARY_HEADS", "ROTARY_SPAN", "halves_form", "qk_norm_rotary",
           "rotary_config", "rotary_heads_per_group", "rotary_span"]

#: Heads a row group loads at once from MANY_HEADS_FROM heads in all, and the consecutive heads it takes in turn:
#: mostly heads of one token, whose position and angles the group loads once for all of them. Measured on an H100
#: with benchmarks/tune_qk_norm_rotary.py (4097 tokens of Qwen3-8B's 32 + 8 heads of 128, bf16): one head at a time
#: over runs of 4 took 48.7 us, runs of 8 53.9 us, two at a time over runs of 8 60.0 us (72 registers against 64:
#: fewer threads resident), one head per group (no runs) 85.6 us; Gemma 3's heads of 256: 56.7 / 55.8 / 60.0 /
#: 97.7 us.
ROTARY_HEADS = 1
ROTARY_SPAN = 4
#: The same for the halves form. Measured on an H200 with benchmarks/tune_qk_norm_rotary.py (bf16, times in us,
#: the exchanging form's best in brackets): Qwen3-8B's 32 + 8 heads of 128 at 4097 tokens, two heads at a time over
#: runs of 4 29.3 (46.9), one over runs of 4 29.1, one per group 34.7; Gemma 3's 16 + 8 heads of 256, 32.8 (53.1);
#: Qwen3 at 512 tokens 8.4 (13.8), where one over runs of 4 took 9.3. Below MANY_HEADS_FROM heads, one head per
#: group: 2.35 (2.91) at 64 tokens, 2.02 (2.18) at one token.
HALVES_HEADS = 2
HALVES_SPAN = 4


@functools.lru_cache(maxsize=1024)  # called on every op call, with the few head sizes of a model
def _halves_config(D: int, itemsize: int) -> QkNormConfig | None:
    """qk_rms_norm's configuration for heads of ``D`` values with half its lanes per head.

    None where the halves form cannot reproduce its layout: not one vector a lane, or heads that do not fill the
    lanes exactly.
    """
    base = qk_norm_config(D, itemsize)
    if base is None or base.vecs != 1 or base.row_threads < 2 or D != base.row_threads * (16 // itemsize):
        return None
    return QkNormConfig(base.block, base.row_threads // 2, 1)


def halves_form(is_neox: bool, vector: bool, R: Any, D: Any, dtype: cujit.DType) -> bool:
    """Whether a call takes the halves form.

    That is: neox style, the whole head rotated, the vector layout, and heads of exactly 2 * L values per lane pair
    of qk_rms_norm's one-vector configuration (L values a 16-byte vector), so that each lane can hold a vector of
    each half and give the same bits.
    """
    return bool(is_neox and vector and type(D) is int and R == D and _halves_config(D, dtype.itemsize) is not None)


def rotary_config(D: Any, dtype: cujit.DType, halves: bool) -> QkNormConfig:
    """The lanes of a call: qk_rms_norm's configuration, or for the halves form half its lanes per head."""
    found = _halves_config(D, dtype.itemsize) if halves else None
    return found if found is not None else head_config(D, dtype)


def rotary_heads_per_group(count: Any, halves: bool = False) -> int:
    """Heads each row group loads at once: ROTARY_HEADS (HALVES_HEADS) from MANY_HEADS_FROM heads, else one."""
    many = type(count) is int and count >= MANY_HEADS_FROM
    return (HALVES_HEADS if halves else ROTARY_HEADS) if many else 1


def rotary_span(count: Any, halves: bool = False) -> int:
    """Consecutive heads each row group takes: ROTARY_SPAN (HALVES_SPAN) from MANY_HEADS_FROM heads, else one.

    Fewer heads spread over as many row groups, and SMs, as they can.
    """
    many = type(count) is int and count >= MANY_HEADS_FROM
    return (HALVES_SPAN if halves else ROTARY_SPAN) if many else 1


def _precompile() -> list[dict[str, Any]]:
    """What serving calls take, and every other value of each template parameter at least once.

    Serving: bf16 and fp16, a float32 or same-dtype cache, int64 positions, neox style, both weight forms, heads of
    64, 128 and 256, aligned views, one or ROTARY_HEADS heads per row group. Besides (one head per group): gpt-j
    style, float32 rows, int32 positions, the element layout of unaligned views, and the configurations of longer
    heads.
    """
    def entry(dtype: str, cs: str, pos: str, neox: bool, gemma: bool, vector: bool, head: int,
              heads: int = 1, halves: bool = False) -> dict[str, Any]:
        config = rotary_config(head, cujit.DType.of(dtype), halves)
        return {"dtype": dtype, "cs_dtype": cs, "pos_dtype": pos, "is_neox": neox, "gemma": gemma, "vector": vector,
                **config._asdict(), "heads": heads, "halves": halves}

    found = [entry(d, cs, "int64", True, gemma, True, head, heads, halves=True)
             for d in ("bfloat16", "float16") for cs in ("float32", d) for gemma in (False, True)
             for head in (64, 128, 256) for heads in (1, HALVES_HEADS)]
    found += [entry(d, cs, "int64", True, gemma, True, head, heads)  # partial rotary
              for d in ("bfloat16", "float16") for cs in ("float32", d) for gemma in (False, True)
              for head in (64, 128, 256) for heads in (1, ROTARY_HEADS)]
    found += [entry("bfloat16", "float32", "int64", True, gemma, False, head)
              for gemma in (False, True) for head in (64, 128, 256)]
    found += [entry("bfloat16", "float32", "int64", False, False, vector, 128) for vector in (True, False)]
    found += [entry("float32", "float32", "int64", neox, False, True, head)
              for neox in (True, False) for head in (64, 128, 256)]
    found += [entry("float32", "float32", "int64", True, False, True, head, halves=True) for head in (64, 128)]
    found += [entry("float32", "float32", "int64", True, False, False, 256),
              entry("bfloat16", "float32", "int32", True, False, True, 128)]
    lanes = 8  # bf16 values per 16-byte vector: the heads that need the larger configurations
    found += [entry("bfloat16", "float32", "int64", True, False, vector, rt * vecs * lanes)
              for rt, vecs in CONFIGS[3:] for vector in (True, False)]
    unique = {tuple(sorted(f.items())): f for f in found}
    return list(unique.values())


_T, _QW, _KW, _QS, _KS, _D = (cujit.SymbolicSize(n) for n in ("T", "QW", "KW", "QS", "KS", "D"))
_P, _R = cujit.SymbolicSize("P"), cujit.SymbolicSize("R")
_DTYPE, _CS_DTYPE, _POS_DTYPE = (cujit.SymbolicDType(n) for n in ("dtype", "cs_dtype", "pos_dtype"))
_FLOATS = ("float32", "float16", "bfloat16")

qk_norm_rotary = cujit.op(
    "cujit::qk_norm_rotary(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor q_weight, Tensor k_weight, "
    "Tensor cos_sin_cache, *, int head_size, float eps=1e-6, bool is_neox=True, bool gemma=False, "
    "int? rotary_dim=None) -> ()",
    source="kernels/qk_norm_rotary.cuh",
    kernel="qk_norm_rotary_kernel<{dtype}, {cs_dtype}, {pos_dtype}, {is_neox}, {gemma}, {vector}, {block}, "
           "{row_threads}, {vecs}, {heads}, {halves}>",
    tensors={
        "positions": cujit.TensorMatcher([_T]).with_dtype("int32", "int64", symbol=_POS_DTYPE),
        "q": cujit.TensorMatcher([_T, _QW]).with_strides([_QS, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "k": cujit.TensorMatcher([_T, _KW]).with_strides([_KS, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "q_weight": cujit.TensorMatcher([_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "k_weight": cujit.TensorMatcher([_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "cos_sin_cache": cujit.TensorMatcher([_P, _R]).with_dtype(*_FLOATS, symbol=_CS_DTYPE),
    },
    values={
        "q_heads": "QW // D if D > 0 else 0",
        "kv_heads": "KW // D if D > 0 else 0",
        "per_token": "max(q_heads + kv_heads, 1)",
        "count": "T * (q_heads + kv_heads)",
        "vector": vector_layout,
        "halves": halves_form,
        "config": rotary_config,
        "block": "config.block",
        "row_threads": "config.row_threads",
        "vecs": "config.vecs",
        "heads": (rotary_heads_per_group, "count", "halves"),
        "span": (rotary_span, "count", "halves"),
    },
    checks=[
        ("head_size == D", "head_size: expected the length of q_weight and k_weight"),
        ("D > 0", "q_weight: expected at least one value (head_size)"),
        ("D * dtype.itemsize <= 2048",
         "q_weight: expected head_size up to 2048 bytes (1024 fp16 / bf16, 512 fp32)"),
        ("QW % D == 0 and KW % D == 0", "q and k: expected rows of whole heads (widths multiples of head_size)"),
        ("T <= 1 or (abs(QS) >= QW and abs(KS) >= KW)", "q and k: rows overlap (a row stride below the width)"),
        ("count < 2**31", "q and k: expected fewer than 2**31 heads in all"),
        (distinct, "q and k must be different tensors"),
        ("rotary_dim is None or rotary_dim == R", "rotary_dim: expected the width of cos_sin_cache"),
        ("R > 0 and R % 2 == 0", "cos_sin_cache: expected an even, non-zero number of columns (the rotary dim)"),
        ("R <= D", "cos_sin_cache: expected at most head_size columns (the rotary dim)"),
        ("cs_dtype == 'float32' or cs_dtype == dtype", "cos_sin_cache: expected float32 or the dtype of q and k"),
        ("T == 0 or P > 0", "cos_sin_cache: expected at least one row"),
    ],
    grid="cdiv(count, config.heads_per_block * span)",
    block="block",
    args=("positions", "q", "k", "q_weight", "k_weight", "cos_sin_cache", "count", "q_heads", "per_token", "QS",
          "KS", "D", "R", "P", "span", "eps"),
    precompile=_precompile(),
    pdl=True,
)
