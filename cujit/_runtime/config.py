"""Every environment variable that cujit reads, in one place: one table of names, defaults, meanings and parsers.

Values are read when they are needed (compiling, loading, touching the cache), never on the launch path, so a
test can change them with ``monkeypatch.setenv``. :func:`validate` checks every variable at once; the cache calls
it on each module's first compile or cache lookup and the command line before each command, so a bad value is
reported even when everything is cached. A value that cannot be parsed raises a ``CujitError`` that names the
variable; a ``CUJIT_`` name that cujit does not know gets one warning naming the closest known one.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from .errors import CujitError, warn_user

__all__ = [
    "VARIABLES",
    "Variable",
    "cache_dir",
    "cache_layers",
    "check_arch",
    "compile_server",
    "default_arch",
    "disk_cache_enabled",
    "dump_source",
    "offline",
    "unknown_variables",
    "validate",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_ARCH = re.compile(r"^(sm|compute)_(\d{2,3})[af]?$")


def _parse_flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CujitError(f"{name}: expected one of 0, 1, true, false, yes, no, on, off, got {raw!r}")


def _parse_folder(name: str, raw: str) -> Path:
    if raw.strip() == "":
        raise CujitError(f"{name}: expected a folder path, got an empty string")
    return Path(raw).expanduser()


def _parse_folders(name: str, raw: str) -> tuple[Path, ...]:
    """A list of folders joined with ``os.pathsep`` (``:`` on Linux), as PATH is; empty entries are skipped."""
    return tuple(Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip())


def _parse_path(name: str, raw: str) -> Path | None:
    """An optional file path: empty means unset; a path given must name an existing file."""
    if raw.strip() == "":
        return None
    path = Path(raw.strip()).expanduser()
    if not path.is_file():
        raise CujitError(f"{name}: {raw!r} is not a file (expected the path of a libnvrtc.so.N)")
    return path.absolute()


def nvrtc_path() -> Path | None:
    """``CUJIT_NVRTC``: the libnvrtc named explicitly, or None to let the rule pick (``release.chosen``)."""
    return _parse_path("CUJIT_NVRTC", _raw("CUJIT_NVRTC"))


def check_arch(arch: str, what: str = "arch") -> str:
    """Validate an arch string such as ``sm_90`` or ``sm_90a``; return it normalised."""
    value = arch.strip()
    if not _ARCH.match(value):
        raise CujitError(f"{what}: expected an arch such as sm_80 or sm_90a, got {arch!r}")
    return value


class Variable(NamedTuple):
    """One documented ``CUJIT_`` variable: its default (as it would be written in the environment) and parser."""

    name: str
    default: str
    help: str
    parse: Callable[[str, str], object]

    def check(self) -> None:
        """Parse the value from the environment (else the default); raise ``CujitError`` if it is bad."""
        self.parse(self.name, os.environ.get(self.name, self.default))


VARIABLES: tuple[Variable, ...] = (
    Variable("CUJIT_CACHE_DIR", "~/.cache/cujit", "folder of the on-disk cache of compiled kernels", _parse_folder),
    Variable("CUJIT_CACHE_LAYERS", "", "read-only cache layers (folders written by `precompile --layer`), joined with "
             "os.pathsep, read in order before CUJIT_CACHE_DIR and never written", _parse_folders),
    Variable("CUJIT_DISK_CACHE", "1", "0 keeps compiled kernels in memory only: nothing read from or written to "
             "CUJIT_CACHE_DIR (layers are still read)",
             _parse_flag),
    Variable("CUJIT_OFFLINE", "0", "1 never runs NVRTC: a kernel missing from the cache raises CompileError",
             _parse_flag),
    Variable("CUJIT_DUMP_SOURCE", "0", "1 adds the whole generated source, with line numbers, to a CompileError",
             _parse_flag),
    Variable("CUJIT_COMPILE_SERVER", "0", "0 compiles in each process only; 1 lets a per-user compile server (one per "
             "cache folder and toolchain, started on demand, gone after 10 idle minutes) compile modules whose "
             "kernel files start with standard, CUDA or CCCL headers, on a precompiled header of them",
             _parse_flag),
    Variable("CUJIT_NVRTC", "", "path of the libnvrtc to compile with (e.g. .../nvidia/cuda_nvrtc/lib/libnvrtc.so.12), "
             "instead of the one the rule picks; cujit sets it for the processes it starts (compile workers, the "
             "compile server) so that they use the NVRTC of the process that started them", _parse_path),
    Variable("CUJIT_DEFAULT_ARCH", "sm_90", "arch to compile for where there is no GPU to ask (`demo`, "
             "`precompile`, `JitModule.compile()`)", lambda name, raw: check_arch(raw, name)),
)
_BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}


def _raw(name: str) -> str:
    """The variable's value in the environment, else its default from the table."""
    return os.environ.get(name, _BY_NAME[name].default)


