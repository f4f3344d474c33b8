"""cujit: CUDA C++ kernels compiled at run time with NVRTC and launched from Python on torch or CuPy tensors.

This module holds only the public names; the runtime lives in ``cujit._runtime``, one module per concern. The
shipped ops are the modules next to this file, each named after the op it declares: ``cujit.add_constant`` is the
module and ``cujit.add_constant.add_constant`` the op. A module is imported on first use of its name, so
``import cujit`` stays light and imports neither torch nor CuPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._runtime.cache import cache_stats
from ._runtime.checks import runtime_check
from ._runtime.cpp_args import CppArgs, make_cpp_args
from ._runtime.dtypes import DType
from ._runtime.errors import CheckError, CompileError, CompileWarning, CujitError, LaunchError, TensorMatchError
from ._runtime.launch import LaunchKernel, device_check
from ._runtime.matcher import (
    SymbolicDevice,
    SymbolicDType,
    SymbolicShape,
    SymbolicSize,
    TensorCheck,
    TensorMatcher,
)
from ._runtime.module import JitModule, Kernel, load_jit
from ._runtime.ops import Launch, Op, cdiv, op, shipped_module_names
from ._runtime.ops import declared_ops as ops
from ._runtime.tensors import Device
from ._runtime.version import __version__

if TYPE_CHECKING:
    from ._runtime.parallel import compile_modules

__all__ = [
    "CheckError",
    "CompileError",
    "CompileWarning",
    "CppArgs",
    "CujitError",
    "DType",
    "Device",
    "JitModule",
    "Kernel",
    "Launch",
    "LaunchError",
    "LaunchKernel",
    "Op",
    "SymbolicDType",
    "SymbolicDevice",
    "SymbolicShape",
    "SymbolicSize",
    "TensorCheck",
    "TensorMatchError",
    "TensorMatcher",
    "__version__",
    "cache_stats",
    "cdiv",
    "compile_modules",
    "device_check",
    "load_jit",
    "make_cpp_args",
    "op",
    "ops",
    "runtime_check",
]

_SHIPPED = frozenset(shipped_module_names())


def __getattr__(name: str) -> Any:
    """``cujit.<op>``: the shipped op module of that name, imported on first use (the op is ``cujit.<op>.<op>``).

    ``cujit.compile_modules`` too is imported on first use: a process that only launches cached kernels never
    needs it.
    """
    if name == "compile_modules":
        from ._runtime.parallel import compile_modules

        return compile_modules
    if name in _SHIPPED:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cujit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SHIPPED, "compile_modules"})
