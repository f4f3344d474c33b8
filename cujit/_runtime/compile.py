"""Turning a module's sources into machine code with NVRTC: the generated source, the options, the compile.

The generated top-level source only ``#include``s the kernel files by absolute path, so every NVRTC diagnostic
points at the real ``.cuh`` file and line. It also declares the signature probe (see ``signature.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config, headers, toolchain
from .errors import CompileError, CujitError
from .signature import PROBE_DECLARATION, Param, parse_probe, probe_expression

__all__ = ["Compiled", "SourceSet", "compile_nvrtc", "scan_includes"]

_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]', re.MULTILINE)
_COMPUTED_INCLUDE = re.compile(rb"^[ \t]*#[ \t]*include[ \t]*[A-Za-z_]", re.MULTILINE)


_INCLUDE_FLAGS = ("-I", "--include-path")
_PRE_INCLUDE_FLAGS = ("--pre-include", "-include")


def _flag_paths(flags: Sequence[str], names: Sequence[str]) -> tuple[Path, ...]:
    """The paths given to any of the options ``names`` in ``flags``: ``-Ix``, ``-I x``, ``-I=x``, ``--opt=x``."""
    out: list[Path] = []
    pending = False
    for flag in flags:
        if pending:
            out.append(Path(os.path.abspath(flag)))
            pending = False
            continue
        for name in names:
            if flag == name:
                pending = True
            elif flag.startswith(name + "="):
                out.append(Path(os.path.abspath(flag[len(name) + 1 :])))
            elif name == "-I" and flag.startswith("-I"):
                out.append(Path(os.path.abspath(flag[2:])))
            else:
                continue
            break
    return tuple(out)


@dataclass(frozen=True)
class SourceSet:
    """What one module compiles: files, wrappers, options."""

    name: str
    files: tuple[Path, ...]
    wrappers: tuple[tuple[str, str], ...]
    extra_cflags: tuple[str, ...]
    include_paths: tuple[Path, ...]

    @property
    def expressions(self) -> tuple[str, ...]:
        return tuple(expr for _, expr in self.wrappers)

    def main_source(self) -> str:
        lines = [f"// cujit module {self.name}"]
        lines += [f'#include "{path.as_posix()}"' for path in self.files]
        lines.append(PROBE_DECLARATION)
        return "\n".join(lines) + "\n"

    def search_dirs(self) -> tuple[Path, ...]:
        """Folders searched for ``#include`` besides the includer's own, in NVRTC's order (the -I order).

        The CUDA and libcu++ folders are left out: the toolchain identity in the cache key covers them.
        """
        return (toolchain.cujit_include_dir(), *self.include_paths, headers.stand_in_dir(),
                *_flag_paths(self.extra_cflags, _INCLUDE_FLAGS))

    def pre_included(self) -> tuple[Path, ...]:
        """Files that ``--pre-include`` / ``-include`` options make NVRTC read before the source."""
        return (headers.prelude(), *_flag_paths(self.extra_cflags, _PRE_INCLUDE_FLAGS))

    def options(self, arch: str) -> tuple[str, ...]:
        """Every NVRTC option for ``arch``: include folders, predefined macros, then ``extra_cflags``."""
        return headers.nvrtc_options(arch, self.include_paths, self.extra_cflags)


@dataclass(frozen=True)
class Compiled:
    """A module compiled for one arch: the cubin and, per wrapper, its lowered name and parameters."""

    arch: str
    cubin: bytes
    lowered: dict[str, str]
    params: dict[str, tuple[Param, ...] | None]
    log: str = ""


def scan_includes(files: Iterable[Path], search_dirs: Sequence[Path]) -> tuple[list[tuple[Path, bytes]], bool]:
    """Every file that ``files`` reach through ``#include`` within the project folders, with its contents.

    Includes are resolved like NVRTC does: a quoted name first next to the including file, then in
    ``search_dirs``. Names found nowhere there (the CUDA headers, covered by the toolchain's identity) are
    skipped. Every ``#include`` line counts, whatever ``#if`` surrounds it: a key over a superset is still right.
    Returns the files with their bytes and whether a computed ``#include MACRO`` was seen (then the caller must
    fall back to hashing whole folders).
    """
    seen: dict[Path, bytes] = {}
    computed = False
    stack = [Path(f) for f in files]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CujitError(f"cannot read kernel source {path}: {exc.strerror}") from exc
        seen[path] = data
        if _COMPUTED_INCLUDE.search(data):
            computed = True
        for kind, raw in _INCLUDE.findall(data):
            name = raw.decode("utf-8", "replace").strip()
            dirs = ([path.parent] if kind == b'"' else []) + list(search_dirs)
            for folder in dirs:
                # Not resolved: NVRTC looks for a header's own includes next to the path as it was named,
                # also when that path is a symbolic link.
                candidate = Path(os.path.abspath(folder / name))
                if candidate.is_file():
                    stack.append(candidate)
                    break
    return sorted(seen.items()), computed


def compile_nvrtc(sources: SourceSet, arch: str) -> Compiled:
    """Compile ``sources`` for ``arch`` with NVRTC. Needs no GPU.

    Raises:
        CompileError: NVRTC rejected the source; the error carries the log, options and name expressions.
    """
    nvrtc = toolchain.nvrtc()
    source = sources.main_source()
    options = sources.options(arch)
    probes = {expr: probe_expression(expr) for expr in sources.expressions}
    names = [*sources.expressions, *probes.values()]
    program = nvrtc.createProgram(source, f"cujit_{sources.name}.cu", [], [])
    try:
        for expr in names:
            nvrtc.addNameExpression(program, expr)
        try:
            pch = headers.pch_options((*sources.files, *sources.pre_included()), sources.search_dirs(),
                                      sources.extra_cflags, arch)
            nvrtc.compileProgram(program, [*pch, *options])
        except nvrtc.NVRTCError as exc:
            log = _program_log(nvrtc, program)
            raise _compile_error(sources, options, source, log, str(exc)) from None
        log = _program_log(nvrtc, program)
        cubin = bytes(nvrtc.getCUBIN(program))
        lowered = {expr: nvrtc.getLoweredName(program, expr) for expr in sources.expressions}
        params = {expr: parse_probe(nvrtc.getLoweredName(program, probes[expr])) for expr in sources.expressions}
    finally:
        nvrtc.destroyProgram(program)
    return Compiled(arch=arch, cubin=cubin, lowered=lowered, params=params, log=log)


def _program_log(nvrtc: object, program: object) -> str:
    try:
        return str(nvrtc.getProgramLog(program)).strip()  # type: ignore[attr-defined]
    except Exception:  # the log is a courtesy; never hide the real error behind it
        return ""


def _compile_error(sources: SourceSet, options: Sequence[str], source: str, log: str, status: str) -> CompileError:
    lines = [f"NVRTC could not compile module {sources.name!r} ({status})", "", log or "(NVRTC gave no log)", ""]
    hints = headers.hints(log)
    lines += [*(f"hint: {hint}" for hint in hints), *([""] if hints else [])]
    lines.append("name expressions: " + ", ".join(sources.expressions))
    lines.append("options: " + " ".join(options))
    err = CompileError("\n".join(lines), log=log, options=options, name_expressions=sources.expressions, source=source)
    if config.dump_source():
        err.args = (err.args[0] + "\n\ngenerated source:\n" + err.numbered_source(),)
    return err


def offline_error(sources: SourceSet, arch: str, key: str) -> CompileError:
    """The error for a cache miss while ``CUJIT_OFFLINE`` forbids compiling."""
    return CompileError(
        f"module {sources.name!r} for {arch} is not in the cache (key {key[:16]}) and CUJIT_OFFLINE=1 forbids "
        f"compiling: fill the cache first (`python -m cujit precompile --arch {arch}` for the shipped ops, "
        f"`module.compile(arch=\"{arch}\")` for your own modules) or unset CUJIT_OFFLINE",
        options=sources.options(arch),
        name_expressions=sources.expressions,
        source=sources.main_source(),
    )
