"""An op's kernel arguments against the kernel's parameter types, checked once per (kernel, device).

An op names what it passes (``args=("out", "src", "n")``); the kernel's parameter list comes from NVRTC
(``signature.py``). Before the first launch of an instantiation on a device, every argument is held against its
parameter: a tensor goes only to a pointer, a scalar only to a non-pointer, and a tensor's dtype must be the pointee
type where the pointee names a dtype cujit knows (``float*`` takes float32 tensors only). Byte pointers
(``char*``, ``unsigned char*``, ``void*``), vectors and other structs take any dtype: cujit cannot tell what the
kernel reads through them. A mismatch would write through a length or read half-precision data as floats, so it
is a :class:`CujitError` and nothing is launched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .dtypes import DType, as_dtype
from .errors import CujitError
from .signature import Param

__all__ = ["Passed", "check_kernel_args", "pointee_dtype"]

# The C++ spellings the lowered names give for the element types of cujit's dtypes (typedefs are resolved there:
# int64_t is spelled long, fp16_t __half, fp8_e4m3_t __nv_fp8_e4m3).
_POINTEES: dict[str, str] = {
    "bool": "bool",
    "short": "int16", "unsigned short": "uint16",
    "int": "int32", "unsigned int": "uint32",
    "long": "int64", "long long": "int64", "unsigned long": "uint64", "unsigned long long": "uint64",
    "__half": "float16", "_Float16": "float16", "__nv_bfloat16": "bfloat16",
    "float": "float32", "double": "float64",
    "__nv_fp8_e4m3": "float8_e4m3fn", "__nv_fp8_e5m2": "float8_e5m2",
}
_QUALIFIERS = ("const", "volatile", "__restrict__")


def pointee_dtype(param: Param) -> DType | None:
    """The dtype a pointer parameter points to, or None where the pointee is no dtype cujit knows."""
    if param.kind != "pointer" or not param.cpp.endswith(("*", "&")):
        return None
    words = [w for w in param.cpp[:-1].split() if w not in _QUALIFIERS]
    name = _POINTEES.get(" ".join(words))
    return None if name is None else as_dtype(name)


class Passed(NamedTuple):
    """What an op passes for one ``args`` entry.

    Attributes:
        tensor: whether it is a tensor (a pointer goes to the kernel).
        dtypes: for a tensor, the dtypes it can have in this instantiation (None: any dtype).
        what: for a scalar, its type in words (``"int"``, ``"float"``, ...), for messages.
    """

    tensor: bool
    dtypes: tuple[DType, ...] | None = None
    what: str = ""


def check_kernel_args(op_name: str, expression: str, params: Sequence[Param], args: Sequence[str],
                      passed: Mapping[str, Passed]) -> None:
    """Raise ``CujitError`` for the first argument that its kernel parameter cannot take (counts first)."""
    if len(params) != len(args):
        raise CujitError(
            f"{op_name}: the op passes {len(args)} arguments ({', '.join(args)}) but {expression} takes "
            f"{len(params)} ({', '.join(p.cpp for p in params)})"
        )
    for index, (arg, param) in enumerate(zip(args, params, strict=True)):
        given = passed[arg]
        where = f"{op_name}: argument {arg!r} goes to parameter {index} ({param.cpp}) of {expression}"
        if given.tensor and param.kind != "pointer":
            raise CujitError(f"{where}: expected a scalar of type {param.cpp}, got a tensor; tensors go to pointer "
                             "parameters")
        if not given.tensor and param.kind == "pointer":
            raise CujitError(f"{where}: expected a tensor (a pointer parameter), got a scalar ({given.what})")
        if not given.tensor:
            continue
        element = pointee_dtype(param)
        if element is None:
            continue
        if given.dtypes is None:
            raise CujitError(f"{where}: expected a tensor of {element.name}, got a tensor of any dtype (its "
                             f"TensorMatcher allows every dtype; name them with with_dtype(...))")
        wrong = [d.name for d in given.dtypes if d != element]
        if len(given.dtypes) == 1 and wrong:
            raise CujitError(f"{where}: expected a tensor of {element.name}, got a tensor of {wrong[0]}")
        if wrong:
            allowed = " or ".join(d.name for d in given.dtypes)
            raise CujitError(f"{where}: expected a tensor of {element.name}, got a tensor that may be "
                             f"{' or '.join(wrong)} (its TensorMatcher allows {allowed})")
