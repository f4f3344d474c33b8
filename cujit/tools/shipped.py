"""The ops that ship with cujit, found by importing every public module of the package (no hand-kept list)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from .._runtime.errors import CujitError
from .._runtime.module import JitModule
from .._runtime.ops import Op, declared_ops, shipped_module_names

__all__ = ["shipped_modules", "shipped_ops"]


def shipped_ops() -> list[Op]:
    """Every op that a module of the ``cujit`` package declares, sorted by name."""
    for name in shipped_module_names():
        importlib.import_module(f"cujit.{name}")
    return sorted((o for o in declared_ops() if o.module_name.startswith("cujit.")), key=lambda o: o.name)


def shipped_modules(names: Sequence[str] | None = None) -> list[JitModule]:
    """The instantiations the shipped ops declare for ``precompile`` (each once); ``names`` picks some ops.

    Raises:
        CujitError: a name that no shipped op has.
    """
    ops = shipped_ops()
    if names:
        by_name = {o.schema.name: o for o in ops} | {o.name: o for o in ops}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise CujitError(f"--op: no shipped op named {', '.join(unknown)} (the shipped ops: "
                             f"{', '.join(sorted(o.schema.name for o in ops))})")
        ops = [by_name[n] for n in dict.fromkeys(names)]
    seen: dict[int, JitModule] = {}
    for found in ops:
        for module in found.precompile_modules():
            seen.setdefault(id(module), module)
    return list(seen.values())
