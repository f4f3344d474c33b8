"""``python -m cujit bench``: the runtime's benchmark sections.

Modules: ``runtime`` (host time per call, matcher, bandwidth, start-up) and ``timing`` (host and device timing
helpers shared with ``benchmarks/``).
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the runtime sections (see ``runtime.main``); returns the exit code."""
    from .runtime import main as runtime_main

    return runtime_main(argv)
