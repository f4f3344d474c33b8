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
from ._runtime.tensors import TensorInfo, tensor_info

__all__ = [
    "PATH_SCALAR", "PATH_TILED", "PATH_VECTOR", "SCALAR_CONFIGS", "TILED_CONFIG", "TRACING_CONFIG", "VECTOR_CONFIGS",
    "NormConfig",
    "address", "norm_config", "norm_precompile", "rms_norm", "row_stride", "vector_rows",
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


def _config(path: int, row_threads: int, vecs: int) -> NormConfig:
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
            return _config(PATH_VECTOR if vector else PATH_SCALAR, row_threads, vecs)
    return _config(PATH_TILED, *TILED_CONFIG)


def norm_precompile() -> list[dict[str, Any]]:
    """Every instantiation that :func:`norm_config` can choose, for each dtype and both weight forms."""
    configs = [_config(PATH_VECTOR, *c) for c in VECTOR_CONFIGS]
    configs += [_config(PATH_SCALAR, *c) for c in SCALAR_CONFIGS]
    configs.append(_config(PATH_TILED, *TILED_CONFIG))
    return [
        {"dtype": dtype, "gemma": gemma, **c._asdict()}
        for dtype in ("float32", "float16", "bfloat16")
        for gemma in (False, True)
        for c in configs
    ]


def _info(tensor: Any) -> TensorInfo | None:
    try:
        return tensor_info(tensor)
    except (TypeError, ValueError, BufferError):
        return None  # not a tensor: the op's own check of it raises the error that names it


def address(tensor: Any) -> int | None:
    """The address of a tensor's first element (torch, CuPy or DLPack), or None.

    None for a torch tensor without storage (the fake tensors of tracing), whose layout then does not matter, and
    for an object that is no tensor.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensor, torch.Tensor):
        if tensor.__class__ is not torch.Tensor and tensor.__class__ is not torch.nn.Parameter:
            return None
        return int(tensor.data_ptr())
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(tensor, cupy.ndarray):
        return int(tensor.data.ptr)
    info = _info(tensor)
    return None if info is None else info.ptr


def row_stride(tensor: Any) -> int | None:
    """The stride between the rows of a 2-D tensor, in elements (torch, CuPy or DLPack); None if it has none."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensor, torch.Tensor):
        return int(tensor.stride(0)) if tensor.dim() == 2 else None
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(tensor, cupy.ndarray):
        return int(tensor.strides[0] // tensor.itemsize) if tensor.ndim == 2 else None
    info = _info(tensor)
    return info.strides[0] if info is not None and len(info.strides) == 2 else None


def vector_rows(rows: int, hidden: int, itemsize: int, weight: Any, *tensors: tuple[Any, int | None]) -> bool:
    """Whether 16-byte vectors apply to rows of ``hidden`` values.

    That is: ``hidden`` a whole number of vectors, and the weight and every row start of each
    ``(tensor, row stride)`` 16-byte aligned (a stride of None is read from the tensor).
    """
    lanes = 16 // itemsize
    if hidden % lanes:
        return False
    for tensor, stride in ((weight, 0), *tensors):
        at = address(tensor)
        if at is None or at % 16:
            return False
        if rows > 1:
            step = row_stride(tensor) if stride is None else stride
            if step is None or step % lanes:
                return False
    return True


#: What the values of a traced call (fake tensors, possibly symbolic sizes) are: they pick no kernel.
TRACING_CONFIG = _config(PATH_TILED, *TILED_CONFIG)


def _kernel_config(x: Any, weight: Any, out: Any, T: int, H: int, x_stride: int, dtype: DType) -> NormConfig:
    if address(x) is None:
        return TRACING_CONFIG
    # out is None when the op allocates it: contiguous, and aligned like every allocation.
    tensors = ((x, x_stride),) if out is None else ((x, x_stride), (out, None))
    return norm_config(H, dtype, vector_rows(T, H, dtype.itemsize, weight, *tensors))


def _rows_apart(out: Any, T: int, H: int) -> bool:
    """Rows of a given ``out`` do not overlap (in place, out may be x)."""
    if out is None or T <= 1:
        return True
    step = row_stride(out)
    return step is None or abs(step) >= H  # None: not a 2-D tensor, which the check of out reports


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
        "config": _kernel_config,
        "path": "config.path",
        "block": "config.block",
        "row_threads": "config.row_threads",
        "vecs": "config.vecs",
    },
    checks=[(_rows_apart, "out: rows overlap (a row stride below hidden)")],
    grid="cdiv(T, config.rows_per_block) if H else 0",
    block="block",
    args=("out", "x", "weight", "T", "H", "x_stride", "out_stride", "eps"),
    precompile=norm_precompile(),
    pdl=True,
)
