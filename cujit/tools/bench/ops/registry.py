"""The op families of the sweep, collected from the modules of this package: each declares ``FAMILY``.

Adding an op to the benchmark is adding one module here (its rows, byte formula, reference and builder) that
declares a ``Family``; nothing else names it. A shipped op with no rows is listed in ``WITHOUT_ROWS`` with the
reason, so a new op cannot be left out unnoticed (``tests/test_bench_harness.py`` compares both with the shipped
op modules).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .contenders import Family

__all__ = ["WITHOUT_ROWS", "families", "family_of", "ops"]

#: Modules of this package that are the machinery, not a family.
_MACHINERY = frozenset({"case", "contenders", "registry", "runner"})

#: Shipped op modules without benchmark rows, and why.
WITHOUT_ROWS: dict[str, str] = {
    "add_constant": "the example op of the guide and of the per-call benchmark (python -m cujit bench), not a "
                    "serving op",
    "fp8_quant": "the shared rule of the three FP8 quantizations, each of which has rows under its own name",
}


def _collect() -> tuple[Family, ...]:
    found: dict[str, Family] = {}
    owner: dict[str, str] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in _MACHINERY or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, Family):
            raise TypeError(f"{module.__name__}: expected a FAMILY = Family(...) declaration, got {family!r}")
        if family.name in found:
            raise ValueError(f"{module.__name__}: family {family.name!r} is declared twice")
        for op in family.ops:
            if op in owner:
                raise ValueError(f"{module.__name__}: op {op!r} is already in family {owner[op]!r}")
            owner[op] = family.name
        found[family.name] = family
    return tuple(sorted(found.values(), key=lambda f: (f.order, f.name)))


_FAMILIES = _collect()
_FAMILY_OF = {op: family.name for family in _FAMILIES for op in family.ops}


def families() -> tuple[Family, ...]:
    """Every family, in report order."""
    return _FAMILIES


def ops() -> tuple[str, ...]:
    """Every op the sweep knows, in report order."""
    return tuple(_FAMILY_OF)


def family_of(op: str) -> Family:
    """The family of ``op``.

    Raises:
        KeyError: ``op`` is in no family.
    """
    name = _FAMILY_OF[op]
    return next(family for family in _FAMILIES if family.name == name)
