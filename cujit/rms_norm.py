"""``rms_norm(x, weight, eps=1e-6, *, gemma=False, out=None)``: RMSNorm over the rows of a [tokens, hidden] tensor.

``out = x * rsqrt(mean(x**2, -1) + eps) * weight`` (``* (1 + weight)`` with ``gemma=True``), computed in fp32 from
the stored values and rounded once, for float32, float16 and bfloat16. ``x``'s rows may be strided (a slice of a
wider tensor); ``out`` may be ``x``. The kernel is ``cujit/kernels/rms_norm.cuh``; this module also holds the
choice of its template parameters by hidden size (:func:`norm_config`), which ``fused_add_rms_norm`` shares.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple

import cujit

from ._runtime.dtypes import DType, as_dtype
from ._runtime.kernel_constants import header_constants
from ._runtime.ops import aligned
from ._runtime.tensors import tensor_info

__all__ = [
    "LOOP_ROWS", "LOOP_TOKENS", "PATH_PHASED", "PATH_PHASED_DIRECT", "PATH_SCALAR", "PATH_TILED", "PATH_VECTOR",
    "FUSED_ELEMENT_THREADS", "FUSED_FILL", "FUSED_SCALAR_CONFIGS", "PATH_VECTOR_LATE", "PHASED_CONFIGS",
    "SCALAR_CONFIGS", "TILED_CONFIG", "VECTOR_CONFIGS",
    "NormConfig", "data_address", "fused_layout_config", "layout_config", "norm_config", "norm_precompile", "rms_norm",
]

# rms_norm_detail::kPath*, read from the kernel's own header (cujit/kernels/norm_plan.cuh).
_KERNEL = header_constants("norm_plan.cuh")
PATH_VECTOR = _KERNEL["kPathVector"]  #: 16-byte vectors; the weight loaded with the row; ``rows`` rows per group
PATH_SCALAR = _KERNEL["kPathScalar"]  #: element loads, any alignment
PATH_TILED = _KERNEL["kPathTiled"]  #: rows longer than every one-tile configuration: two passes
PATH_PHASED = _KERNEL["kPathPhased"]  #: rows not 16-byte aligned: vectors from each row's first 16-byte boundary
PATH_VECTOR_LATE = _KERNEL["kPathVectorLate"]  #: the weight loaded after the reduction (chosen by no rule)
#: as PATH_PHASED, the weight read from global memory at each row's split instead of a shared-memory copy (chosen
#: by no rule: no faster than the staged weight on an H100; benchmarks/tune_norms.py times it)
PATH_PHASED_DIRECT = _KERNEL["kPathPhasedDirect"]

#: (threads per row, 16-byte vectors per thread) of the one-tile vector configurations, by increasing capacity.
VECTOR_CONFIGS: tuple[tuple[int, int], ...] = (
    (8, 1), (16, 1), (32, 1), (32, 4), (64, 4), (128, 4), (256, 4), (512, 4), (1024, 4),
)
#: Rows per row group of the phased path for many tokens, and the token count from which it applies. Below it a
#: block per row group keeps every SM busy sooner.
LOOP_ROWS = 4
LOOP_TOKENS = 1024
#: Rows that are not 16-byte aligned, when every tensor has the same alignment at each row (and the weight is
#: aligned): vectors from each row's first 16-byte boundary. At least 32 threads a row (the head and the tail
#: take one thread per element); the staged weight (the capacity's bytes of shared memory) at most 32 KB.
PHASED_CONFIGS: tuple[tuple[int, int], ...] = (
    (32, 1), (32, 2), (64, 2), (128, 2), (256, 2), (512, 2), (1024, 2),
)
#: Element loads, any alignment: (threads per row, 16-byte vectors' worth of values per thread), by increasing
#: capacity. rms_norm holds 2 vectors' worth a thread, fused_add_rms_norm 1 (it also keeps the sum it writes to
#: residual): at 16 bf16 values a thread the fused form took 2.9x as long as at 8 (4097 x 2881 on an H100).
SCALAR_CONFIGS: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (128, 2), (256, 2), (512, 2), (1024, 2))
FUSED_SCALAR_CONFIGS: tuple[tuple[int, int], ...] = ((32, 1), (64, 1), (128, 1), (256, 1), (512, 1), (1024, 1))
#: fused_add_rms_norm's element loads with more threads a row than this lose to the phased path, where it holds
#: the row, unless the row fills at least FUSED_FILL (a fraction) of their tile (see norm_config).
FUSED_ELEMENT_THREADS = 512
FUSED_FILL: tuple[int, int] = (7, 8)
#: Rows longer than every one-tile configuration holds: two passes, tile by tile.
TILED_CONFIG: tuple[int, int] = (1024, 2)
_MIN_BLOCK = 128


class NormConfig(NamedTuple):
    """The template parameters of one norm kernel instantiation."""

    path: int  #: PATH_VECTOR, PATH_SCALAR, PATH_TILED, PATH_PHASED, PATH_VECTOR_LATE or PATH_PHASED_DIRECT
    block: int  #: threads per block
    row_threads: int  #: threads per row (a power of two; a block holds block // row_threads row groups)
    vecs: int  #: 16-byte vectors' worth of the row per thread
    rows: int = 1  #: rows each row group normalises in turn (PATH_VECTOR and PATH_PHASED only)

    @property
    def rows_per_block(self) -> int:
        """Rows that one block normalises."""
        return self.block // self.row_threads * self.rows


def _make(path: int, row_threads: int, vecs: int, rows: int = 1) -> NormConfig:
    return NormConfig(path, max(row_threads, _MIN_BLOCK), row_threads, vecs, rows)


def norm_config(hidden: int, dtype: Any, vector: bool, phased: bool = False, tokens: int = 1, *,
                fused: bool = False) -> NormConfig:
    """The kernel configuration for ``tokens`` rows of ``hidden`` values of ``dtype``.

    ``vector``: whether 16-byte vectors apply (hidden a multiple of 16 bytes' worth of values; every row start and
    the weight 16-byte aligned). ``phased``: otherwise, whether the weight is 16-byte aligned, so that rows can
    be split at the 16-byte boundaries of out (of residual for the fused form), x read at any offset from it
    (:func:`layout_config`). ``fused``: for fused_add_rms_norm (its element loads hold fewer values a thread).
    The choice, by capacity (threads per row x vectors per thread x values per vector
    must cover the row, so that the row is read once and kept in registers):

    - Each thread holds at most 4 vectors (64 bytes of the row, 16 registers, plus 16 for the weight, loaded with
      the row). With at most 64 registers a thread, an SM keeps 1024 or more threads, 64 KB of loads in flight:
      more than the 25-30 KB that the memory latency times the bandwidth per SM asks for on an H100 or H200
      (3.35-4.8 TB/s x about 1 us / 132 SMs), so a row longer than 4 vectors a thread gets more threads instead.
    - Aligned rows take one row per row group at every token count. Looping over LOOP_ROWS rows per group, with
      the next row's loads issued before the current row is reduced (PATH_VECTOR with ``rows`` > 1, which
      benchmarks/tune_norms.py still times), was 1-12% slower for bf16 rows of 64 to 16384 values at 4097 tokens
      on an H200 than one row a group with up to 4 vectors a thread, whose loads already keep enough bytes in
      flight (the point above); the next row's vectors only add registers.
    - Threads per row grow with the row (32 to 1024, then a whole block per row), so the reduction crosses at
      most one shared-memory step; rows of at most 256 bytes take 8 or 16 threads (two or four rows per warp),
      so that short rows, e.g. a per-head norm of 64 or 128 values, keep every lane busy.
    - Blocks have at least 128 threads (several rows per block for small rows), so that 16 resident blocks fill
      an SM.
    - Rows that are not 16-byte aligned take the vector loads of PHASED_CONFIGS, with LOOP_ROWS rows per group
      from LOOP_TOKENS tokens on, which amortises the weight's copy to shared memory (4% faster at 4097 x 4097
      bf16 on an H200). Their capacity counts the body's whole vectors only (hidden // lanes of them at most):
      the head and tail, under a vector each, take one element a thread besides, so that a row of 4097 values
      takes as many threads as one of 4096. But where element loads hold the row in no more threads x values
      than the phased path's tile (SCALAR_CONFIGS, FUSED_SCALAR_CONFIGS), they take it: the phased path's shifted
      reads and staged weight cost more than its vectors save. On an H100 at 4097 tokens in bf16, element loads
      took 27.2 against 30.8 us at 2881 values and 30.4 against 37.1 us with x one element into rows of 4096 (the
      fused form: 43.4 against 50.5 and 58.6 against 103 us), while at 4097 values, where they need twice the
      threads, the phased path took 34.8 against 45.4 us (the fused form 59.7 against 98 us). The fused form's
      element loads take at most FUSED_ELEMENT_THREADS threads where the phased path holds the row, unless the
      row fills at least FUSED_FILL of the element tile: at 5121 values (641 of the 1024 vectors' worth of
      either tile) the phased 512 x 2 took 92.2 against 104.9 us for element loads of 1024 x 1, at 8192 values
      with x one element in (the whole tile) 213.9 against 142.9 us (H100, 4096-4097 tokens). The cut at 7/8
      lies between those two measured fills.
    - Rows with a weight that is not 16-byte aligned load element by element, one register per value: half the
      values per thread (2 vectors' worth, 1 for the fused form) for the same registers.
    - Rows longer than every configuration (bf16 beyond 32768, fp32 beyond 16384 when aligned) take two passes
      of 1024 threads over tiles, the second pass reading the row again, mostly from L1/L2.
    """
    return _rule(hidden, dtype, vector, phased, tokens >= LOOP_TOKENS, fused)


def _first_holding(configs: tuple[tuple[int, int], ...], values: int) -> tuple[int, int] | None:
    """The first (threads, vectors per thread) of ``configs`` whose tile holds ``values`` 16-byte vectors."""
    return next(((rt, v) for rt, v in configs if rt * v >= values), None)


@functools.lru_cache(maxsize=4096)  # called on every op call, with the few hidden sizes of a model
def _rule(hidden: int, dtype: Any, vector: bool, phased: bool, many: bool, fused: bool = False) -> NormConfig:
    lanes = 16 // as_dtype(dtype).itemsize
    if vector:
        found = _first_holding(VECTOR_CONFIGS, -(-hidden // lanes))
        return _make(PATH_VECTOR, *found) if found else _make(PATH_TILED, *TILED_CONFIG)
    # element loads: one register a value, so a tile holds threads x vectors x lanes values
    vectors = -(-hidden // lanes)  # the row in 16-byte vectors' worth
    scalar = _first_holding(FUSED_SCALAR_CONFIGS if fused else SCALAR_CONFIGS, vectors)
    split = _first_holding(PHASED_CONFIGS, hidden // lanes) if phased else None  # the head and tail held besides
    if split and (scalar is None or scalar[0] * scalar[1] > split[0] * split[1]
                  or (fused and scalar[0] > FUSED_ELEMENT_THREADS
                      and vectors * FUSED_FILL[1] < FUSED_FILL[0] * scalar[0] * scalar[1])):
        return _make(PATH_PHASED, *split, LOOP_ROWS if many else 1)
    return _make(PATH_SCALAR, *scalar) if scalar else _make(PATH_TILED, *TILED_CONFIG)


def norm_precompile(fused: bool = False) -> list[dict[str, Any]]:
    """Every instantiation :func:`norm_config` can choose, for each dtype and both weight forms.

    ``fused``: for fused_add_rms_norm, whose element loads hold fewer values a thread.
    """
    configs = [_make(PATH_VECTOR, *c) for c in VECTOR_CONFIGS]
    configs += [_make(PATH_PHASED, *c, rows) for c in PHASED_CONFIGS for rows in (1, LOOP_ROWS)]
    configs += [_make(PATH_SCALAR, *c) for c in (FUSED_SCALAR_CONFIGS if fused else SCALAR_CONFIGS)]
    configs.append(_make(PATH_TILED, *TILED_CONFIG))
    return [
        {"dtype": dtype, "gemma": gemma, "config": c}
        for dtype in ("float32", "float16", "bfloat16")
        for gemma in (False, True)
        for c in configs
    ]


def data_address(tensor: Any) -> int:
    """The address of ``tensor``'s first element (a torch tensor, a CuPy array or any DLPack producer)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensor, torch.Tensor):
        return int(tensor.data_ptr())
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(tensor, cupy.ndarray):
        return int(tensor.data.ptr)
    return tensor_info(tensor).ptr


def layout_config(H: int, dtype: DType, vector: bool, T: int, weight: Any) -> NormConfig:
    """:func:`norm_config` for one rms_norm call of ``T`` rows of hidden size ``H``.

    Rows that are not 16-byte aligned may take the phased path whenever the weight is: it reads and writes x at
    any offset from the tensor whose boundaries it follows (out, or residual).
    """
    return _rule(H, dtype, vector, not vector and aligned(weight, 16), T >= LOOP_TOKENS)


def fused_layout_config(H: int, dtype: DType, vector: bool, T: int, weight: Any) -> NormConfig:
    """:func:`layout_config` for fused_add_rms_norm (``norm_config(..., fused=True)``)."""
    return _rule(H, dtype, vector, not vector and aligned(weight, 16), T >= LOOP_TOKENS, True)


# ------------------------------------------------------------------------------------------------ the op
_FLOATS = ("float32", "float16", "bfloat16")
_T, _H = cujit.SymbolicSize("T"), cujit.SymbolicSize("H")
_X_STRIDE, _OUT_STRIDE = cujit.SymbolicSize("x_stride"), cujit.SymbolicSize("out_stride")
_DTYPE = cujit.SymbolicDType("dtype")

rms_norm = cujit.op(
    "cujit::rms_norm(Tensor x, Tensor weight, float eps=1e-6, *, bool gemma=False, Tensor(a!)? out=None) -> Tensor",
    source="kernels/rms_norm.cuh",
    kernel="rms_norm_kernel<{dtype}, {gemma}, {config.path}, {config.block}, {config.row_threads}, {config.vecs}, "
           "{config.rows}>",
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
        "config": (layout_config, "H", "dtype", "vector", "T", "weight"),
    },
    checks=[("T <= 1 or abs(out_stride) >= H", "out: rows overlap (a row stride below hidden)")],
    grid="cdiv(T, config.rows_per_block) if H else 0",
    block="config.block",
    args=("out", "x", "weight", "T", "H", "x_stride", "out_stride", "eps"),
    precompile=norm_precompile(),
    pdl=True,
)
