"""A user's ops for ``precompile --ops-from``: from an importable module, a ``.py`` file, or a named registry."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from .._runtime.errors import CujitError
from .._runtime.module import JitModule
from .._runtime.ops import Op, declared_ops

__all__ = ["user_modules", "user_ops"]


def _import(spec: str) -> ModuleType:
    """The module that ``spec`` names: a path to a ``.py`` file, or a dotted module name on ``sys.path``."""
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise CujitError(f"--ops-from: expected an existing .py file or an importable module, got {spec!r} "
                             "(no such file)")
        name = f"cujit_user_ops.{path.resolve().with_suffix('').as_posix().strip('/').replace('/', '.')}"
        found = sys.modules.get(name)
        if found is not None:
            return found
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise CujitError(f"--ops-from: cannot load {spec!r} as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.startswith(exc.name):
            raise CujitError(f"--ops-from: expected an importable module or a .py file, got {spec!r} (no module "
                             f"named {exc.name!r} on sys.path)") from None
        raise


def _as_ops(value: Any, spec: str) -> list[Op | JitModule]:
    """The ops and modules in a registry: an Op, an op function, a JitModule, or an iterable (or mapping) of them."""
    if callable(value) and not isinstance(value, (Op, JitModule)) and getattr(value, "op", None) is None:
        value = value()
    if isinstance(value, dict):
        value = list(value.values())
    items: Iterable[Any] = value if isinstance(value, Iterable) else [value]
    out: list[Op | JitModule] = []
    for item in items:
        found = getattr(item, "op", item)
        if not isinstance(found, (Op, JitModule)):
            raise CujitError(f"--ops-from {spec}: expected cujit ops (declared with cujit.op) or JitModules, got "
                             f"{item!r} of type {type(item).__name__}")
        out.append(found)
    return out


def user_ops(specs: Iterable[str]) -> list[Op | JitModule]:
    """The ops (and modules) that each spec names, in order, each once.

    A spec is ``module`` or ``path/to/file.py`` (every op that module declares), or ``module:NAME`` /
    ``file.py:NAME`` (a registry: an attribute holding ops, op functions, JitModules, an iterable or a dict of
    them, or a function returning one).

    Raises:
        CujitError: a spec that names nothing importable, no op, or something that is not an op.
    """
    out: dict[int, Op | JitModule] = {}
    for spec in specs:
        where, _, attribute = spec.partition(":")
        module = _import(where)
        if attribute:
            if not hasattr(module, attribute):
                raise CujitError(f"--ops-from {spec}: module {module.__name__!r} has no attribute {attribute!r}")
            found = _as_ops(getattr(module, attribute), spec)
        else:
            name = module.__name__
            found = [o for o in declared_ops() if o.module_name == name or o.module_name.startswith(name + ".")]
        if not found:
            raise CujitError(f"--ops-from {spec}: expected it to declare cujit ops (cujit.op), found none")
        for item in found:
            out.setdefault(id(item), item)
    return list(out.values())


def user_modules(specs: Iterable[str]) -> list[JitModule]:
    """The modules to precompile for the ops that ``specs`` name: every instantiation each op declares."""
    seen: dict[int, JitModule] = {}
    for item in user_ops(specs):
        for module in ([item] if isinstance(item, JitModule) else item.precompile_modules()):
            seen.setdefault(id(module), module)
    return list(seen.values())
