"""``silu_and_mul(x, *, out=None)``: ``silu(x[..., :d]) * x[..., d:]`` for a contiguous [..., 2d] tensor.

Computed in fp32 from the stored values and rounded once, for float32, float16 and bfloat16 (torch's
``F.silu(a) * b`` rounds ``silu(a)`` to the storage dtype first, so it can differ by one unit in the last place).
The kernel is ``silu_and_mul_kernel`` in ``cujit/kernels/activation.cuh``; this module also holds the choice of its
template parameters (:func:`activation_config`) and of the row path's layout (:func:`row_layout`), which
``gelu_and_mul`` shares: the vector path when d is whole 16-byte vectors and x and out are 16-byte aligned, the
row path (cujit/rows.cuh) for every other d and alignment.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import cujit

__all__ = [
    "BLOCK",
    "GATED_ARGS",
    "GATED_CHECK",
    "GATED_GRID",
    "GATED_TENSORS",
    "GATED_VALUES",
    "ROW_VECS",
    "SEGMENT_VECS",
    "VECTOR_VECS",
    "ActivationConfig",
    "RowLayout",
    "activation_config",
    "activation_precompile",
    "gated_layout",
    "row_layout",
    "silu_and_mul",
]


#: Threads per block of both paths.
BLOCK = 256
#: 16-byte output vectors a thread loads before it computes: one on both paths (on the row path, row_map's
#: kUnroll).
VECTOR_VECS = 1
ROW_VECS = 1
#: 16-byte output vectors per thread of a row segment on the row path: a group of BLOCK threads walks up to
#: BLOCK * SEGMENT_VECS vectors of a row, ROW_VECS at a time.
SEGMENT_VECS = 2


class ActivationConfig(NamedTuple):
    """The template parameters of one activation kernel instantiation."""

    block: int  #: threads per block
    vecs: int  #: 16-byte output vectors per thread (per round, on the row path)
    row_path: bool = False  #: the row path (any d and alignment) rather than the vector path


class RowLayout(NamedTuple):
    """How the row path walks a row of ``d`` output values: the run-time arguments of its kernel."""

    group: int  #: threads per segment: a power of two dividing the block
    seg: int  #: values per segment (the last segment of a row is shorter)
    segs: int  #: segments per row: cdiv(d, seg)


def activation_config(d: int, dtype: Any, vector: bool = True) -> ActivationConfig:
    """The kernel configuration for outputs of ``d`` values per row of ``dtype``.

    ``vector``: whether d is a multiple of a 16-byte vector's values and x and out are 16-byte aligned (the test
    the op makes, as the value ``vector``). Then the vector path: one 16-byte output vector per thread (two
    16-byte loads), 256 threads per block, whatever the shape: the grid covers the whole tensor, so the row length
    changes nothing but the tail. At 40 registers or fewer a thread (the kernel's launch bounds), six such blocks
    are resident per SM: 1536 threads x 32 bytes = 48 KB of loads in flight, above the 25-30 KB an H100 or H200
    SM needs to reach full bandwidth; two vectors a thread add nothing but registers, and a grid-stride loop
    measured slower for the same memory-bound shape (add_constant).

    Otherwise the row path (:func:`row_layout` says how it walks a row): cujit::row_map with one vector a thread
    in flight, at most 64 registers a thread, four blocks of 256 per SM. Two vectors a thread at 85 registers
    (three blocks) keep more bytes in flight on paper, but row_map measured 0.73x a copy's time that way against
    0.89x at one vector (benchmarks/tune_rows.py, H100, rows of 4097 bf16).
    """
    del d, dtype  # the same for every shape until measurements say otherwise
    return ActivationConfig(BLOCK, VECTOR_VECS) if vector else ActivationConfig(BLOCK, ROW_VECS, True)


@functools.lru_cache(maxsize=1024)
def row_layout(d: int, itemsize: int, block: int = BLOCK, vecs: int = SEGMENT_VECS) -> RowLayout:
    """The segments and thread groups of the row path for rows of ``d`` values of ``itemsize`` bytes.

    A group of ``block`` threads walks up to ``block * vecs`` vectors (a "round": ``vecs`` steps of one vector a
    thread). A row with more whole vectors is cut into the fewest segments of about equal length (a multiple of the
    vector's values) that each fit in one round, so that few rows still spread over many blocks; a shorter row takes
    the smallest power-of-two group that holds it in one round, at least as many threads as a vector has values (so
    that the elements before the row's first 16-byte boundary and after its last whole vector take one step),
    several rows per block.
    """
    lanes = 16 // itemsize
    vectors = d // lanes
    full = block * vecs
    if vectors > full:
        seg = lanes * _cdiv(_cdiv(d, _cdiv(vectors, full)), lanes)
        return RowLayout(block, seg, _cdiv(d, seg))
    group = 1
    while group < block and (group * vecs < vectors or group < min(d, lanes)):
        group *= 2
    return RowLayout(group, max(d, 1), 1)


def gated_layout(d: int, dtype: Any, row_path: bool) -> RowLayout:
    """:func:`row_layout` for the row path; the vector path reads none of it (zeros)."""
    return row_layout(d, dtype.itemsize) if row_path else _NO_LAYOUT


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_NO_LAYOUT = RowLayout(0, 0, 0)


def activation_precompile(*variants: dict[str, Any]) -> list[dict[str, Any]]:
    """Every instantiation :func:`activation_config` chooses, for each dtype and each of ``variants``."""
    configs = {activation_config(d, dtype, vector) for d in (1, 1 << 20) for dtype in _FLOATS
               for vector in (True, False)}
    return [
        {"dtype": dtype, **variant, **c._asdict()}
        for dtype in _FLOATS
        for variant in variants or ({},)
        for c in sorted(configs)
    ]


_FLOATS = ("float32", "float16", "bfloat16")
_LEAD = cujit.SymbolicShape("lead")
_TWO_D, _D = cujit.SymbolicSize("two_d"), cujit.SymbolicSize("D")
_DTYPE = cujit.SymbolicDType("dtype")


#: What every gated activation op declares alike (gelu_and_mul too): x [..., 2d] and out [..., d] of one float
#: dtype, the row count, the configuration, the check of the last dimension, the grid and the kernel arguments.
GATED_TENSORS = {
    "x": cujit.TensorMatcher([_LEAD, _TWO_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
    "out": cujit.TensorMatcher([_LEAD, _D]).with_dtype(*_FLOATS, symbol=_DTYPE),
}
GATED_VALUES = {
    "D": "two_d // 2",
    "rows": "prod(lead)",
    "lanes": "16 // dtype.itemsize",
    # The vector path's condition; the kernel does not test it again. It reads out, so it is computed once out is
    # allocated (or checked).
    "vector": "D % lanes == 0 and aligned(x, 16) and aligned(out, 16)",
    "config": (activation_config, "D", "dtype", "vector"),
    "block": "config.block",
    "vecs": "config.vecs",
    "row_path": "config.row_path",
    "layout": (gated_layout, "D", "dtype", "row_path"),
    "group": "layout.group",
    "seg": "layout.seg",
    "segs": "layout.segs",
}
GATED_CHECK = ("two_d % 2 == 0", "x: the last dimension must be even (2 * d)")
GATED_GRID = "cdiv(rows * segs, block // group) if row_path else cdiv(rows * D, block * vecs * lanes)"
GATED_ARGS = ("out", "x", "rows", "D", "group", "seg", "segs")

silu_and_mul = cujit.op(
    "cujit::silu_and_mul(Tensor x, *, Tensor(a!)? out=None) -> Tensor",
    source="kernels/activation.cuh",
    kernel="silu_and_mul_kernel<{dtype}, {row_path}, {block}, {vecs}>",
    tensors=GATED_TENSORS,
    values=GATED_VALUES,
    checks=[GATED_CHECK],
    grid=GATED_GRID,
    block="block",
    args=GATED_ARGS,
    precompile=activation_precompile(),
    pdl=True,
)
