"""What the adapters of other libraries' kernels share (``liger``, ``quack``, ``flashinfer``): the guarded import.

Each adapter module wraps one optional package. Every import is guarded: a package that is missing, or that
fails to import here (no GPU, no CUDA toolkit, an API that moved), makes its adapters raise ``Unavailable`` with
the reason in one short phrase, and the report's cell for that contender says "n/a: <reason>".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Package", "Unavailable"]


class Unavailable(Exception):
    """A library does not have the op, or cannot be imported here; the message says which."""


@dataclass(frozen=True)
class Package:
    """One optional package: its distribution name (``pip install NAME``) and its top-level import name."""

    dist: str
    root: str

    def version(self) -> str | None:
        """The installed version, or None."""
        from importlib import metadata

        try:
            return metadata.version(self.dist)
        except metadata.PackageNotFoundError:
            return None

    def module(self, name: str) -> Any:
        """``import name``, or ``Unavailable`` with the reason.

        A missing top-level package is "<dist> is not installed"; a missing dependency names it; any other
        failure of a third-party import is reported with its type and first line.
        """
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing.split(".")[0] == self.root:
                raise Unavailable(f"{self.dist} is not installed") from exc
            raise Unavailable(f"importing {name} failed: {missing_hint(missing) or _first_line(exc)}") from exc
        except Exception as exc:  # a third-party import can fail in many ways; the report names the failure
            raise Unavailable(f"importing {name} failed: {type(exc).__name__}: {_first_line(exc)}") from exc

    def function(self, module: str, name: str) -> Any:
        """``module.name``, or ``Unavailable`` saying why not."""
        found = self.module(module)
        if not hasattr(found, name):
            raise Unavailable(f"{module} has no {name} ({self.dist} {self.version()})")
        return getattr(found, name)

    def problem(self, module: str) -> str | None:
        """Why ``module`` (the one the adapters need first) does not import here, or None when it does."""
        try:
            self.module(module)
        except Unavailable as exc:
            return str(exc)
        return None


def missing_hint(name: str) -> str | None:
    """A fix for a missing module (``name`` dotted, as ``ModuleNotFoundError.name`` has it) of the CUTLASS DSL.

    nvidia-cutlass-dsl puts ``cutlass`` on ``sys.path`` through a ``.pth`` file, which Python reads only in a
    site directory: installed with ``pip install --target DIR`` and found through ``PYTHONPATH``, ``cutlass``
    is missing although the package is there. Where ``cutlass`` is found but not its Python DSL
    (``cutlass.cutlass_dsl``), the wheel that holds it, nvidia-cutlass-dsl-libs-core (a dependency of libs-base
    from 4.8), is missing.
    """
    import importlib.util

    if name.split(".")[0] != "cutlass":
        return None
    if name != "cutlass":
        try:
            found = importlib.util.find_spec("cutlass") is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return (f"No module named {name!r} (the CUTLASS DSL's Python package: install "
                    "nvidia-cutlass-dsl-libs-core of the same version as nvidia-cutlass-dsl)")
    spec = importlib.util.find_spec("nvidia_cutlass_dsl")
    if spec is None or not spec.submodule_search_locations:
        return "No module named 'cutlass' (nvidia-cutlass-dsl is not installed)"
    folder = f"{next(iter(spec.submodule_search_locations))}/dsl_packages"
    return f"No module named 'cutlass' (nvidia-cutlass-dsl is installed outside site-packages: add {folder} to " \
           f"PYTHONPATH)"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""
