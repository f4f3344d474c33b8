"""The exception hierarchy of cujit: one base class, one subclass per failing stage; and its warnings."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["CheckError", "CompileError", "CompileWarning", "CujitError", "LaunchError", "TensorMatchError", "warn_user"]


class CujitError(Exception):
    """Base class of every error that cujit raises on purpose."""


class TensorMatchError(CujitError, ValueError):
    """A tensor argument does not match what a :class:`TensorMatcher` expects."""


class CheckError(CujitError, ValueError):
    """An argument of an op failed one of the op's declared checks (a value out of its range, say)."""


class LaunchError(CujitError):
    """A kernel could not be launched, or a launched kernel failed."""


class CompileError(CujitError):
    """NVRTC rejected a module.

    Attributes:
        log: NVRTC's log, with locations in the real ``.cuh`` files.
        options: the NVRTC options used.
        name_expressions: the C++ name expressions that were requested.
        source: the generated top-level source (it includes the kernel files).
    """

    def __init__(
        self,
        message: str,
        *,
        log: str = "",
        options: Sequence[str] = (),
        name_expressions: Sequence[str] = (),
        source: str = "",
    ) -> None:
        super().__init__(message)
        self.log = log
        self.options = tuple(options)
        self.name_expressions = tuple(name_expressions)
        self.source = source

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the details when the error crosses a process boundary.
        return (_rebuild_compile_error, (self.args[0], self.log, self.options, self.name_expressions, self.source))

    def numbered_source(self) -> str:
        """The generated source with line numbers, for reports."""
        return "\n".join(f"{i:5d}  {line}" for i, line in enumerate(self.source.splitlines(), 1))


def _rebuild_compile_error(
    message: str, log: str, options: tuple[str, ...], names: tuple[str, ...], source: str
) -> CompileError:
    return CompileError(message, log=log, options=options, name_expressions=names, source=source)


class CompileWarning(UserWarning):
    """NVRTC compiled a module but reported warnings (an unused variable, a narrowing conversion, ...)."""


# Warnings skip frames in files under these folders (the package as imported, and with links resolved).
_HERE = Path(__file__)
_PACKAGE_PREFIXES = tuple({str(p) + os.sep for p in (_HERE.parent.parent, _HERE.resolve().parent.parent)})


def warn_user(message: str, category: type[Warning]) -> None:
    """Issue a warning attributed to the first caller outside the cujit package (the user's own line)."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, skip_file_prefixes=_PACKAGE_PREFIXES)
        return
    frame: FrameType | None = sys._getframe(1)
    level = 2  # stacklevel 2 names warn_user's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_PREFIXES):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
