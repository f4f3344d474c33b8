"""Launching: loaded kernels, argument packing by parameter type, streams, ``LaunchKernel``.

Per (kernel, device) cujit keeps a :class:`LoadedKernel`: the function handle, its context, a ``struct`` layout
for its parameters and a per-thread parameter buffer whose pointer array is built once. The launch code itself
is generated (``emit_launch`` writes the lines from "kernel loaded on ``dev``" to ``cuLaunchKernel``), both for
the plain launch of a kernel (:func:`make_launcher`) and inline in every op's function (``ops.py``), so that a
call does no signature work.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import codegen, driver, frameworks
from .errors import LaunchError
from .signature import Param
from .tensors import tensor_info

__all__ = [
    "LaunchKernel", "LoadedKernel", "check_args", "device_check", "device_index", "emit_launch", "launch_env",
    "make_launcher", "resolve_stream",
]

_MAX_BLOCK = (1024, 1024, 64)
_MAX_GRID = (2**31 - 1, 65535, 65535)
_DEFAULT_SMEM = 48 * 1024
_PACK_ERRORS = (struct.error, OverflowError, TypeError, ValueError)


def _param_slot(param: Param) -> tuple[str, int]:
    """The ``struct`` code and alignment of a parameter's slot in the packed buffer."""
    if param.kind == "record":
        return f"{param.size}s", 16
    return param.code, max(param.size, 1)


def _layout(params: Sequence[Param]) -> tuple[struct.Struct, tuple[int, ...]]:
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
    return struct.Struct("".join(fmt)), tuple(offsets)


class LoadedKernel:
    """One kernel loaded on one device: what a launch needs, ready for the generated code."""

    # Slots: the generated code reads several of these attributes on every call.
    __slots__ = ("_backend", "_max_threads", "_offsets", "_static_smem", "_struct", "ctx", "device", "expression",
                 "function", "pack_into", "params", "pdl_capable", "smem_ok", "tls")

    def __init__(self, expression: str, device: int, ctx: int, function: int, params: tuple[Param, ...]) -> None:
        self.expression = expression
        self.device = device
        self.ctx = ctx
        self.function = function
        self.params = params
        self._struct, self._offsets = _layout(params)
        self.pack_into: Callable[..., None] = self._struct.pack_into
        if any(p.kind in ("bf16", "record") for p in params):
            self.pack_into = self._pack_converting
        self.tls = threading.local()
        self.smem_ok = _DEFAULT_SMEM
        self._backend = driver.backend()
        self.pdl_capable = _major(self._backend.arch_of(device)) >= 9
        self._max_threads: int | None = None
        self._static_smem: int | None = None

    def _pack_converting(self, buf: Any, offset: int, *values: Any) -> None:
        """``pack_into`` for kernels with bfloat16 scalars or structs passed by value: convert, then pack."""
        converted = [
            record_bytes(self.expression, i, p, v) if p.kind == "record" else convert(p, v)
            for i, (p, v) in enumerate(zip(self.params, values, strict=False))
        ]
        self._struct.pack_into(buf, offset, *converted, *values[len(converted):])

    # Function attributes are read only where a launch needs them (large shared memory, error messages): a
    # read forces the lazily loaded function onto the device, which a warm start should not pay for.
    @property
    def max_threads(self) -> int:
        """The most threads a block of this kernel may have on this device."""
        if self._max_threads is None:
            self._max_threads = self._backend.max_threads(self.function)
        return self._max_threads

    @property
    def static_smem(self) -> int:
        """Bytes of statically declared shared memory."""
        if self._static_smem is None:
            self._static_smem = self._backend.static_shared_memory(self.function)
        return self._static_smem

    def buffer(self) -> tuple[Any, int]:
        """This thread's parameter buffer and the address of its pointer array (built once per thread)."""
        buf = ctypes.create_string_buffer(max(self._struct.size, 1))
        base = ctypes.addressof(buf)
        pointers = (ctypes.c_void_p * max(len(self._offsets), 1))(*(base + o for o in self._offsets))
        pair = (buf, ctypes.addressof(pointers))
        self.tls.keep = pointers
        self.tls.pair = pair
        return pair

    def launch_packed(self, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int, stream: int,
                      addr: int, pdl: bool = False) -> None:
        """Launch with parameters already packed at ``addr``, in this kernel's context.

        The slow path of the generated code: another device's context is current, or the launch needs
        ``cuLaunchKernelEx``.
        """
        active = self._backend
        try:
            with driver.current_context(self.ctx):
                if pdl and self.pdl_capable:
                    active.launch_kernel_pdl(self.function, grid, block, smem, stream, addr)
                else:
                    active.launch_kernel(self.function, *grid, *block, smem, stream, addr, 0)
        except active.launch_errors as exc:
            raise self.launch_error(exc, grid, block, smem) from None

    def allow_smem(self, smem: int) -> None:
        """Raise this kernel's dynamic shared memory limit to ``smem`` bytes (up to the device's)."""
        limit = self._backend.max_shared_memory(self.device)
        if smem + self.static_smem > limit:
            raise LaunchError(
                f"{self.expression}: shared memory {smem} bytes (+ {self.static_smem} static) exceeds the "
                f"limit of {limit} bytes per block on cuda:{self.device}"
            )
        self._backend.set_max_dynamic_shared_memory(self.function, smem)
        self.smem_ok = smem

    def pack_error(self, values: Sequence[Any]) -> LaunchError:
        return pack_error(self.expression, self.params, values)

    def launch_error(self, exc: BaseException, grid: tuple[int, int, int], block: tuple[int, int, int],
                     smem: int) -> LaunchError:
        problems = []
        threads = block[0] * block[1] * block[2]
        try:
            limit = self.max_threads
        except self._backend.launch_errors:  # a context broken by an earlier fault
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
        return LaunchError(f"launch of {self.expression} on cuda:{self.device} failed: {detail} "
                           f"(grid {grid}, block {block}, shared memory {smem} bytes; {exc})")


