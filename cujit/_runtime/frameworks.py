"""torch and CuPy, which cujit never imports on its own: every lookup of them goes through here.

A tensor of a library that is not imported cannot exist, so the hot paths compare a tensor's class with
``torch.Tensor`` / ``cupy.ndarray`` only once those modules are in ``sys.modules``. Generated code keeps those
classes in its globals; :func:`bind` fills them in, and the generic path calls it whenever it runs, so a library
imported after the first launch takes the fast path from its next call on. CuPy's bindings (``cupy_backends``),
which cujit does use, would import all of CuPy on their first calls; :func:`cupy_left_unimported` keeps them from it.
"""

from __future__ import annotations

import _imp
import contextlib
import functools
import importlib
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "ABSENT", "bind", "cupy", "cupy_array_type", "cupy_empty", "cupy_left_unimported", "cupy_stream",
    "first_calls_without_cupy", "torch", "torch_stream_getter", "torch_tensor_type",
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


class _CupyStandIn(types.ModuleType):
    """``cupy`` while :func:`cupy_left_unimported` runs: ``_environment._log`` only; anything else imports CuPy."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_import_cupy(), name)


class _EnvironmentStandIn(types.ModuleType):
    """``cupy._environment`` while :func:`cupy_left_unimported` runs: CuPy's ``_log``, the rest from CuPy."""

    @staticmethod
    def _log(msg: str) -> None:
        # What cupy._environment._log does: a line on stderr under CUPY_DEBUG_LIBRARY_LOAD=1.
        if os.environ.get("CUPY_DEBUG_LIBRARY_LOAD", "0") == "1":
            sys.stderr.write(f"[CUPY_DEBUG_LIBRARY_LOAD] {msg}\n")
            sys.stderr.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(_import_cupy()._environment, name)


_STAND_IN_LOCK = threading.Lock()


def _import_cupy() -> Any:
    """The real CuPy, imported now if needed (the stand-in, where it is in place, leaves ``sys.modules`` first)."""
    with _STAND_IN_LOCK:
        if isinstance(sys.modules.get("cupy"), _CupyStandIn):
            del sys.modules["cupy"]
    return importlib.import_module("cupy")


@contextlib.contextmanager
def cupy_left_unimported() -> Iterator[None]:
    """Run the block with CuPy's soft links able to load their libraries without importing all of CuPy.

    CuPy 14's bindings (``cupy_backends``) load libcuda and libcudart on the first call of any of their functions,
    and report each load with ``import cupy; cupy._environment._log(...)``, a debug message. That import runs
    ``cupy/__init__.py``: all of CuPy, numpy among it, most of the 85 ms first call of a cached op measured on an
    H200 host and 0.3-0.5 s on a small CPU host, in a process that would otherwise need no CuPy at all.

    While the block runs, where CuPy is not imported yet, ``sys.modules["cupy"]`` is a stand-in whose
    ``_environment._log`` does what CuPy's does; any other attribute imports the real CuPy and answers from it,
    so a thread that uses CuPy meanwhile gets all of it. The block holds the interpreter's import lock, so that no
    other thread starts importing a module (a submodule of CuPy under the stand-in, say) until the stand-in has
    left ``sys.modules`` again; this thread's own imports go on. What the first calls import themselves
    (``cuda.pathfinder``, for CuPy's CUDA 13 build) is imported before the lock is taken, so that this thread never
    waits inside the block for a module that another thread, blocked by the lock, is importing.
    """
    with contextlib.suppress(Exception):  # absent or broken: CuPy's own call then says so, where it is needed
        importlib.import_module("cuda.pathfinder")  # torch 2.11 and later import it already
    _imp.acquire_lock()
    try:
        with _STAND_IN_LOCK:
            if "cupy" in sys.modules:
                stand_in = None
            else:
                stand_in = _CupyStandIn("cupy", "a stand-in for CuPy while its bindings load their libraries")
                stand_in._environment = _EnvironmentStandIn("cupy._environment")  # type: ignore[attr-defined]
                sys.modules["cupy"] = stand_in
        try:
            yield
        finally:
            if stand_in is not None:
                with _STAND_IN_LOCK:
                    if sys.modules.get("cupy") is stand_in:
                        del sys.modules["cupy"]
    finally:
        _imp.release_lock()


def first_calls_without_cupy(*calls: Callable[[], Any]) -> None:
    """Make the first call into each CuPy binding under :func:`cupy_left_unimported`, so that it loads its library.

    A call that fails here (no driver, no library) is left to fail again, with its reason, where it is needed.
    """
    with cupy_left_unimported():
        for call in calls:
            try:
                call()
            except Exception:  # each binding raises its own types
                continue
