"""The CUDA driver, as cujit uses it: devices, contexts, module loading, launching, function attributes.

Everything goes through one :class:`Backend` object. The real one talks to CuPy's Cython bindings
(``cupy.cuda.driver`` / ``runtime``), which cost far less per call than ctypes; the few calls CuPy does not bind
(capture mode, parameter info, ``cuLaunchKernelEx``) go through ctypes on ``libcuda``, once per (kernel, device)
or only for launches that need them. The first call into each CuPy binding is made with a stand-in ``cupy``
module in place (``frameworks.cupy_left_unimported``), so that loading the driver does not import all of CuPy. Tests
install a stand-in backend with :func:`use` to run the launch paths on a machine without a GPU. Nothing here runs
at import: the driver is touched on the first launch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator
from typing import Any

from . import frameworks
from .errors import LaunchError

__all__ = ["Backend", "CudaBackend", "backend", "use"]

# cudaDeviceAttr values that CuPy does not name.
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
_ATTR_MAX_SMEM_OPTIN = 97
# CUstreamCaptureMode and CUlaunchAttributeID values (cuda.h).
_CAPTURE_MODE_RELAXED = 2
_LAUNCH_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6


class Backend:
    """What cujit needs from a CUDA driver. :class:`CudaBackend` is the real one."""

    #: Exceptions a failed ``launch_kernel`` raises (mapped to ``LaunchError`` by the launch paths).
    launch_errors: tuple[type[BaseException], ...] = ()

    def modules(self) -> dict[Any, Any]:
        """The modules loaded through this driver (owned by ``module.py``): handles belong to their driver."""
        found = self.__dict__.get("_cujit_modules")
        if found is None:
            found = self.__dict__.setdefault("_cujit_modules", {})
        return found  # type: ignore[no-any-return]

    def device_count(self) -> int:
        raise NotImplementedError

    def current_device(self) -> int:
        raise NotImplementedError

    def arch_of(self, device: int) -> str:
        raise NotImplementedError

    def max_shared_memory(self, device: int) -> int:
        """Bytes of shared memory a block may opt in to on ``device``."""
        raise NotImplementedError

    def primary_context(self, device: int) -> int:
        raise NotImplementedError

    def ctx_get(self) -> int:
        raise NotImplementedError

    def ctx_set(self, ctx: int) -> None:
        raise NotImplementedError

    def load_module(self, device: int, cubin: bytes, names: list[str]) -> tuple[int, int, list[int]]:
        """Load a cubin into ``device``'s primary context; return (context, module, function handles)."""
        raise NotImplementedError

    def launch_kernel(self, function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, smem: int,
                      stream: int, params: int, extra: int) -> None:
        """``cuLaunchKernel`` with ``params`` the address of the array of argument addresses."""
        raise NotImplementedError

    def launch_kernel_pdl(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                          stream: int, params: int) -> None:
        """``cuLaunchKernelEx`` with programmatic stream serialization allowed (programmatic dependent launch)."""
        raise NotImplementedError

    def max_threads(self, function: int) -> int:
        raise NotImplementedError

    def static_shared_memory(self, function: int) -> int:
        raise NotImplementedError

    def set_max_dynamic_shared_memory(self, function: int, nbytes: int) -> None:
        raise NotImplementedError

    def param_sizes(self, function: int) -> list[int] | None:
        """The byte size of each parameter of a loaded kernel, or ``None`` where the driver cannot tell."""
        raise NotImplementedError

    def pointer_device(self, ptr: int) -> int:
        """The device that owns the allocation at ``ptr``."""
        raise NotImplementedError

    def synchronize(self, device: int) -> None:
        """Wait for ``device``; raise ``LaunchError`` for an asynchronous fault."""
        raise NotImplementedError

    def torch_stream_getter(self) -> Callable[[int], int] | None:
        """``device -> raw handle of torch's current stream``, or ``None`` while torch is not imported."""
        raise NotImplementedError

    def cupy_stream(self, device: int) -> int:
        raise NotImplementedError

    @contextlib.contextmanager
    def capture_relaxed(self) -> Iterator[None]:
        """Allow this thread to load modules while a stream of the process is captured into a CUDA graph."""
        yield


