"""Element types: one record per dtype, and conversions from every spelling users pass.

A :class:`DType` compares equal to its torch dtype, its NumPy dtype (where NumPy has one) and its name, so the
value that ``SymbolicDType.unwrap()`` returns can be tested against whatever the caller has at hand.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from . import frameworks

__all__ = ["DType", "as_dtype", "from_dlpack_code", "DTYPES"]


@dataclass(frozen=True, eq=False)
class DType:
    """One element type.

    Attributes:
        name: the canonical name, as torch spells it without ``torch.`` (``"bfloat16"``).
        cpp: the C++ alias that ``cujit/include/cujit/types.cuh`` defines (``"bf16_t"``).
        code: the DLPack type code (``kDLInt`` is 0, ``kDLFloat`` 2, ``kDLBfloat`` 4, ...).
        bits: bits per element.
        numpy_name: the NumPy dtype name, or ``None`` where NumPy has no such type.
    """

    name: str
    cpp: str
    code: int
    bits: int
    numpy_name: str | None

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.bits // 8

    @property
    def torch(self) -> Any:
        """The matching ``torch.dtype`` (imports torch)."""
        import torch

        return getattr(torch, self.name)

    @property
    def dtype(self) -> Any:
        """The matching NumPy dtype; lets ``numpy.dtype(d)`` and ``numpy_dtype == d`` work."""
        if self.numpy_name is None:
            raise AttributeError(f"NumPy has no dtype for {self.name}")
        import numpy

        return numpy.dtype(self.numpy_name)

    @staticmethod
    def of(value: object) -> DType:
        """The dtype of ``value``: a torch dtype, a NumPy/CuPy dtype or scalar type, a name or a ``DType``."""
        return as_dtype(value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DType):
            return other is self
        try:
            return as_dtype(other) is self
        except TypeError:
            return False

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self) -> tuple[object, ...]:
        # One object per dtype in a process: compare by identity, so unpickle to the same one.
        return (as_dtype, (self.name,))

    def __repr__(self) -> str:
        return f"cujit.dtype({self.name})"

    def __str__(self) -> str:
        return self.name


# DLPack type codes (dlpack.h, DLDataTypeCode).
_DL_INT, _DL_UINT, _DL_FLOAT, _DL_BFLOAT, _DL_COMPLEX, _DL_BOOL = 0, 1, 2, 4, 5, 6
_DL_FLOAT8_E4M3FN, _DL_FLOAT8_E5M2 = 10, 12

DTYPES: tuple[DType, ...] = (
    DType("bool", "bool", _DL_BOOL, 8, "bool"),
    DType("int8", "int8_t", _DL_INT, 8, "int8"),
    DType("int16", "int16_t", _DL_INT, 16, "int16"),
    DType("int32", "int32_t", _DL_INT, 32, "int32"),
    DType("int64", "int64_t", _DL_INT, 64, "int64"),
    DType("uint8", "uint8_t", _DL_UINT, 8, "uint8"),
    DType("uint16", "uint16_t", _DL_UINT, 16, "uint16"),
    DType("uint32", "uint32_t", _DL_UINT, 32, "uint32"),
    DType("uint64", "uint64_t", _DL_UINT, 64, "uint64"),
    DType("float16", "fp16_t", _DL_FLOAT, 16, "float16"),
    DType("bfloat16", "bf16_t", _DL_BFLOAT, 16, None),
    DType("float32", "fp32_t", _DL_FLOAT, 32, "float32"),
    DType("float64", "fp64_t", _DL_FLOAT, 64, "float64"),
    DType("float8_e4m3fn", "fp8_e4m3_t", _DL_FLOAT8_E4M3FN, 8, None),
    DType("float8_e5m2", "fp8_e5m2_t", _DL_FLOAT8_E5M2, 8, None),
    DType("complex64", "complex64_t", _DL_COMPLEX, 64, "complex64"),
    DType("complex128", "complex128_t", _DL_COMPLEX, 128, "complex128"),
)

_BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
_ALIASES = {
    "half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "fp32": "float32",
    "double": "float64", "fp64": "float64", "fp8_e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2", "cfloat": "complex64", "cdouble": "complex128",
    # ml_dtypes spellings that NumPy reports for its extension types.
    "float8_e4m3fn_": "float8_e4m3fn",
}
for _alias, _target in _ALIASES.items():
    _BY_NAME[_alias] = _BY_NAME[_target]
for _d in DTYPES:
    _BY_NAME[_d.cpp] = _d

_BY_CODE: dict[tuple[int, int], DType] = {(d.code, d.bits): d for d in DTYPES}

# Identity-keyed memo of foreign dtype objects already converted (torch.int32 -> DType, ...).
_MEMO: dict[int, tuple[object, DType]] = {}


def from_dlpack_code(code: int, bits: int, lanes: int = 1) -> DType:
    """The dtype of a DLPack ``DLDataType``."""
    found = _BY_CODE.get((code, bits))
    if found is None or lanes != 1:
        raise TypeError(f"DLPack dtype (code={code}, bits={bits}, lanes={lanes}) is not supported by cujit")
    return found


def as_dtype(obj: object) -> DType:
    """Convert a torch dtype, NumPy/CuPy dtype or scalar type, name or :class:`DType` to a :class:`DType`.

    Raises:
        TypeError: ``obj`` is not a dtype that cujit knows.
    """
    if isinstance(obj, DType):
        return obj
    memo = _MEMO.get(id(obj))
    if memo is not None and memo[0] is obj:
        return memo[1]
    found = _convert(obj)
    if found is None:
        raise TypeError(f"expected a dtype (torch, NumPy, CuPy or a name), got {obj!r} of type {type(obj).__name__}")
    if not isinstance(obj, str):
        _MEMO[id(obj)] = (obj, found)
    return found


def _convert(obj: object) -> DType | None:
    if isinstance(obj, str):
        return _BY_NAME.get(obj.removeprefix("torch.").removeprefix("numpy.").strip().lower())
    torch = frameworks.torch()
    if torch is not None and isinstance(obj, torch.dtype):
        return _BY_NAME.get(str(obj).removeprefix("torch."))
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(obj, numpy.dtype) or (isinstance(obj, type) and issubclass(obj, numpy.generic)):
            return _BY_NAME.get(numpy.dtype(obj).name)
    return None
