"""Rendering Python values as C++ template arguments (``make_cpp_args``)."""

from __future__ import annotations

import math
import sys

from .dtypes import as_dtype

__all__ = ["CppArgs", "make_cpp_args", "render_cpp_arg"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1


class CppArgs(tuple[str, ...]):
    """Rendered template arguments; ``str()`` joins them with ``", "`` for use inside ``<...>``."""

    __slots__ = ()

    def __str__(self) -> str:
        return ", ".join(self)

    def __repr__(self) -> str:
        return f"CppArgs({', '.join(self)})"


def _render_int(value: int) -> str:
    if _INT32_MIN < value <= _INT32_MAX:
        return str(value)
    if value == _INT32_MIN:
        # `-2147483648` is unary minus applied to a literal that does not fit in int: it would be a long.
        return "(-2147483647 - 1)"
    if _INT64_MIN < value <= _INT64_MAX:
        return f"{value}LL"
    if value == _INT64_MIN:
        return "(-9223372036854775807LL - 1)"
    if _INT64_MAX < value <= _UINT64_MAX:
        return f"{value}ULL"
    raise ValueError(f"make_cpp_args: integer {value} does not fit in 64 bits")


def _render_float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"make_cpp_args: {value!r} has no C++ literal; expected a finite float")
    # repr() is the shortest decimal that reads back to the same double, and is valid C++.
    return repr(float(value))


def render_cpp_arg(value: object) -> str:
    """Render one value; see :func:`make_cpp_args`."""
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _render_int(value)
    if isinstance(value, float):
        return _render_float(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        if isinstance(value, numpy.bool_):
            return "true" if value else "false"
        if isinstance(value, numpy.integer):
            return _render_int(int(value))
        if isinstance(value, numpy.floating):
            if value.dtype.itemsize > 8 and numpy.longdouble(float(value)) != value:
                raise TypeError(f"make_cpp_args: {value!r} of type {type(value).__name__} has more precision than "
                                "a double; GPU code has no wider float, so pass a float")
            return _render_float(float(value))
    try:
        return as_dtype(value).cpp
    except TypeError:
        pass
    raise TypeError(
        f"make_cpp_args: cannot render {value!r} of type {type(value).__name__} as a C++ template argument; "
        "expected a bool, int, float or dtype"
    )


def make_cpp_args(*values: object) -> CppArgs:
    """Render values as C++ template arguments.

    ``bool`` becomes ``true``/``false``; ``int`` a literal of the right width (``LL``/``ULL`` past 32 bits);
    ``float`` the shortest literal that reads back exactly; a dtype its alias from ``cujit/include``
    (``torch.float16`` -> ``fp16_t``).

    Raises:
        ValueError: a NaN or infinite float, or an int wider than 64 bits.
        TypeError: a value of any other type.
    """
    return CppArgs(render_cpp_arg(v) for v in values)