class CudaBackend(Backend):
    """The real driver, through CuPy's bindings (and ctypes for what they lack)."""

    def __init__(self) -> None:
        # The Cython bindings alone: `cupy.cuda` would import all of CuPy (tens of milliseconds at start-up).
        from cupy_backends.cuda.api import driver, runtime

        self._driver = driver
        self._runtime = runtime
        frameworks.first_calls_without_cupy(driver.ctxGetCurrent, runtime.runtimeGetVersion)
        self.launch_errors = (driver.CUDADriverError, OverflowError, TypeError)
        self.launch_kernel = driver.launchKernel  # type: ignore[method-assign]
        self.ctx_get = driver.ctxGetCurrent  # type: ignore[method-assign]
        self.ctx_set = driver.ctxSetCurrent  # type: ignore[method-assign]

    def device_count(self) -> int:
        try:
            return int(self._runtime.getDeviceCount())
        except (self._runtime.CUDARuntimeError, RuntimeError, OSError):  # no driver, no device, CUDA refused
            return 0

    def current_device(self) -> int:
        return int(self._runtime.getDevice())

    @functools.cache  # noqa: B019 - one backend per process; the answers never change
    def arch_of(self, device: int) -> str:
        major = self._runtime.deviceGetAttribute(_ATTR_CC_MAJOR, device)
        minor = self._runtime.deviceGetAttribute(_ATTR_CC_MINOR, device)
        return f"sm_{major}{minor}"

    @functools.cache  # noqa: B019
    def max_shared_memory(self, device: int) -> int:
        return int(self._runtime.deviceGetAttribute(_ATTR_MAX_SMEM_OPTIN, device))

    @functools.cache  # noqa: B019
    def primary_context(self, device: int) -> int:
        previous = self._driver.ctxGetCurrent()
        try:
            self._runtime.setDevice(device)
            self._runtime.free(0)  # makes sure the primary context exists and is current
            return int(self._driver.ctxGetCurrent())
        finally:
            self._driver.ctxSetCurrent(previous)

    def load_module(self, device: int, cubin: bytes, names: list[str]) -> tuple[int, int, list[int]]:
        ctx = self.primary_context(device)
        with current_context(ctx):
            try:
                module = self._driver.moduleLoadData(cubin)
                functions = [int(self._driver.moduleGetFunction(module, name)) for name in names]
            except self._driver.CUDADriverError as exc:
                raise LaunchError(f"cannot load the compiled module on cuda:{device}: {exc}") from exc
        return ctx, int(module), functions

    def launch_kernel_pdl(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                          stream: int, params: int) -> None:
        lib = _libcuda()
        if lib is None or not hasattr(lib, "cuLaunchKernelEx"):
            self.launch_kernel(function, *grid, *block, smem, stream, params, 0)
            return
        attribute = _LaunchAttribute(_LAUNCH_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION)
        attribute.value[0] = 1
        config = _LaunchConfig(*grid, *block, smem, stream, ctypes.pointer(attribute), 1)
        status = lib.cuLaunchKernelEx(ctypes.byref(config), ctypes.c_void_p(function), ctypes.c_void_p(params), None)
        if status:
            raise self._driver.CUDADriverError(status)

    def max_threads(self, function: int) -> int:
        drv = self._driver
        return int(drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function))

    def static_shared_memory(self, function: int) -> int:
        drv = self._driver
        return int(drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function))

    def set_max_dynamic_shared_memory(self, function: int, nbytes: int) -> None:
        drv = self._driver
        drv.funcSetAttribute(function, drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)

    def param_sizes(self, function: int) -> list[int] | None:
        lib = _libcuda()
        get = getattr(lib, "cuFuncGetParamInfo", None) if lib is not None else None
        if get is None:  # driver older than 12.4
            return None
        sizes: list[int] = []
        offset, size = ctypes.c_size_t(), ctypes.c_size_t()
        for index in range(4096):
            if get(ctypes.c_void_p(function), ctypes.c_size_t(index), ctypes.byref(offset), ctypes.byref(size)):
                break
            sizes.append(size.value)
        return sizes

    def pointer_device(self, ptr: int) -> int:
        return int(getattr(self._runtime.pointerGetAttributes(ptr), "device", 0))

    def synchronize(self, device: int) -> None:
        try:
            with current_context(self.primary_context(device)):
                self._runtime.deviceSynchronize()
        except (self._runtime.CUDARuntimeError, self._driver.CUDADriverError) as exc:
            raise LaunchError(f"a kernel on cuda:{device} failed asynchronously: {exc}") from exc

    def torch_stream_getter(self) -> Callable[[int], int] | None:
        return frameworks.torch_stream_getter()

    def cupy_stream(self, device: int) -> int:
        return frameworks.cupy_stream(device)

    @contextlib.contextmanager
    def capture_relaxed(self) -> Iterator[None]:
        # Loading a module is no stream work, but the global capture mode forbids it while any stream of the
        # process is being captured; relaxing it for this thread lets a first launch happen inside a CUDA graph.
        lib = _libcuda()
        mode = ctypes.c_int(_CAPTURE_MODE_RELAXED)
        if lib is None or lib.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)) != 0:
            yield
            return
        try:
            yield
        finally:
            lib.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode))


