"""Launching: ``LaunchKernel``, argument packing by parameter type, stream and device resolution.

Per (kernel, device) cujit keeps a :class:`LoadedKernel`: the function handle, its context, a ``struct`` layout
for its parameters and a per-thread parameter buffer whose pointer array is built once. Per kernel it generates,
once, a launcher specialised to the kernel's parameter list, so that a call does no signature work: it reads the
tensors' pointers and device, finds the loaded kernel in a dict, takes the current stream and launches.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import driver
from .errors import LaunchError
from .signature import Param
from .tensors import cupy_array_type, tensor_info, torch_tensor_type

if TYPE_CHECKING:
    from .module import Kernel

__all__ = ["LaunchKernel", "LoadedKernel", "cupy_stream", "device_check", "make_launcher", "resolve_stream"]

_MAX_BLOCK = (1024, 1024, 64)
_MAX_GRID = (2**31 - 1, 65535, 65535)
_CUDA_ERROR_INVALID_VALUE = 1
_DEFAULT_SMEM = 48 * 1024


def _param_slot(param: Param) -> tuple[str, int]:
    """The ``struct`` code and alignment of a parameter's slot in the packed buffer."""
    if param.kind == "record":
        return f"{param.size}s", 16
    return param.code, max(param.size, 1)


class LoadedKernel:
    """One kernel loaded on one device."""

    def __init__(self, kernel: Kernel, device: int, ctx: int, function: int, params: tuple[Param, ...]) -> None:
        self.kernel = kernel
        self.device = device
        self.ctx = ctx
        self.function = function
        self.params = params
        fmt, offsets, offset = ["="], [], 0
        for param in params:
            code, align = _param_slot(param)
            pad = -offset % align
            if pad:
                fmt.append(f"{pad}x")
            offset += pad
            offsets.append(offset)
            fmt.append(code)
            offset += struct.calcsize("=" + code)
        self._struct = struct.Struct("".join(fmt))
        self._offsets = tuple(offsets)
        self.pack_into = self._struct.pack_into
        self.tls = threading.local()
        self.smem_ok = _DEFAULT_SMEM
        drv = driver.cupy_driver()
        self._launch_kernel = drv.launchKernel
        self._driver_error = drv.CUDADriverError

    # Function attributes are read only where a launch needs them (large shared memory, error messages): a
    # read forces the lazily loaded function onto the device, which a warm start should not pay for.
    @functools.cached_property
    def max_threads(self) -> int:
        """The most threads a block of this kernel may have on this device."""
        drv = driver.cupy_driver()
        return int(drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, self.function))

    @functools.cached_property
    def static_smem(self) -> int:
        """Bytes of statically declared shared memory."""
        drv = driver.cupy_driver()
        return int(drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, self.function))

    def buffer(self) -> tuple[Any, int]:
        """This thread's parameter buffer and the address of its pointer array (built once per thread)."""
        buf = ctypes.create_string_buffer(max(self._struct.size, 1))
        base = ctypes.addressof(buf)
        pointers = (ctypes.c_void_p * max(len(self._offsets), 1))(*(base + o for o in self._offsets))
        pair = (buf, ctypes.addressof(pointers))
        self.tls.keep = pointers
        self.tls.pair = pair
        return pair

    def launch_elsewhere(self, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, smem: int, stream: int,
                         addr: int) -> None:
        """Launch with this kernel's context made current for the call (another device's was current)."""
        with driver.current_context(self.ctx):
            self.launch_packed(gx, gy, gz, bx, by, bz, smem, stream, addr)

    def launch_packed(self, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, smem: int, stream: int,
                      addr: int) -> None:
        """Launch with parameters already packed at ``addr``; the slow path of the generated launcher."""
        try:
            self._launch_kernel(self.function, gx, gy, gz, bx, by, bz, smem, stream, addr, 0)
        except (self._driver_error, OverflowError, TypeError) as exc:
            raise self.launch_error(exc, (gx, gy, gz), (bx, by, bz), smem) from None

    def allow_smem(self, smem: int) -> None:
        limit = driver.device_attribute(driver.cupy_runtime().cudaDevAttrMaxSharedMemoryPerBlockOptin, self.device)
        if smem + self.static_smem > limit:
            raise LaunchError(
                f"{self.kernel.expression}: shared memory {smem} bytes (+ {self.static_smem} static) exceeds the "
                f"limit of {limit} bytes per block on cuda:{self.device}"
            )
        drv = driver.cupy_driver()
        drv.funcSetAttribute(self.function, drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        self.smem_ok = smem

    def pack_error(self, values: Sequence[Any]) -> LaunchError:
        for i, (param, value) in enumerate(zip(self.params, values, strict=True)):
            code, _ = _param_slot(param)
            try:
                struct.pack("=" + code, value)
            except (struct.error, OverflowError, TypeError, ValueError) as exc:
                return LaunchError(
                    f"{self.kernel.expression}: argument {i} ({param.cpp}): cannot pass {value!r} of type "
                    f"{type(value).__name__} ({exc})"
                )
        return LaunchError(f"{self.kernel.expression}: arguments could not be packed")

    def launch_error(self, exc: BaseException, grid: tuple[int, int, int], block: tuple[int, int, int],
                      smem: int) -> LaunchError:
        problems = []
        threads = block[0] * block[1] * block[2]
        try:
            limit = self.max_threads
        except driver.cupy_driver().CUDADriverError:  # a context broken by an earlier fault
            limit = _MAX_BLOCK[0]
        if threads > limit:
            problems.append(f"block {block} has {threads} threads, over this kernel's limit of {limit}")
        for axis, (have, top) in enumerate(zip(block, _MAX_BLOCK, strict=True)):
            if not 1 <= have <= top:
                problems.append(f"block dimension {axis} is {have}, expected 1 to {top}")
        for axis, (have, top) in enumerate(zip(grid, _MAX_GRID, strict=True)):
            if not 1 <= have <= top:
                problems.append(f"grid dimension {axis} is {have}, expected 1 to {top}")
        if smem < 0:
            problems.append(f"shared memory is {smem} bytes")
        detail = "; ".join(problems) if problems else str(exc)
        return LaunchError(f"launch of {self.kernel.expression} on cuda:{self.device} failed: {detail} "
                           f"(grid {grid}, block {block}, shared memory {smem} bytes; {exc})")


# --------------------------------------------------------------------------------------------------- streams
def _torch_stream_getter() -> Callable[[int], int] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw  # type: ignore[no-any-return]
    return lambda device: int(torch.cuda.current_stream(device).cuda_stream)


def cupy_stream(device: int) -> int:
    """The raw handle of CuPy's current stream on ``device``."""
    return int(_cupy_current_stream()(device).ptr)


@functools.cache
def _cupy_current_stream() -> Callable[[int], Any]:
    import cupy

    return cupy.cuda.get_current_stream  # type: ignore[no-any-return]


def _default_stream(device: int) -> int:
    getter = _torch_stream_getter()
    if getter is not None:
        return int(getter(device))
    return cupy_stream(device)


def resolve_stream(stream: Any) -> int:
    """The raw handle of an explicit ``stream=``: a torch or CuPy stream, ``__cuda_stream__``, or an int."""
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        return int(protocol()[1])
    for attribute in ("cuda_stream", "ptr"):
        handle = getattr(stream, attribute, None)
        if isinstance(handle, int):
            return handle
    raise TypeError(
        f"stream: expected a torch.cuda.Stream, a cupy.cuda.Stream, an object with __cuda_stream__ or a raw "
        f"handle (int), got {type(stream).__name__}"
    )


def _current_device() -> int:
    return int(driver.cupy_runtime().getDevice())


def device_index(device: Any) -> int:
    """A CUDA device index from an int, ``"cuda:1"``, ``torch.device`` or :class:`~cujit.Device`."""
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind == "cuda":
            return int(index) if index else _current_device()
    kind_attr, index_attr = getattr(device, "type", None), getattr(device, "index", None)
    if kind_attr == "cuda":
        return _current_device() if index_attr is None else int(index_attr)
    raise ValueError(f"device: expected a CUDA device (an index, 'cuda:N' or a device object), got {device!r}")


# --------------------------------------------------------------------------------------------------- launcher
class _NoType:
    pass


def _pointer(kernel: Kernel, index: int, arg: Any, dev: int, origin: int) -> tuple[int, int, int]:
    """The slow path for a pointer argument: anything but a CUDA torch tensor."""
    torch_type: Any = torch_tensor_type() or _NoType
    cupy_type: Any = cupy_array_type() or _NoType
    param = kernel.params[index]
    if arg is None:
        return 0, dev, origin
    if isinstance(arg, int) and not isinstance(arg, bool):
        if arg < 0:
            raise LaunchError(f"{kernel.expression}: argument {index} ({param.cpp}): a pointer cannot be {arg}")
        return arg, dev, origin
    if isinstance(arg, torch_type):
        if not arg.is_cuda:
            raise LaunchError(f"{kernel.expression}: argument {index} ({param.cpp}) is a torch tensor on "
                              f"{arg.device}; expected a CUDA tensor")
        ptr, found, origin = arg.data_ptr(), arg.get_device(), origin | 1
    elif isinstance(arg, cupy_type):
        ptr, found, origin = arg.data.ptr, arg.device.id, origin | 2
    elif hasattr(arg, "__dlpack__") or hasattr(arg, "__cuda_array_interface__"):
        info = tensor_info(arg)
        if info.device.type not in ("cuda", "cuda_managed"):
            raise LaunchError(f"{kernel.expression}: argument {index} ({param.cpp}) is on {info.device}; "
                              "expected a CUDA tensor")
        ptr, found = info.ptr, info.device.index
    else:
        raise LaunchError(f"{kernel.expression}: argument {index} ({param.cpp}): expected a CUDA tensor, a raw "
                          f"pointer (int) or None, got {type(arg).__name__}")
    if dev != -1 and found != dev:
        raise _device_conflict(kernel, index, dev, found)
    return ptr, found, origin


def _device_conflict(kernel: Kernel, index: int, first: int, found: int) -> LaunchError:
    return LaunchError(f"{kernel.expression}: argument {index} is on cuda:{found} but earlier tensor arguments are "
                       f"on cuda:{first}; all tensors of one launch must be on one device")


def _count_error(kernel: Kernel, args: Sequence[Any]) -> LaunchError:
    params = kernel.params
    signature = ", ".join(p.cpp for p in params)
    if len(args) < len(params):
        missing = params[len(args)]
        what = f"argument {len(args)} ({missing.cpp}) is missing"
    else:
        what = f"{len(args) - len(params)} argument(s) too many"
    return LaunchError(f"{kernel.expression}({signature}): expected {len(params)} arguments, got {len(args)}: {what}")


def _record(kernel: Kernel, index: int, arg: Any) -> bytes:
    param = kernel.params[index]
    try:
        data = memoryview(arg).cast("B").tobytes()
    except TypeError:
        raise LaunchError(f"{kernel.expression}: argument {index} ({param.cpp}) is passed by value: expected "
                          f"bytes or a buffer of {param.size} bytes, got {type(arg).__name__}") from None
    if param.size and len(data) != param.size:
        raise LaunchError(f"{kernel.expression}: argument {index} ({param.cpp}): expected {param.size} bytes, "
                          f"got {len(data)}")
    return data


def _bf16(value: Any) -> int:
    """The bits of ``value`` as bfloat16, rounded to nearest even, as the CUDA conversions do."""
    bits = struct.unpack("=I", struct.pack("=f", float(value)))[0]
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x7FFFFF:
        return 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def _dim3(value: Any, what: str) -> tuple[int, int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, 1, 1
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 3 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        padded = (*value, 1, 1)
        return padded[0], padded[1], padded[2]
    raise LaunchError(f"{what}: expected an int or a tuple of 1 to 3 ints, got {value!r}")


def make_launcher(kernel: Kernel) -> tuple[Callable[..., None], Callable[..., None]]:
    """Generate the two launch entries of ``kernel``, specialised to its parameter list.

    ``launch(grid, block, *args, shared_mem=0, stream=None)`` takes tensors and scalars;
    ``launch_on(device, grid, block, *args, shared_mem=0, stream=None)`` takes raw values (pointers as ints).
    """
    params = kernel.params
    n = len(params)
    torch_type = torch_tensor_type() or _NoType
    env: dict[str, Any] = {
        "_kernel": kernel, "_table": kernel._table, "_Tensor": torch_type, "_pointer": _pointer,
        "_conflict": _device_conflict, "_count_error": _count_error, "_record": _record, "_bf16": _bf16,
        "_dim3": _dim3, "_current_device": _current_device, "_resolve_stream": resolve_stream,
        "cupy_stream": cupy_stream, "_default_stream": _default_stream,
        "_torch_stream": _torch_stream_getter() or _default_stream,
        "_PACK_ERRORS": (struct.error, OverflowError, TypeError, ValueError),
        "_LAUNCH_ERRORS": (driver.cupy_driver().CUDADriverError, OverflowError, TypeError),
        "_ctx_get": driver.cupy_driver().ctxGetCurrent, "_launch_kernel": driver.cupy_driver().launchKernel,
    }
    names = [f"a{i}" for i in range(n)]
    body = [f"if len(args) != {n}: raise _count_error(_kernel, args)"]
    if n:
        body.append(f"{', '.join(names)}, = args")
    body += ["dev = -1", "origin = 0"]
    values = []
    for i, param in enumerate(params):
        a, v = f"a{i}", f"v{i}"
        if param.kind == "pointer":
            body += [
                f"if {a}.__class__ is _Tensor and {a}.is_cuda:",
                f"    {v} = {a}.data_ptr()",
                f"    d = {a}.get_device()",
                "    if d != dev:",
                f"        if dev != -1: raise _conflict(_kernel, {i}, dev, d)",
                "        dev = d",
                "    origin |= 1",
                "else:",
                f"    {v}, dev, origin = _pointer(_kernel, {i}, {a}, dev, origin)",
            ]
        else:
            body.append(_convert_line(param, i))
        values.append(v)
    packed = ", ".join(values)
    body += [
        "if dev == -1: dev = _current_device()",
        "if stream is None:",
        "    if origin & 1: s = _torch_stream(dev)",
        "    elif origin & 2: s = cupy_stream(dev)",
        "    else: s = _default_stream(dev)",
        "else: s = _resolve_stream(stream)",
        *_launch_tail(n, packed),
    ]
    # The raw entry: the caller has checked its tensors and passes pointers as ints and the device index.
    raw = [f"if len(args) != {n}: raise _count_error(_kernel, args)"]
    if n:
        raw.append(f"{', '.join(names)}, = args")
    raw += [_convert_line(param, i) for i, param in enumerate(params)]
    raw += ["s = _torch_stream(dev) if stream is None else _resolve_stream(stream)", *_launch_tail(n, packed)]
    source = (
        "def launch(grid, block, *args, shared_mem=0, stream=None):\n" + "\n".join("    " + line for line in body)
        + "\ndef launch_on(dev, grid, block, *args, shared_mem=0, stream=None):\n"
        + "\n".join("    " + line for line in raw)
    )
    code = _LAUNCHER_CODE.get(source)
    if code is None:
        code = _LAUNCHER_CODE[source] = compile(source, "<cujit launcher>", "exec")
    namespace: dict[str, Any] = {}
    exec(code, env, namespace)
    return namespace["launch"], namespace["launch_on"]


def _convert_line(param: Param, i: int) -> str:
    """The generated line that turns argument ``a<i>`` into the value ``v<i>`` that ``struct`` packs."""
    if param.kind == "record":
        return f"v{i} = _record(_kernel, {i}, a{i})"
    if param.kind == "bf16":
        return f"v{i} = _bf16(a{i}) if not isinstance(a{i}, (bytes, int)) else a{i}"
    return f"v{i} = a{i}"


def _launch_tail(n: int, packed: str) -> list[str]:
    """Generated lines from "kernel loaded on ``dev``, stream ``s``" to the driver call."""
    return [
        "loaded = _table.get(dev)",
        "if loaded is None: loaded = _kernel._load(dev)",
        "if grid.__class__ is int: gx = grid; gy = gz = 1",
        "else: gx, gy, gz = _dim3(grid, 'grid')",
        "if block.__class__ is int: bx = block; by = bz = 1",
        "else: bx, by, bz = _dim3(block, 'block')",
        "try: buf, addr = loaded.tls.pair",
        "except AttributeError: buf, addr = loaded.buffer()",
        f"try: loaded.pack_into(buf, 0{', ' if n else ''}{packed})",
        f"except _PACK_ERRORS: raise loaded.pack_error(({packed}{',' if n == 1 else ''})) from None",
        "if shared_mem > loaded.smem_ok: loaded.allow_smem(shared_mem)",
        "if _ctx_get() != loaded.ctx: loaded.launch_elsewhere(gx, gy, gz, bx, by, bz, shared_mem, s, addr)",
        "else:",
        "    try: _launch_kernel(loaded.function, gx, gy, gz, bx, by, bz, shared_mem, s, addr, 0)",
        "    except _LAUNCH_ERRORS as exc:",
        "        raise loaded.launch_error(exc, (gx, gy, gz), (bx, by, bz), shared_mem) from None",
    ]


# Generated launcher source -> compiled code: kernels with the same parameter kinds share one compile.
_LAUNCHER_CODE: dict[str, Any] = {}


class LaunchKernel:
    """A launch configuration; calling it with a kernel and arguments launches.

    ``LaunchKernel(grid, block, shared_mem=0, stream=None)(module.kernel, *args)``: ``grid`` and ``block`` are
    ints or tuples of up to three ints. Without ``stream``, the launch goes on the current torch stream of the
    arguments' device when any argument is a torch tensor, else on the current CuPy stream when any is a CuPy
    array, else on the current torch stream.
    """

    __slots__ = ("block", "grid", "shared_mem", "stream")

    def __init__(self, grid: Any, block: Any, shared_mem: int = 0, stream: Any = None) -> None:
        self.grid = grid
        self.block = block
        self.shared_mem = shared_mem
        self.stream = stream

    def __call__(self, kernel: Kernel, *args: Any) -> None:
        try:
            launch = kernel.launch
        except AttributeError:
            raise TypeError(f"LaunchKernel: expected a kernel of a JitModule (module.<name>), got "
                            f"{type(kernel).__name__}") from None
        launch(self.grid, self.block, *args, shared_mem=self.shared_mem, stream=self.stream)

    @staticmethod
    def resolve_device(device: Any) -> int:
        """The raw handle of ``device``'s current torch stream (CuPy's where torch is not installed)."""
        return _default_stream(device_index(device))


def device_check(device: Any = None) -> None:
    """Wait for ``device`` (default: the current one) and raise ``LaunchError`` for an asynchronous fault."""
    index = _current_device() if device is None else device_index(device)
    runtime = driver.cupy_runtime()
    try:
        with driver.current_context(driver.primary_context(index)):
            runtime.deviceSynchronize()
    except runtime.CUDARuntimeError as exc:
        raise LaunchError(f"a kernel on cuda:{index} failed asynchronously: {exc}") from exc
    except driver.cupy_driver().CUDADriverError as exc:
        raise LaunchError(f"a kernel on cuda:{index} failed asynchronously: {exc}") from exc


