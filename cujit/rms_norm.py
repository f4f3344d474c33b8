"""``rms_norm(x, weight, eps=1e-6, *, gemma=False, out=None)``: RMSNorm over the rows of a [tokens, hidden] tensor.

``out = x * rsqrt(mean(x**2, -1) + eps) * weight`` (``* (1 + weight)`` with ``gemma=True``), computed in fp32 from
the stored values and rounded once, for float32, float16 and bfloat16. ``x``'s rows may be strided (a slice of a
wider tensor); ``out`` may be ``x``. The kernel is ``cujit/kernels/rms_norm.cuh``; this module also holds the
choice of its template parameters by hidden size (:func:`norm_config`), which ``fused_add_rms_norm`` shares.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import cujit

from ._runtime.dtypes import DType, as_dtype

__all__ = [
    "PATH_SCALAR", "PATH_TILED", "PATH_VECTOR", "SCALAR_CONFIGS", "TILED_CONFIG", "TRACING_CONFIG", "VECTOR_CONFIGS",
    "NormConfig", "kernel_config", "norm_config", "norm_precompile", "rms_norm",
]

# rms_norm_detail::kPath* in the kernel.
PATH_VECTOR = 0
PATH_SCALAR = 1
PATH_TILED = 2

#: (threads per row, 16-byte vectors per thread) of the one-tile vector configurations, by increasing capacity.
VECTOR_CONFIGS: tuple[tuple[int, int], ...] = (
    (8, 1), (16, 1), (32, 1), (32, 4), (64, 4), (128, 4), (256, 4), (512, 4), (1024, 4),
)
#: The same for rows that are not 16-byte aligned or not a whole number of vectors.
SCALAR_CONFIGS: tuple[tuple[int, int], ...] = ((32, 2), (128, 2), (512, 2))
#: Rows longer than every one-tile configuration holds: two passes, tile by tile.
TILED_CONFIG: tuple[int, int] = (1024, 2)
_MIN_BLOCK = 128


class NormConfig(NamedTuple):
    """The template parameters of one norm kernel instantiation."""

    path: int  #: PATH_VECTOR, PATH_SCALAR or PATH_TILED
    block: int  #: threads per block
    row_threads: int  #: threads per row (a power of two; a block holds block // row_threads rows)
    vecs: int  #: 16-byte vectors' worth of the row per thread

    @property
    def rows_per_block(self) -> int:
        """Rows that one block normalises."""
        return self.block // self.row_threads


def _make(path: int, row_threads: int, vecs: int) -> NormConfig:
    return NormConfig(path, max(row_threads, _MIN_BLOCK), row_threads, vecs)


@functools.lru_cache(maxsize=4096)  # called on every op call, with the few hidden sizes of a model
def norm_config(hidden: int, dtype: Any, vector: bool) -> NormConfig:
    """The kernel configuration for rows of ``hidden`` values of ``dtype``.

    ``vector``: whether 16-byte vectors apply (hidden a multiple of 16 bytes' worth of values; every row start and
    the weight 16-byte aligned). The choice, by capacity (threads per row x vectors per thread x values per vector
    must cover the row, so that the row is read once and kept in registers):

    - Each thread holds at most 4 vectors (64 bytes of the row, 16 registers, plus 16 for the weight after the
      reduction). With at most 64 registers a thread, an SM keeps 1024 or more threads, 64 KB of loads in flight:
      more than the 25-30 KB that the memory latency times the bandwidth per SM asks for on an H100 or H200
      (3.35-4.8 TB/s x about 1 us / 132 SMs), so a row longer than 4 vectors a thread gets more threads instead.
    - Threads per row grow with the row (32 to 1024, then a whole block per row), so the reduction crosses at
      most one shared-memory step; rows of at most 256 bytes take 8 or 16 threads (two or four rows per warp),
      so that short rows, e.g. a per-head norm of 64 or 128 values, keep every lane busy.
    - Blocks have at least 128 threads (several rows per block for small rows), so that 16 resident blocks fill
      an SM.
    - Rows that are not 16-byte aligned load element by element, one register per value: half the values per
      thread (2 vectors' worth) for the same registers.
    - Rows longer than every configuration (bf16 beyond 32768, fp32 beyond 16384 when aligned) take two passes
      of 1024 threads over tiles, the second pass reading the row again, mostly from L1/L2.
    """
    lanes = 16 // as_dtype(dtype).itemsize
    for row_threads, vecs in VECTOR_CONFIGS if vector else SCALAR_CONFIGS:
        if row_threads * vecs * lanes >= hidden:
            return _make(PATH_VECTOR if vector else PATH_SCALAR, row_threads, vecs)
    return _make(PATH_TILED, *TILED_CONFIG)


def norm_precompile() -> list[dict[str, Any]]:
    """Every instantiation that :func:`norm_config` can choose, for each dtype and both weight forms."""
    configs = [_make(PATH_VECTOR, *c) for c in VECTOR_CONFIGS]
    configs += [_make(PATH_SCALAR, *c) for c in SCALAR_CONFIGS]
    configs.append(_make(PATH_TILED, *TILED_CONFIG))
    return [
        {"dtype": dtype, "gemma": gemma, **c._asdict()}
        for dtype in ("float32", "float16", "bfloat16")
        for gemma in (False, True)
        for c in configs
    ]


#: The configuration of a traced call (fake tensors, symbolic sizes): tracing launches nothing, so it picks nothing.
TRACING_CONFIG = _make(PATH_TILED, *TILED_CONFIG)


def kernel_config(H: Any, dtype: DType, vector: bool) -> NormConfig:
    """:func:`norm_config` for one call of hidden size ``H`` (the op passes its values by these names).

    :data:`TRACING_CONFIG` when ``H`` is symbolic: a traced call launches nothing.
    """
    if type(H) is not int:
        return TRACING_CONFIG
    return norm_config(H, dtype, vector)


# ------------------------------------------------------------------------------------------------ the op
_FLOATS = ("float32", "float16", "bfloat16")
_T, _H = cujit.SymbolicSize("T"), cujit.SymbolicSize("H")
_X_STRIDE, _OUT_STRIDE = cujit.SymbolicSize("x_stride"), cujit.SymbolicSize("out_stride")
_DTYPE = cujit.SymbolicDType("dtype")

rms_norm = cujit.op(
    "cujit::rms_norm(Tensor x, Tensor weight, float eps=1e-6, *, bool gemma=False, Tensor(a!)? out=None) -> Tensor",
    source="kernels/rms_norm.cuh",
    kernel="rms_norm_kernel<{dtype}, {gemma}, {path}, {block}, {row_threads}, {vecs}>",
    tensors={
        "x": cujit.TensorMatcher([_T, _H]).with_strides([_X_STRIDE, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "weight": cujit.TensorMatcher([_H]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "out": cujit.TensorMatcher([_T, _H]).with_strides([_OUT_STRIDE, 1]).with_dtype(*_FLOATS, symbol=_DTYPE),
    },
    values={
        "lanes": "16 // dtype.itemsize",  # values per 16-byte vector
        # Whole vectors per row, and every row start and the weight 16-byte aligned. It reads out, so it is
        # computed once out is allocated (or checked).
        "vector": "H % lanes == 0 and aligned(x, 16) and aligned(weight, 16) and aligned(out, 16) "
                  "and (T <= 1 or (x_stride % lanes == 0 and out_stride % lanes == 0))",
        "config": kernel_config,
        "path": "config.path",
        "block": "config.block",
        "row_threads": "config.row_threads",
        "vecs": "config.vecs",
    },
    checks=[("T <= 1 or abs(out_stride) >= H", "out: rows overlap (a row stride below hidden)")],
    grid="cdiv(T, config.rows_per_block) if H else 0",
    block="block",
    args=("out", "x", "weight", "T", "H", "x_stride", "out_stride", "eps"),
    precompile=norm_precompile(),
    pdl=True,
)
