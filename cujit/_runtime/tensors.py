"""Reading tensor metadata: fast paths for torch and CuPy, DLPack and ``__cuda_array_interface__`` for the rest.

The fast paths read attributes and create no DLPack capsule. The generic path reads the ``DLTensor`` structure
straight out of the capsule with ctypes; it never routes a foreign array through ``torch.from_dlpack`` (which
aborts the process on some negative strides).
"""

from __future__ import annotations

import ctypes
from typing import Any

from . import frameworks
from .dtypes import DType, as_dtype, from_dlpack_code

__all__ = [
    "Device", "TensorInfo", "UnsupportedDTypeError", "UnsupportedLayoutError", "contiguous_strides", "describe",
    "device", "dlpack_info", "element_strides", "is_contiguous", "tensor_info",
]


class UnsupportedDTypeError(TypeError):
    """A tensor whose element type cujit has no C++ alias for."""

    def __init__(self, name: str) -> None:
        super().__init__(f"dtype {name} is not supported by cujit")
        self.name = name


class UnsupportedLayoutError(ValueError):
    """A tensor whose strides are not whole elements."""


def _dtype(native: object) -> DType:
    try:
        return as_dtype(native)
    except TypeError:
        raise UnsupportedDTypeError(str(native).removeprefix("torch.")) from None