def _major(arch: str) -> int:
    """The compute capability's major number of ``sm_90`` / ``sm_100a``."""
    digits = "".join(ch for ch in arch.split("_", 1)[-1] if ch.isdigit())
    return int(digits[:-1] or 0)


def pack_error(expression: str, params: Sequence[Param], values: Sequence[Any]) -> LaunchError:
    """The error for values that ``struct`` refused: which argument, its C++ type, and why."""
    for i, (param, value) in enumerate(zip(params, values, strict=True)):
        code, _ = _param_slot(param)
        try:
            struct.pack("=" + code, value)
        except _PACK_ERRORS as exc:
            return LaunchError(f"{expression}: argument {i} ({param.cpp}): cannot pass {value!r} of type "
                               f"{type(value).__name__} ({exc})")
    return LaunchError(f"{expression}: arguments could not be packed")


# --------------------------------------------------------------------------------------------------- values
def convert(param: Param, value: Any) -> Any:
    """What ``struct`` packs for a non-pointer parameter (bf16 bits, record bytes; the value itself otherwise)."""
    if param.kind == "bf16":
        return value if isinstance(value, (bytes, int)) else bf16_bits(value)
    return value


def bf16_bits(value: Any) -> int:
    """The bits of ``value`` as bfloat16, rounded to nearest even, as the CUDA conversions do."""
    bits = struct.unpack("=I", struct.pack("=f", float(value)))[0]
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x7FFFFF:
        return 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def record_bytes(expression: str, index: int, param: Param, arg: Any) -> bytes:
    """A struct passed by value: ``bytes`` or any buffer of exactly the parameter's size."""
    try:
        data = memoryview(arg).cast("B").tobytes()
    except TypeError:
        raise LaunchError(f"{expression}: argument {index} ({param.cpp}) is passed by value: expected "
                          f"bytes or a buffer of {param.size} bytes, got {type(arg).__name__}") from None
    if param.size and len(data) != param.size:
        raise LaunchError(f"{expression}: argument {index} ({param.cpp}): expected {param.size} bytes, "
                          f"got {len(data)}")
    return data


