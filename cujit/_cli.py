"""The command line: write .clangd, run the demo, precompile, inspect the cache, benchmark."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["bench"]:
        from cujit._bench import main as bench

        return bench(args[1:])
    raise SystemExit("not yet")
