"""cujit: CUDA C++ kernels compiled at run time with NVRTC and launched from Python on torch or CuPy tensors.

This module holds only the public names; the runtime lives in ``cujit._runtime``, one module per concern.
"""

from __future__ import annotations

from ._runtime.cache import cache_stats
from ._runtime.checks import runtime_check
from ._runtime.cpp_args import CppArgs, make_cpp_args
from ._runtime.dtypes import DType
from ._runtime.errors import CompileError, CujitError, LaunchError, TensorMatchError
from ._runtime.launch import LaunchKernel, device_check
from ._runtime.matcher import SymbolicDevice, SymbolicDType, SymbolicSize, TensorCheck, TensorMatcher
from ._runtime.module import JitModule, Kernel, load_jit
from ._runtime.parallel import compile_modules
from ._runtime.tensors import Device
from ._runtime.version import __version__

__all__ = [
    "CompileError",
    "CppArgs",
    "CujitError",
    "DType",
    "Device",
    "JitModule",
    "Kernel",
    "LaunchError",
    "LaunchKernel",
    "SymbolicDType",
    "SymbolicDevice",
    "SymbolicSize",
    "TensorCheck",
    "TensorMatchError",
    "TensorMatcher",
    "__version__",
    "cache_stats",
    "compile_modules",
    "device_check",
    "load_jit",
    "make_cpp_args",
    "runtime_check",
]