def cache_dir() -> Path:
    """``CUJIT_CACHE_DIR``: the cache folder."""
    return _parse_folder("CUJIT_CACHE_DIR", _raw("CUJIT_CACHE_DIR"))


def cache_layers() -> tuple[Path, ...]:
    """``CUJIT_CACHE_LAYERS``: the read-only cache layers, in the order they are read."""
    return _parse_folders("CUJIT_CACHE_LAYERS", _raw("CUJIT_CACHE_LAYERS"))


def disk_cache_enabled() -> bool:
    """``CUJIT_DISK_CACHE``: whether compiled code is kept on disk."""
    return _parse_flag("CUJIT_DISK_CACHE", _raw("CUJIT_DISK_CACHE"))


def offline() -> bool:
    """``CUJIT_OFFLINE``: whether a cache miss raises instead of compiling."""
    return _parse_flag("CUJIT_OFFLINE", _raw("CUJIT_OFFLINE"))


def dump_source() -> bool:
    """``CUJIT_DUMP_SOURCE``: whether a CompileError carries the numbered source in its message."""
    return _parse_flag("CUJIT_DUMP_SOURCE", _raw("CUJIT_DUMP_SOURCE"))


def compile_server() -> bool:
    """``CUJIT_COMPILE_SERVER``: whether compiles may go to the per-user compile server."""
    return _parse_flag("CUJIT_COMPILE_SERVER", _raw("CUJIT_COMPILE_SERVER"))


def default_arch() -> str:
    """``CUJIT_DEFAULT_ARCH``: the arch to compile for when there is no GPU to ask."""
    return check_arch(_raw("CUJIT_DEFAULT_ARCH"), "CUJIT_DEFAULT_ARCH")


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the duration, the previous values restored after.

    Processes started within inherit them.
    """
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The ``CUJIT_`` names in ``environ`` (the process environment by default) that cujit does not read.

    Each maps to the closest known name, or ``None`` when none is close.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str | None] = {}
    for name in env:
        if name.startswith("CUJIT_") and name not in _BY_NAME:
            # Compared without the prefix that every name shares, which would make any two names look alike.
            close = difflib.get_close_matches(name[6:], [known[6:] for known in _BY_NAME], n=1, cutoff=0.6)
            out[name] = f"CUJIT_{close[0]}" if close else None
    return out


_WARNED: set[str] = set()


def validate() -> None:
    """Check every ``CUJIT_`` variable; raise one ``CujitError`` naming each bad value.

    Each unknown ``CUJIT_`` name gets one warning per process, naming the closest known variable.
    """
    for name, close in unknown_variables().items():
        if name not in _WARNED:
            _WARNED.add(name)
            hint = f"; did you mean {close}?" if close else ""
            warn_user(f"cujit: {name} is set but is not a cujit variable, so it has no effect{hint} (known: "
                      f"{', '.join(_BY_NAME)})", UserWarning)
    problems: list[str] = []
    for variable in VARIABLES:
        try:
            variable.check()
        except CujitError as exc:
            problems.append(str(exc))
    if problems:
        raise CujitError("; ".join(problems))
