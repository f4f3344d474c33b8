"""The one code generator of cujit: indented Python source built line by line, compiled with its text in ``linecache``.

cujit generates the functions on its hot paths (an op's checked launch, a kernel's plain launch, a
``TensorCheck``'s dispatcher) so that a call does no interpretation work. Every generated function is compiled
under a file name of its own (``<cujit op cujit::add_constant #3>``) whose text is registered in ``linecache``:
tracebacks through generated code show the lines, and ``inspect.getsource`` works on them.
"""

from __future__ import annotations

import contextlib
import itertools
import keyword
import linecache
from collections.abc import Iterator
from typing import Any

__all__ = ["Source", "build", "is_identifier"]

_SERIAL = itertools.count(1)


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be a local variable of generated code."""
    return name.isidentifier() and not keyword.iskeyword(name)


class Source:
    """Python source under construction: ``src("x = 1")`` adds a line, ``with src.block("if x"):`` indents."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0

    def __call__(self, line: str) -> None:
        self._lines.append("    " * self._depth + line)

    @contextlib.contextmanager
    def block(self, header: str) -> Iterator[None]:
        """A compound statement: ``header:`` then the lines added inside the ``with``, one level deeper."""
        self(header + ":")
        self._depth += 1
        start = len(self._lines)
        try:
            yield
        finally:
            if len(self._lines) == start:
                self("pass")
            self._depth -= 1

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def build(source: Source | str, env: dict[str, Any], *, kind: str, name: str) -> dict[str, Any]:
    """Compile ``source`` with ``env`` as its globals and return ``env``, which now holds what it defined.

    ``kind`` and ``name`` make the file name that tracebacks show, e.g. ``<cujit launcher add_constant_kernel<3>
    #7>``; the serial number keeps the names of different functions apart.
    """
    text = source.text() if isinstance(source, Source) else source
    filename = f"<cujit {kind} {name} #{next(_SERIAL)}>"
    # mtime None: linecache.checkcache() keeps entries that have no file behind them.
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    exec(compile(text, filename, "exec"), env)
    return env