def dim3(value: Any, what: str) -> tuple[int, int, int]:
    """``grid`` / ``block`` as three ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, 1, 1
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 3 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        padded = (*value, 1, 1)
        return padded[0], padded[1], padded[2]
    raise LaunchError(f"{what}: expected an int or a tuple of 1 to 3 ints, got {value!r}")


def count_error(expression: str, params: Sequence[Param], args: Sequence[Any]) -> LaunchError:
    signature = ", ".join(p.cpp for p in params)
    if len(args) < len(params):
        what = f"argument {len(args)} ({params[len(args)].cpp}) is missing"
    else:
        what = f"{len(args) - len(params)} argument(s) too many"
    return LaunchError(f"{expression}({signature}): expected {len(params)} arguments, got {len(args)}: {what}")


def pointer_of(expression: str, index: int, param: Param, arg: Any) -> tuple[int, int | None, str | None]:
    """A pointer argument: (address, CUDA device or None, "torch" / "cupy" / None for the library it came from)."""
    if arg is None:
        return 0, None, None
    if isinstance(arg, int) and not isinstance(arg, bool):
        if arg < 0:
            raise LaunchError(f"{expression}: argument {index} ({param.cpp}): a pointer cannot be {arg}")
        return arg, None, None
    torch_type: Any = frameworks.torch_tensor_type()
    if torch_type is not None and isinstance(arg, torch_type):
        if not arg.is_cuda:
            raise LaunchError(f"{expression}: argument {index} ({param.cpp}) is a torch tensor on {arg.device}; "
                              "expected a CUDA tensor")
        return arg.data_ptr(), arg.get_device(), "torch"
    cupy_type: Any = frameworks.cupy_array_type()
    if cupy_type is not None and isinstance(arg, cupy_type):
        return arg.data.ptr, arg.device.id, "cupy"
    if hasattr(arg, "__dlpack__") or hasattr(arg, "__cuda_array_interface__"):
        info = tensor_info(arg)
        if info.device.type not in ("cuda", "cuda_managed"):
            raise LaunchError(f"{expression}: argument {index} ({param.cpp}) is on {info.device}; "
                              "expected a CUDA tensor")
        return info.ptr, info.device.index, None
    raise LaunchError(f"{expression}: argument {index} ({param.cpp}): expected a CUDA tensor, a raw pointer (int) "
                      f"or None, got {type(arg).__name__}")


def check_args(expression: str, params: Sequence[Param], args: Sequence[Any]) -> bytes:
    """Pack ``args`` as a launch would, without a GPU: count, scalar types and ranges, record sizes.

    Pointer parameters take any tensor (on any device: no device is asked here), a non-negative int or None.
    Returns the packed parameter bytes with tensors standing at address 0.
    """
    if len(args) != len(params):
        raise count_error(expression, params, args)
    values: list[Any] = []
    for i, (param, arg) in enumerate(zip(params, args, strict=True)):
        if param.kind == "pointer":
            if arg is None or hasattr(arg, "__dlpack__") or hasattr(arg, "__cuda_array_interface__"):
                values.append(0)
                continue
            if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
                raise LaunchError(f"{expression}: argument {i} ({param.cpp}): expected a tensor, a raw pointer "
                                  f"(int >= 0) or None, got {arg!r}")
            values.append(arg)
        elif param.kind == "record":
            values.append(record_bytes(expression, i, param, arg))
        else:
            values.append(convert(param, arg))
    layout, _ = _layout(params)
    try:
        return layout.pack(*values)
    except _PACK_ERRORS:
        raise pack_error(expression, params, values) from None


# --------------------------------------------------------------------------------------------------- streams
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


def default_stream(device: int) -> int:
    """Torch's current stream on ``device``, or CuPy's where torch is not imported."""
    active = driver.backend()
    getter = active.torch_stream_getter()
    return int(getter(device)) if getter is not None else active.cupy_stream(device)


def choose_stream(device: int, stream: Any, on_torch: bool, on_cupy: bool) -> int:
    """The stream rule: explicit, else torch's (any torch argument), else CuPy's (any CuPy one), else the default."""
    if stream is not None:
        return resolve_stream(stream)
    active = driver.backend()
    if on_torch or not on_cupy:
        getter = active.torch_stream_getter()
        if getter is not None:
            return int(getter(device))
    return active.cupy_stream(device)


def device_index(device: Any) -> int:
    """A CUDA device index from an int, ``"cuda:1"``, ``torch.device`` or :class:`~cujit.Device`."""
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind == "cuda":
            return int(index) if index else driver.backend().current_device()
    kind_attr, index_attr = getattr(device, "type", None), getattr(device, "index", None)
    if kind_attr == "cuda":
        return driver.backend().current_device() if index_attr is None else int(index_attr)
    raise ValueError(f"device: expected a CUDA device (an index, 'cuda:N' or a device object), got {device!r}")


# --------------------------------------------------------------------------------------------------- generated
def launch_env() -> dict[str, Any]:
    """The globals that generated launch lines read: the backend's calls, bound once."""
    active = driver.backend()
    return {
        "_launch_kernel": active.launch_kernel, "_ctx_get": active.ctx_get, "_LAUNCH_ERRORS": active.launch_errors,
        "_PACK_ERRORS": _PACK_ERRORS, "_torch_stream": active.torch_stream_getter(), "_cupy_stream":
        active.cupy_stream, "_ANY_LAUNCH_ERRORS": (LaunchError, *active.launch_errors),
    }


