"""Every environment variable that cujit reads, in one place.

Values are read when they are needed (compiling, loading, touching the cache), never on the launch path, so a
test can change them with ``monkeypatch.setenv``. A value that cannot be parsed raises a ``CujitError`` that
names the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CujitError

__all__ = ["VARIABLES", "Variable", "cache_dir", "default_arch", "disk_cache_enabled", "dump_source", "offline"]


@dataclass(frozen=True)
class Variable:
    """One documented ``CUJIT_`` variable."""

    name: str
    default: str
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("CUJIT_CACHE_DIR", "~/.cache/cujit", "folder of the on-disk cache of compiled kernels"),
    Variable("CUJIT_DISK_CACHE", "1", "0 keeps compiled kernels in memory only: nothing read from or written to disk"),
    Variable("CUJIT_OFFLINE", "0", "1 never runs NVRTC: a kernel missing from the cache raises CompileError"),
    Variable("CUJIT_DUMP_SOURCE", "0", "1 adds the whole generated source, with line numbers, to a CompileError"),
    Variable("CUJIT_DEFAULT_ARCH", "sm_90", "arch for compiling with no GPU (`python -m cujit demo`, `precompile`)"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_ARCH = re.compile(r"^(sm|compute)_(\d{2,3})[af]?$")


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CujitError(f"{name}: expected one of 0, 1, true, false, yes, no, on, off, got {raw!r}")


def cache_dir() -> Path:
    """The cache folder: ``CUJIT_CACHE_DIR``, else ``~/.cache/cujit``."""
    raw = os.environ.get("CUJIT_CACHE_DIR")
    if raw is not None and raw.strip() == "":
        raise CujitError("CUJIT_CACHE_DIR: expected a folder path, got an empty string")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "cujit"


def disk_cache_enabled() -> bool:
    """``CUJIT_DISK_CACHE``: whether compiled code is kept on disk."""
    return _flag("CUJIT_DISK_CACHE", True)


def offline() -> bool:
    """``CUJIT_OFFLINE``: whether a cache miss raises instead of compiling."""
    return _flag("CUJIT_OFFLINE", False)


def dump_source() -> bool:
    """``CUJIT_DUMP_SOURCE``: whether a CompileError carries the numbered source in its message."""
    return _flag("CUJIT_DUMP_SOURCE", False)


def check_arch(arch: str, what: str = "arch") -> str:
    """Validate an arch string such as ``sm_90`` or ``sm_90a``; return it normalised."""
    value = arch.strip()
    if not _ARCH.match(value):
        raise CujitError(f"{what}: expected an arch such as sm_80 or sm_90a, got {arch!r}")
    return value


def default_arch() -> str:
    """``CUJIT_DEFAULT_ARCH``: the arch to compile for when there is no GPU to ask."""
    return check_arch(os.environ.get("CUJIT_DEFAULT_ARCH", "sm_90"), "CUJIT_DEFAULT_ARCH")