class _LaunchAttribute(ctypes.Structure):
    # CUlaunchAttribute: an id, padding, and a 64-byte value union (here as 16 unsigned ints).
    _fields_ = (("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16))


class _LaunchConfig(ctypes.Structure):
    _fields_ = (
        ("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_LaunchAttribute)), ("numAttrs", ctypes.c_uint),
    )


@functools.cache
def _libcuda() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


_ACTIVE: list[Backend] = []


def backend() -> Backend:
    """The backend in use: the real driver unless a test installed another with :func:`use`."""
    if not _ACTIVE:
        _ACTIVE.append(_real())
    return _ACTIVE[-1]


@functools.cache
def _real() -> Backend:
    try:
        return CudaBackend()
    except ImportError as exc:  # pragma: no cover - CuPy is a dependency
        raise LaunchError(f"launching needs CuPy's CUDA bindings, which could not be imported: {exc}") from exc


@contextlib.contextmanager
def use(stand_in: Backend) -> Iterator[Backend]:
    """Run the block with ``stand_in`` as the backend (tests of the launch paths without a GPU)."""
    backend()
    _ACTIVE.append(stand_in)
    try:
        yield stand_in
    finally:
        _ACTIVE.remove(stand_in)


@contextlib.contextmanager
def current_context(ctx: int) -> Iterator[None]:
    """Make ``ctx`` current for the block, then restore whatever was current.

    A thread with no current context keeps ``ctx`` afterwards, as the CUDA runtime does on a thread's first call:
    otherwise every launch from such a thread would switch contexts twice.
    """
    active = backend()
    previous = active.ctx_get()
    if previous == ctx:
        yield
        return
    active.ctx_set(ctx)
    if not previous:
        yield
        return
    try:
        yield
    finally:
        active.ctx_set(previous)


def device_count() -> int:
    """How many CUDA devices this process sees (0 without a driver or without CuPy's CUDA bindings)."""
    try:
        return backend().device_count()
    except LaunchError:
        return 0


def default_arch() -> str:
    """The arch to compile for when none is named: the current GPU's, else ``CUJIT_DEFAULT_ARCH``."""
    from . import config

    if device_count():
        active = backend()
        return active.arch_of(active.current_device())
    return config.default_arch()


def require_gpu() -> None:
    """Raise a clear error where no CUDA device can be used."""
    if device_count() == 0:
        raise LaunchError("no CUDA device is available: launching needs an NVIDIA GPU and driver "
                          "(JitModule.compile(arch=...) and Kernel.check_args(...) work without one)")
