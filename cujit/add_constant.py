"""``add_constant(x, c)``: ``x + c`` for int32 tensors, with ``c`` a template argument (the guide's example)."""

from __future__ import annotations

import functools
import sys
from typing import Any

from ._runtime.cpp_args import make_cpp_args
from ._runtime.launch import cupy_stream
from ._runtime.matcher import SymbolicDevice, SymbolicSize, TensorCheck, TensorMatcher
from ._runtime.module import JitModule, Kernel, load_jit
from ._runtime.tensors import cupy_array_type, torch_tensor_type

__all__ = ["PRECOMPILE", "add_constant", "module", "precompile_modules"]

_BLOCK = 256  # add_constant_detail::kBlock
_PER_BLOCK = _BLOCK * 4  # threads x int32 per 16-byte vector
_INT32 = (-(2**31), 2**31 - 1)

#: The constants whose instantiations `python -m cujit precompile` builds ahead of time.
PRECOMPILE: tuple[int, ...] = (-1, 1, 2, 3)


@functools.cache
def module(constant: int) -> JitModule:
    """The module instantiating ``add_constant_kernel<constant>``."""
    args = make_cpp_args(constant)
    return load_jit(
        "add_constant",
        *args,
        cuda_files=["add_constant.cuh"],
        cuda_wrappers=[("add_constant", f"add_constant_kernel<{args}>")],
    )


_KERNELS: dict[int, Kernel] = {}
# torch.Tensor once torch is imported (cujit never imports it for you); a list so the hot path reads it cheaply.
_TORCH_TENSOR: list[type | None] = [None]
_CUPY_ARRAY: list[type | None] = [None]


def _new_kernel(constant: object) -> Kernel:
    if isinstance(constant, bool) or not isinstance(constant, int):
        raise TypeError(f"add_constant: constant must be an int, got {type(constant).__name__}")
    if not _INT32[0] <= constant <= _INT32[1]:
        raise ValueError(f"add_constant: constant must fit in int32, got {constant}")
    kernel = _KERNELS[int(constant)] = module(int(constant)).add_constant
    return kernel


def precompile_modules() -> list[JitModule]:
    """The modules that `python -m cujit precompile` builds for this op."""
    return [module(c) for c in PRECOMPILE]


class _Checks(dict[int, tuple[TensorCheck, TensorCheck]]):
    """ndim -> (check of src alone, check of out and src), built on first sight of each rank."""

    def __missing__(self, ndim: int) -> tuple[TensorCheck, TensorCheck]:
        self[ndim] = _make_checks(ndim)
        return self[ndim]


def _make_checks(ndim: int) -> tuple[TensorCheck, TensorCheck]:
    _TORCH_TENSOR[0] = torch_tensor_type()
    _CUPY_ARRAY[0] = cupy_array_type()
    dims = [SymbolicSize(f"D{i}") for i in range(ndim)]
    device = SymbolicDevice("device")

    def matcher() -> TensorMatcher:
        return TensorMatcher(dims).with_dtype("int32").with_device("cuda", symbol=device)

    return TensorCheck(src=matcher()), TensorCheck(out=matcher(), src=matcher())


_CHECKS = _Checks()


def _empty_like(x: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.empty_like(x)  # x is contiguous (checked), so the result is too
    import cupy

    with cupy.cuda.Device(x.device.id):  # CuPy allocates on the current device, not the input's
        return cupy.empty_like(x)


def add_constant(src: Any, constant: int, *, out: Any = None) -> Any:
    """Return ``src + constant`` for a contiguous int32 CUDA tensor (torch) or array (CuPy).

    Args:
        src: the input, of any shape.
        constant: a Python int in the int32 range; each distinct value compiles its own instantiation once.
        out: where to write the result (same shape, dtype, device and kind as ``src``; may be ``src``).

    Returns:
        ``out``, or a new tensor of the same kind, device and shape as ``src``.

    Raises:
        TensorMatchError: ``src`` or ``out`` has the wrong dtype, device, shape or layout; nothing is launched.
        TypeError / ValueError: ``constant`` is not an int in the int32 range.
    """
    kernel = _KERNELS.get(constant) if type(constant) is int else None
    if kernel is None:
        kernel = _new_kernel(constant)
    ndim = getattr(src, "ndim", 0)
    if type(ndim) is not int:
        ndim = 0
    src_check, pair_check = _CHECKS[ndim]
    if out is None:
        values = src_check(src)
        out = _empty_like(src)
    else:
        values = pair_check(out, src)
    torch_tensor: Any = _TORCH_TENSOR[0]
    if type(src) is torch_tensor and type(out) is torch_tensor:
        # Checked above: both are CUDA torch tensors on one device, so the raw entry can skip re-reading them.
        n = src.numel()
        if n:
            kernel.launch_on(values[-1].index, (n + _PER_BLOCK - 1) // _PER_BLOCK, _BLOCK, out.data_ptr(),
                             src.data_ptr(), n)
        return out
    n = 1
    for size in values[:-1]:
        n *= size
    if not n:
        return out
    grid = (n + _PER_BLOCK - 1) // _PER_BLOCK
    cupy_array: Any = _CUPY_ARRAY[0]
    if type(src) is cupy_array and type(out) is cupy_array:
        device = values[-1].index
        kernel.launch_on(device, grid, _BLOCK, out.data.ptr, src.data.ptr, n, stream=cupy_stream(device))
    else:
        kernel.launch(grid, _BLOCK, out, src, n)
    return out