def emit_launch(src: codegen.Source, loaded: str, grid: str, block: str, smem: str, stream: str,
                values: Sequence[str], *, pdl: bool = False, smem_may_exceed: bool = True,
                on_pack_error: str | None = None, on_launch_error: str | None = None) -> None:
    """The generated lines that launch ``loaded`` (a LoadedKernel) with packed ``values``.

    ``grid`` and ``block`` are expressions of three comma-separated ints, ``smem`` and ``stream`` of ints.
    ``on_pack_error`` replaces raising the packing error (an op hands the call to its generic path, which words
    a wrong scalar by its parameter's name). ``on_launch_error``, an expression of ``_exc``, is the exception
    raised for any failure from the shared memory opt-in to the launch (an op words sizes that are not ints).
    """
    packed = ", ".join(values)
    src("try: _buf, _addr = " + loaded + ".tls.pair")
    src("except AttributeError: _buf, _addr = " + loaded + ".buffer()")
    src(f"try: {loaded}.pack_into(_buf, 0{', ' if values else ''}{packed})")
    if on_pack_error is not None:
        src(f"except _PACK_ERRORS: {on_pack_error}")
    else:
        src(f"except _PACK_ERRORS: raise {loaded}.pack_error(({packed}{',' if len(values) == 1 else ''})) from None")
    if on_launch_error is not None:
        with src.block("try"):
            if smem_may_exceed:
                src(f"if {smem} > {loaded}.smem_ok: {loaded}.allow_smem({smem})")
            if pdl:
                src(f"{loaded}.launch_packed(({grid}), ({block}), {smem}, {stream}, _addr, True)")
            else:
                src(f"if _ctx_get() != {loaded}.ctx: {loaded}.launch_packed(({grid}), ({block}), {smem}, {stream}, "
                    "_addr)")
                src(f"else: _launch_kernel({loaded}.function, {grid}, {block}, {smem}, {stream}, _addr, 0)")
        src(f"except _ANY_LAUNCH_ERRORS as _exc: raise {on_launch_error} from None")
        return
    if smem_may_exceed:
        src(f"if {smem} > {loaded}.smem_ok: {loaded}.allow_smem({smem})")
    if pdl:
        src(f"{loaded}.launch_packed(({grid}), ({block}), {smem}, {stream}, _addr, True)")
        return
    with src.block(f"if _ctx_get() != {loaded}.ctx"):
        src(f"{loaded}.launch_packed(({grid}), ({block}), {smem}, {stream}, _addr)")
    with src.block("else"):
        src(f"try: _launch_kernel({loaded}.function, {grid}, {block}, {smem}, {stream}, _addr, 0)")
        src(f"except _LAUNCH_ERRORS as _exc: raise {loaded}.launch_error(_exc, ({grid}), ({block}), {smem}) "
            "from None")


