"""torch and CuPy, which cujit never imports on its own: every lookup of them goes through here.

A tensor of a library that is not imported cannot exist, so the hot paths compare a tensor's class with
``torch.Tensor`` / ``cupy.ndarray`` only once those modules are in ``sys.modules``. Generated code keeps those
classes in its globals; :func:`bind` fills them in, and the generic path calls it whenever it runs, so a library
imported after the first launch takes the fast path from its next call on.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "ABSENT", "bind", "cupy", "cupy_array_type", "cupy_empty", "cupy_stream", "torch", "torch_stream_getter",
    "torch_tensor_type",
]


class _Absent:
    """Stands for the class of a library that is not imported: no object is of this class."""


#: What generated code compares tensor classes with while the library is not imported.
ABSENT: type = _Absent


def torch() -> Any | None:
    """The torch module if it has been imported, else ``None``."""
    return sys.modules.get("torch")


def cupy() -> Any | None:
    """The CuPy module if it has been imported, else ``None``."""
    return sys.modules.get("cupy")


def torch_tensor_type() -> type | None:
    module = torch()
    return None if module is None else module.Tensor  # type: ignore[no-any-return]


def cupy_array_type() -> type | None:
    module = cupy()
    return None if module is None else module.ndarray  # type: ignore[no-any-return]


def bind(env: dict[str, Any]) -> bool:
    """Set ``env["_Tensor"]`` (and ``_Parameter``) / ``env["_ndarray"]`` to the classes of the imported libraries.

    Returns whether anything changed. The slots hold ``_Absent`` (a class no object has) until then.
    """
    changed = False
    if env.get("_Tensor", _Absent) is _Absent and (found := torch_tensor_type()) is not None:
        env["_Tensor"] = found
        # nn.Parameter (a module's weight) is a Tensor subclass with the same metadata: fast paths accept it too.
        env["_Parameter"] = torch().nn.Parameter  # type: ignore[union-attr]
        changed = True
    if env.get("_ndarray", _Absent) is _Absent and (found := cupy_array_type()) is not None:
        env["_ndarray"] = found
        changed = True
    return changed



def torch_stream_getter() -> Callable[[int], int] | None:
    """``device index -> raw handle of torch's current stream there``, the cheapest way torch offers."""
    module = torch()
    if module is None:
        return None
    raw = getattr(module._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw  # type: ignore[no-any-return]
    return lambda device: int(module.cuda.current_stream(device).cuda_stream)


def cupy_stream(device: int) -> int:
    """The raw handle of CuPy's current stream on ``device``."""
    return int(_cupy_current_stream()(device).ptr)


@functools.cache
def _cupy_current_stream() -> Callable[[int], Any]:
    import cupy as module

    return module.cuda.get_current_stream  # type: ignore[no-any-return]


def cupy_empty(shape: Any, dtype: Any, device: int, strides: tuple[int, ...] | None = None) -> Any:
    """An uninitialised CuPy array on ``device`` (CuPy allocates on the current device, not a given one)."""
    import cupy as module

    with module.cuda.Device(device):
        if strides is None:
            return module.empty(shape, dtype)
        itemsize = module.dtype(dtype).itemsize
        shape = tuple(shape)
        extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) if all(shape) else 0
        memory = module.cuda.alloc(max(extent, 0) * itemsize)
        return module.ndarray(shape, dtype, memory, strides=tuple(s * itemsize for s in strides))
