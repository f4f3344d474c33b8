"""Every op declared in this process, by qualified name: what the torch registration and the tools look up."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

__all__ = ["LOCK", "REGISTRY", "shipped_module_names"]

#: Every op declared in this process, by qualified name (``cujit::add_constant``): ``ops.Op`` objects.
REGISTRY: dict[str, Any] = {}
LOCK = threading.Lock()


def shipped_module_names() -> list[str]:
    """The public modules of the ``cujit`` package (each ``cujit/<name>.py`` declares a shipped op)."""
    package = Path(__file__).resolve().parent.parent
    return sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))
