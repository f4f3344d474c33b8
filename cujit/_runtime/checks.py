"""Host-side checks: ``runtime_check`` (the guide's RuntimeCheck)."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import CujitError

__all__ = ["runtime_check"]


def runtime_check(condition: object, *parts: object) -> None:
    """Raise ``CujitError`` with ``parts`` joined and the caller's file and line when ``condition`` is false.

    ``runtime_check(n > 0, "expected a non-empty tensor, got n = ", n)``
    """
    if condition:
        return
    frame = sys._getframe(1)
    where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
    message = "".join(str(p) for p in parts) or "runtime check failed"
    raise CujitError(f"{message} (at {where})")
