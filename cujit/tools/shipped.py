"""The ops that ship with cujit, found by importing every public module of the package (no hand-kept list)."""

from __future__ import annotations

import importlib

from .._runtime.module import JitModule
from .._runtime.ops import Op, declared_ops, shipped_module_names

__all__ = ["shipped_modules", "shipped_ops"]


def shipped_ops() -> list[Op]:
    """Every op that a module of the ``cujit`` package declares, sorted by name."""
    for name in shipped_module_names():
        importlib.import_module(f"cujit.{name}")
    return sorted((o for o in declared_ops() if o.module_name.startswith("cujit.")), key=lambda o: o.name)


def shipped_modules() -> list[JitModule]:
    """The instantiations the shipped ops declare for ``precompile`` (each once)."""
    seen: dict[int, JitModule] = {}
    for found in shipped_ops():
        for module in found.precompile_modules():
            seen.setdefault(id(module), module)
    return list(seen.values())
