"""Integer constants that a kernel header shares with the Python code that plans its launches.

The header declares them one a line, ``constexpr int kName = <integer>;``, and :func:`header_constants` reads
them, so that each value is written once, in the header that the kernel compiles, and the plan that picks the
kernel's template arguments cannot disagree with it. A ``constexpr`` line of another form is refused rather than
skipped: a constant that the reader missed is one that the two sides could disagree on.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .errors import CujitError

__all__ = ["KERNELS", "header_constants"]

#: The folder of the shipped kernel sources.
KERNELS = Path(__file__).resolve().parent.parent / "kernels"

_DECLARATION = re.compile(r"^\s*constexpr\s+int\s+(k[A-Za-z0-9_]*)\s*=\s*(-?[0-9]+)\s*;\s*(//.*)?$")


@functools.cache
def header_constants(name: str) -> dict[str, int]:
    """The ``constexpr int`` constants of ``cujit/kernels/<name>``, by their C++ names.

    Raises:
        CujitError: a ``constexpr`` line that is not one integer constant, or a name declared twice.
    """
    path = KERNELS / name
    found: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if "constexpr" not in line or line.lstrip().startswith("//"):
            continue
        match = _DECLARATION.match(line)
        if match is None:
            raise CujitError(f"{path}:{number}: expected `constexpr int kName = <integer>;`, got {line.strip()!r}")
        if match.group(1) in found:
            raise CujitError(f"{path}:{number}: {match.group(1)} is declared twice")
        found[match.group(1)] = int(match.group(2))
    return found
