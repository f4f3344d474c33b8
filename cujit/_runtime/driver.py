"""The CUDA driver, as cujit uses it: devices, contexts, module loading, function attributes.

Launch-path calls go through CuPy's Cython bindings (``cupy.cuda.driver``), which cost far less per call than
ctypes. A few calls CuPy does not bind (capture mode, parameter info) go through ctypes on ``libcuda``; they run
once per (kernel, device). Nothing here runs at import: the driver is touched on the first launch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from typing import Any

from .errors import LaunchError

__all__ = [
    "arch_of", "capture_relaxed", "cupy_driver", "cupy_runtime", "device_attribute", "device_count",
    "load_module", "param_sizes", "primary_context",
]


# cudaDeviceAttr values that CuPy does not name.
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76


@functools.cache
def cupy_driver() -> Any:
    from cupy.cuda import driver

    return driver


@functools.cache
def cupy_runtime() -> Any:
    from cupy.cuda import runtime

    return runtime


@functools.cache
def _libcuda() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def device_count() -> int:
    """How many CUDA devices this process sees (0 without a driver)."""
    try:
        return int(cupy_runtime().getDeviceCount())
    except Exception:  # no driver, no device, or CUDA refused to start: all mean "no GPU here"
        return 0


@functools.cache
def arch_of(device: int) -> str:
    """``sm_XY`` of a device, memoised."""
    runtime = cupy_runtime()
    major = runtime.deviceGetAttribute(_ATTR_CC_MAJOR, device)
    minor = runtime.deviceGetAttribute(_ATTR_CC_MINOR, device)
    return f"sm_{major}{minor}"


@functools.cache
def device_attribute(attribute: int, device: int) -> int:
    """A device attribute (``cudaDevAttr*``), memoised."""
    return int(cupy_runtime().deviceGetAttribute(attribute, device))


@functools.cache
def primary_context(device: int) -> int:
    """The handle of a device's primary context (the one torch and CuPy share), initialising it if needed."""
    runtime, driver = cupy_runtime(), cupy_driver()
    previous = driver.ctxGetCurrent()
    try:
        runtime.setDevice(device)
        runtime.free(0)  # makes sure the primary context exists and is current
        return int(driver.ctxGetCurrent())
    finally:
        driver.ctxSetCurrent(previous)


@contextlib.contextmanager
def current_context(ctx: int) -> Iterator[None]:
    """Make ``ctx`` current for the block, then restore whatever was current."""
    driver = cupy_driver()
    previous = driver.ctxGetCurrent()
    if previous == ctx:
        yield
        return
    driver.ctxSetCurrent(ctx)
    try:
        yield
    finally:
        driver.ctxSetCurrent(previous)


@contextlib.contextmanager
def capture_relaxed() -> Iterator[None]:
    """Allow this thread to load modules while another stream is being captured into a CUDA graph.

    Loading a module is not a stream operation, but the global capture mode forbids such calls anywhere in the
    process; relaxing it for this thread only keeps a first launch inside ``torch.cuda.graph`` from breaking the
    capture.
    """
    lib = _libcuda()
    if lib is None:
        yield
        return
    mode = ctypes.c_int(2)  # CU_STREAM_CAPTURE_MODE_RELAXED
    if lib.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)) != 0:
        yield
        return
    try:
        yield
    finally:
        lib.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode))


def load_module(device: int, cubin: bytes, names: list[str]) -> tuple[int, int, list[int]]:
    """Load a cubin into ``device``'s primary context; return (context, module, function handles)."""
    driver = cupy_driver()
    ctx = primary_context(device)
    with current_context(ctx):
        try:
            module = driver.moduleLoadData(cubin)
            functions = [int(driver.moduleGetFunction(module, name)) for name in names]
        except driver.CUDADriverError as exc:
            raise LaunchError(f"cannot load the compiled module on cuda:{device}: {exc}") from exc
    return ctx, int(module), functions


def param_sizes(function: int) -> list[int] | None:
    """The byte size of each parameter of a loaded kernel (``cuFuncGetParamInfo``, driver 12.4+), or ``None``."""
    lib = _libcuda()
    get = getattr(lib, "cuFuncGetParamInfo", None) if lib is not None else None
    if get is None:
        return None
    sizes: list[int] = []
    offset, size = ctypes.c_size_t(), ctypes.c_size_t()
    for index in range(4096):
        status = get(ctypes.c_void_p(function), ctypes.c_size_t(index), ctypes.byref(offset), ctypes.byref(size))
        if status != 0:
            break
        sizes.append(size.value)
    return sizes


def require_gpu() -> None:
    """Raise a clear error where no CUDA device can be used."""
    if device_count() == 0:
        raise LaunchError("no CUDA device is available: launching needs an NVIDIA GPU and driver "
                          "(JitModule.compile(arch=...) works without one)")
