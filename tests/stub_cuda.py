"""A stand-in CUDA driver and tensors that claim to live on it, for running the launch paths on a CPU machine.

``StubBackend`` records every launch (function, grid, block, shared memory, stream, context and the packed
parameter bytes) and can be told to fail; ``FakeCudaTensor`` wraps a CPU torch tensor and reports itself as a CUDA
tensor on a chosen device, both to the torch fast paths (its class is bound as the torch tensor class of the code
under test) and to the generic path (``__cuda_array_interface__``, whose pointer the stub maps to that device).
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cujit._runtime import driver
from cujit._runtime.signature import Param


class StubLaunchError(RuntimeError):
    """What the stub raises for a launch it was told to refuse."""


@dataclass
class Launched:
    function: int
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int
    stream: int
    params: int
    ctx: int
    pdl: bool = False

    def values(self, params: Sequence[Param]) -> list[Any]:
        """Decode the packed arguments with the kernel's parameter list (read at launch time: see StubBackend)."""
        out = []
        pointers = (ctypes.c_void_p * len(params)).from_address(self.params)
        for param, address in zip(params, pointers, strict=True):
            data = ctypes.string_at(address, param.size)
            out.append(data if param.kind == "record" else struct.unpack("=" + param.code, data)[0])
        return out


@dataclass
class StubBackend(driver.Backend):
    devices: int = 2
    arch: str = "sm_90"
    current: int = 0
    ctx: int = 0
    launches: list[Launched] = field(default_factory=list)
    fail: str | None = None
    pointer_devices: dict[int, int] = field(default_factory=dict)
    loaded: list[tuple[int, list[str]]] = field(default_factory=list)
    smem_limits: dict[int, int] = field(default_factory=dict)
    decoded: list[list[Any]] = field(default_factory=list)
    decoder: Callable[[Launched], list[Any]] | None = None
    sizes: dict[str, list[int]] = field(default_factory=dict)  # lowered kernel name -> parameter sizes
    _names: dict[int, str] = field(default_factory=dict)

    launch_errors = (StubLaunchError, OverflowError, TypeError)

    def device_count(self) -> int:
        return self.devices

    def current_device(self) -> int:
        return self.current

    def arch_of(self, device: int) -> str:
        return self.arch

    def max_shared_memory(self, device: int) -> int:
        return 227 * 1024

    def primary_context(self, device: int) -> int:
        return 1000 + device

    def ctx_get(self) -> int:
        return self.ctx

    def ctx_set(self, ctx: int) -> None:
        self.ctx = ctx

    def load_module(self, device: int, cubin: bytes, names: list[str]) -> tuple[int, int, list[int]]:
        assert cubin[:4] == b"\x7fELF"
        self.loaded.append((device, names))
        base = 100 * len(self.loaded)
        handles = [base + i + 1 for i in range(len(names))]
        self._names.update(zip(handles, names, strict=True))
        return 1000 + device, base, handles

    def launch_kernel(self, function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, smem: int,
                      stream: int, params: int, extra: int) -> None:
        for value in (gx, gy, gz, bx, by, bz, smem, stream, params):
            if not isinstance(value, int):
                raise TypeError(f"an argument of cuLaunchKernel is {type(value).__name__}")
        if self.fail:
            raise StubLaunchError(self.fail)
        self._record(Launched(function, (gx, gy, gz), (bx, by, bz), smem, stream, params, self.ctx))

    def launch_kernel_pdl(self, function: int, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
                          stream: int, params: int) -> None:
        if self.fail:
            raise StubLaunchError(self.fail)
        self._record(Launched(function, grid, block, smem, stream, params, self.ctx, pdl=True))

    def _record(self, launched: Launched) -> None:
        self.launches.append(launched)
        if self.decoder is not None:  # the buffer is reused by the next launch: read it now
            self.decoded.append(self.decoder(launched))

    def max_threads(self, function: int) -> int:
        return 1024

    def static_shared_memory(self, function: int) -> int:
        return 0

    def set_max_dynamic_shared_memory(self, function: int, nbytes: int) -> None:
        self.smem_limits[function] = nbytes

    def param_sizes(self, function: int) -> list[int] | None:
        return self.sizes.get(self._names.get(function, ""))

    def pointer_device(self, ptr: int) -> int:
        return self.pointer_devices.get(ptr, 0)

    def synchronize(self, device: int) -> None:
        if self.fail:
            raise driver.LaunchError(f"a kernel on cuda:{device} failed asynchronously: {self.fail}")

    def torch_stream_getter(self) -> Callable[[int], int] | None:
        return lambda device: 7000 + device

    def cupy_stream(self, device: int) -> int:
        return 8000 + device