def element_strides(byte_strides: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """Strides in elements from strides in bytes, or ``None`` where one is not a whole number of elements."""
    if any(s % itemsize for s in byte_strides):
        return None
    return tuple(s // itemsize for s in byte_strides)


def _whole_strides(byte_strides: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides = element_strides(byte_strides, itemsize)
    if strides is None:
        raise UnsupportedLayoutError(f"byte strides {byte_strides} are not multiples of the element size {itemsize}")
    return strides

# DLDeviceType values (dlpack.h) and the names cujit uses for them.
DEVICE_NAMES: dict[int, str] = {
    1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm",
    11: "rocm_host", 12: "ext_dev", 13: "cuda_managed", 14: "oneapi", 15: "webgpu", 16: "hexagon", 17: "maia",
}
DEVICE_CODES = {name: code for code, name in DEVICE_NAMES.items()}


class Device:
    """A device as DLPack names it: ``type`` (``"cuda"``, ``"cpu"``, ...) and ``index``.

    Compares equal to an equal ``Device``, to ``torch.device`` and to strings such as ``"cuda:0"``.
    """

    __slots__ = ("index", "type")

    def __init__(self, type: str, index: int) -> None:
        self.type = type
        self.index = index

    def __repr__(self) -> str:
        return f"cujit.Device({self.type!r}, {self.index})"

    def __str__(self) -> str:
        return f"{self.type}:{self.index}"

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Device):
            return (self.type, self.index) == (other.type, other.index)
        if isinstance(other, str):
            return str(self) == other or (self.type == other and self.type == "cpu")
        other_type, other_index = getattr(other, "type", None), getattr(other, "index", None)
        if isinstance(other_type, str):
            index = 0 if other_index is None else other_index
            return (self.type, self.index) == (other_type, index)
        return NotImplemented

    @property
    def torch(self) -> Any:
        """The matching ``torch.device``."""
        import torch

        return torch.device(self.type, self.index)


_DEVICE_MEMO: dict[tuple[str, int], Device] = {}


def device(kind: str, index: int) -> Device:
    """A shared :class:`Device` for (type, index)."""
    found = _DEVICE_MEMO.get((kind, index))
    if found is None:
        found = _DEVICE_MEMO[(kind, index)] = Device(kind, index)
    return found


class TensorInfo:
    """What a matcher looks at: shape, strides in elements, dtype, device, address of the first element."""

    __slots__ = ("device", "dtype", "ptr", "shape", "source", "strides")

    def __init__(
        self, shape: tuple[int, ...], strides: tuple[int, ...], dtype: DType, device: Device, ptr: int, source: str
    ) -> None:
        self.shape = shape
        self.strides = strides
        self.dtype = dtype
        self.device = device
        self.ptr = ptr
        self.source = source

    def __repr__(self) -> str:
        return describe(self)


def describe(info: TensorInfo) -> str:
    """One line: ``Tensor<100, 256>[strides=<256, 1>, dtype=float32, device=cuda:0]``."""
    shape = ", ".join(map(str, info.shape))
    strides = ", ".join(map(str, info.strides))
    return f"Tensor<{shape}>[strides=<{strides}>, dtype={info.dtype.name}, device={info.device}]"


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, in elements."""
    out = []
    step = 1
    for size in reversed(shape):
        out.append(step)
        step *= max(size, 1)
    return tuple(reversed(out))


def is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Row-major contiguity; strides of size-1 dimensions do not matter, and an empty tensor is contiguous."""
    if 0 in shape:
        return True
    step = 1
    for size, stride in zip(reversed(shape), reversed(strides), strict=True):
        if size != 1:
            if stride != step:
                return False
            step *= size
    return True


# ------------------------------------------------------------------------------------------------ torch, CuPy
def torch_info(t: Any) -> TensorInfo:
    if t.is_conj() or t.is_neg():
        # A lazy conjugate or negation view: its memory holds the values before the operation, which is what a
        # kernel would read.
        raise UnsupportedLayoutError("a torch tensor with its conjugate or negative bit set; call "
                                     ".resolve_conj() / .resolve_neg() first")
    dev = t.device
    index = dev.index if dev.index is not None else 0
    return TensorInfo(tuple(t.shape), tuple(t.stride()), _dtype(t.dtype), device(dev.type, index), t.data_ptr(),
                      "torch")


def cupy_info(a: Any) -> TensorInfo:
    return TensorInfo(tuple(a.shape), _whole_strides(tuple(a.strides), a.itemsize), _dtype(a.dtype),
                      device("cuda", a.device.id), a.data.ptr, "cupy")


# ------------------------------------------------------------------------------------------------ DLPack
class _DLDevice(ctypes.Structure):
    _fields_ = (("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32))


class _DLDataType(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16))


class _DLTensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    )


class _DLManagedTensor(ctypes.Structure):
    _fields_ = (("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p))


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = (
        ("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor),
    )


_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = (ctypes.py_object, ctypes.c_char_p)
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)


def _capsule(obj: Any) -> Any:
    kwargs: dict[str, Any] = {}
    dlpack_device = getattr(obj, "__dlpack_device__", None)
    if dlpack_device is not None:
        try:
            kind = int(dlpack_device()[0])
        except (TypeError, ValueError, IndexError):
            kind = 1
        if kind in (2, 13):  # CUDA, managed: reading metadata needs no synchronisation
            kwargs["stream"] = -1
    try:
        return obj.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:
        return obj.__dlpack__(**kwargs)


def dlpack_info(obj: Any) -> TensorInfo:
    """Metadata from the object's DLPack capsule (the generic path)."""
    capsule = _capsule(obj)
    if _capsule_valid(capsule, b"dltensor_versioned"):
        managed = _DLManagedTensorVersioned.from_address(_capsule_pointer(capsule, b"dltensor_versioned"))
    elif _capsule_valid(capsule, b"dltensor"):
        managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor"))  # type: ignore[assignment]
    else:
        raise TypeError(f"{type(obj).__name__}.__dlpack__() returned {capsule!r}, not a DLPack capsule")
    dl = managed.dl_tensor
    ndim = dl.ndim
    shape = tuple(dl.shape[i] for i in range(ndim))
    strides = tuple(dl.strides[i] for i in range(ndim)) if dl.strides else contiguous_strides(shape)
    try:
        dtype = from_dlpack_code(dl.dtype.code, dl.dtype.bits, dl.dtype.lanes)
    except TypeError:
        raise UnsupportedDTypeError(f"(DLPack code {dl.dtype.code}, {dl.dtype.bits} bits, "
                                    f"{dl.dtype.lanes} lanes)") from None
    kind = DEVICE_NAMES.get(dl.device.device_type, f"dlpack{dl.device.device_type}")
    ptr = (dl.data or 0) + dl.byte_offset
    info = TensorInfo(shape, strides, dtype, device(kind, dl.device.device_id), ptr, "dlpack")
    del managed, dl  # the capsule's destructor frees the tensor; keep no view into it
    return info


def cuda_array_interface_info(obj: Any) -> TensorInfo:
    """Metadata from ``__cuda_array_interface__`` (Numba and friends)."""
    import numpy

    cai = obj.__cuda_array_interface__
    dtype = _dtype(numpy.dtype(cai["typestr"]))
    shape = tuple(int(s) for s in cai["shape"])
    strides = cai.get("strides")
    strides = contiguous_strides(shape) if strides is None else _whole_strides(tuple(strides), dtype.itemsize)
    ptr = int(cai["data"][0])
    index = 0
    if ptr:
        from . import driver

        index = driver.backend().pointer_device(ptr)
    return TensorInfo(shape, strides, dtype, device("cuda", index), ptr, "cuda_array_interface")


def tensor_info(obj: Any) -> TensorInfo:
    """Metadata of any tensor-like object.

    Raises:
        TypeError: ``obj`` is not a tensor (no ``__dlpack__`` and no ``__cuda_array_interface__``).
    """
    torch_type = frameworks.torch_tensor_type()
    if torch_type is not None and isinstance(obj, torch_type):
        return torch_info(obj)
    cupy_type = frameworks.cupy_array_type()
    if cupy_type is not None and isinstance(obj, cupy_type):
        return cupy_info(obj)
    if hasattr(obj, "__dlpack__"):
        return dlpack_info(obj)
    if hasattr(obj, "__cuda_array_interface__"):
        return cuda_array_interface_info(obj)
    raise TypeError(
        f"expected a tensor (torch, CuPy, NumPy or any object with __dlpack__ or __cuda_array_interface__), "
        f"got {type(obj).__module__}.{type(obj).__qualname__}"
    )