def make_launcher(expression: str, params: tuple[Param, ...], table: dict[int, LoadedKernel],
                  load: Callable[[int], LoadedKernel]) -> Callable[..., None]:
    """Generate ``launch(grid, block, args, shared_mem, stream)`` for one kernel's parameter list.

    ``table`` maps a device to the kernel loaded there; ``load(device)`` loads it on a miss. Tensor arguments
    are read on the spot (pointer, device, library); scalars are converted by parameter type.
    """
    env = launch_env()
    env.update({
        "_Tensor": frameworks.ABSENT, "_table": table, "_load": load, "_pointer": _pointer_for(expression, params, env),
        "_count_error": functools.partial(count_error, expression, params), "_conflict":
        functools.partial(_device_conflict, expression), "_record": functools.partial(record_bytes, expression),
        "_bf16": bf16_bits, "_dim3": dim3, "_choose_stream": choose_stream,
        "_current_device": lambda: driver.backend().current_device(),
    })
    src = codegen.Source()
    n = len(params)
    values = [f"_v{i}" for i in range(n)]
    with src.block("def launch(grid, block, args, shared_mem, stream)"):
        src(f"if len(args) != {n}: raise _count_error(args)")
        if n:
            src(f"{', '.join(f'_a{i}' for i in range(n))}, = args")
        src("_dev = -1")
        src("_on_torch = _on_cupy = False")
        for i, param in enumerate(params):
            a, v = f"_a{i}", f"_v{i}"
            if param.kind == "pointer":
                with src.block(f"if {a}.__class__ is _Tensor and {a}.is_cuda"):
                    src(f"{v} = {a}.data_ptr()")
                    src(f"_d = {a}.get_device()")
                    src("_on_torch = True")
                with src.block("else"):
                    src(f"{v}, _d, _lib = _pointer({i}, {a})")
                    src("if _lib == 'torch': _on_torch = True")
                    src("elif _lib == 'cupy': _on_cupy = True")
                with src.block("if _d is not None and _d != _dev"):
                    src(f"if _dev != -1: raise _conflict({i}, _dev, _d)")
                    src("_dev = _d")
            elif param.kind == "record":
                pass  # converted once the loaded kernel (which knows the struct's size) is known
            elif param.kind == "bf16":
                src(f"{v} = {a} if {a}.__class__ is int or {a}.__class__ is bytes else _bf16({a})")
            else:
                src(f"{v} = {a}")
        src("if _dev == -1: _dev = _current_device()")
        src("_s = _choose_stream(_dev, stream, _on_torch, _on_cupy)")
        src("_k = _table.get(_dev)")
        src("if _k is None: _k = _load(_dev)")
        for i, param in enumerate(params):
            if param.kind == "record":
                src(f"_v{i} = _record({i}, _k.params[{i}], _a{i})")
        src("if grid.__class__ is int: _gx = grid; _gy = _gz = 1")
        src("else: _gx, _gy, _gz = _dim3(grid, 'grid')")
        src("if block.__class__ is int: _bx = block; _by = _bz = 1")
        src("else: _bx, _by, _bz = _dim3(block, 'block')")
        emit_launch(src, "_k", "_gx, _gy, _gz", "_bx, _by, _bz", "shared_mem", "_s", values)
    codegen.build(src, env, kind="launcher", name=expression)
    frameworks.bind(env)
    return env["launch"]  # type: ignore[no-any-return]


def _pointer_for(expression: str, params: tuple[Param, ...],
                 env: dict[str, Any]) -> Callable[[int, Any], tuple[int, Any, Any]]:
    def pointer(index: int, arg: Any) -> tuple[int, int | None, str | None]:
        found = pointer_of(expression, index, params[index], arg)
        if found[2] == "torch" and frameworks.bind(env):
            env["_torch_stream"] = driver.backend().torch_stream_getter()  # torch was imported after generating
        return found

    return pointer


def _device_conflict(expression: str, index: int, first: int, found: int) -> LaunchError:
    return LaunchError(f"{expression}: argument {index} is on cuda:{found} but earlier tensor arguments are "
                       f"on cuda:{first}; all tensors of one launch must be on one device")


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

    def __call__(self, kernel: Any, *args: Any) -> None:
        launch = getattr(kernel, "launch", None)
        if launch is None:
            raise TypeError(f"LaunchKernel: expected a kernel of a JitModule (module.<name>), got "
                            f"{type(kernel).__name__}")
        launch(self.grid, self.block, *args, shared_mem=self.shared_mem, stream=self.stream)

    @staticmethod
    def resolve_device(device: Any) -> int:
        """The raw handle of ``device``'s current torch stream (CuPy's where torch is not imported)."""
        return default_stream(device_index(device))


def device_check(device: Any = None) -> None:
    """Wait for ``device`` (default: the current one) and raise ``LaunchError`` for an asynchronous fault."""
    driver.require_gpu()
    active = driver.backend()
    active.synchronize(active.current_device() if device is None else device_index(device))