@contextlib.contextmanager
def stub_backend(**kwargs: Any) -> Iterator[StubBackend]:
    with driver.use(StubBackend(**kwargs)) as stub:
        yield stub  # type: ignore[misc]


_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.int32: "<i4", torch.int64: "<i8", torch.uint8: "|u1",
            torch.float64: "<f8", torch.int8: "|i1", torch.bool: "|b1"}


class FakeCudaTensor:
    """A CPU tensor that says it is on ``cuda:<device>``: enough of torch.Tensor's surface for the fast paths."""

    def __init__(self, tensor: torch.Tensor, device: int = 0, stub: StubBackend | None = None) -> None:
        self.t = tensor
        self.device_index = device
        if stub is not None and tensor.data_ptr():
            stub.pointer_devices[tensor.data_ptr()] = device

    is_cuda = True

    @property
    def dtype(self) -> torch.dtype:
        return self.t.dtype

    @property
    def shape(self) -> torch.Size:
        return self.t.shape

    @property
    def ndim(self) -> int:
        return self.t.ndim

    def stride(self) -> tuple[int, ...]:
        return self.t.stride()

    def is_contiguous(self) -> bool:
        return self.t.is_contiguous()

    def is_conj(self) -> bool:
        return self.t.is_conj()

    def is_neg(self) -> bool:
        return self.t.is_neg()

    def get_device(self) -> int:
        return self.device_index

    def data_ptr(self) -> int:
        return self.t.data_ptr()

    def numel(self) -> int:
        return self.t.numel()

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        item = self.t.element_size()
        return {"shape": tuple(self.t.shape), "typestr": _TYPESTR[self.t.dtype], "version": 3,
                "data": (self.t.data_ptr(), False), "strides": tuple(s * item for s in self.t.stride())}


def bind_fakes(env: dict[str, Any], stub: StubBackend, device: int = 0) -> list[FakeCudaTensor]:
    """Point generated code's torch class and allocators at FakeCudaTensor; returns the list of allocations."""
    made: list[FakeCudaTensor] = []

    def keep(t: torch.Tensor) -> FakeCudaTensor:
        fake = FakeCudaTensor(t, device, stub)
        made.append(fake)
        return fake

    env["_Tensor"] = FakeCudaTensor
    env["_torch_empty_like"] = lambda like: keep(torch.empty_like(like.t))
    env["_torch_empty"] = lambda shape, dtype, device: keep(torch.empty(shape, dtype=dtype))
    env["_torch_empty_strided"] = lambda shape, strides, dtype, device: keep(torch.empty_strided(shape, strides,
                                                                                                  dtype=dtype))
    return made


def fake(stub: StubBackend, t: torch.Tensor, device: int = 0) -> FakeCudaTensor:
    """``t`` seen as a CUDA tensor of ``device`` by the launch paths under ``stub``."""
    return FakeCudaTensor(t, device, stub)


def last_launch(stub: StubBackend, fn: Any) -> tuple[tuple[Any, ...], list[Any]]:
    """The instantiation (template fields) and the decoded arguments of the last launch, one of ``fn``'s kernels."""
    launched = stub.launches[-1]
    for key, loaded in fn.op.table.items():
        if loaded.function == launched.function:
            return key[:-1], launched.values(loaded.params)
    raise AssertionError("the last launch is not one of this op's kernels")


def count_slow(fn: Any) -> list[tuple[Any, ...]]:
    """The calls of ``fn``'s generic path from now on (the generated function reaches it through ``_slow``)."""
    calls: list[tuple[Any, ...]] = []
    slow = fn.op.env["_slow"]

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return slow(*args, **kwargs)

    fn.op.env["_slow"] = counting
    return calls
