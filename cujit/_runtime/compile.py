"""Turning a module's sources into machine code with NVRTC: the generated source, the options, the compile.

The generated top-level source only ``#include``s the kernel files by absolute path, so every NVRTC diagnostic
points at the real ``.cuh`` file and line. It also declares the signature probe (see ``signature.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from . import config, headers, toolchain
from .errors import CompileError, CompileWarning, warn_user
from .signature import PROBE_DECLARATION, Param, parse_probe, probe_expression

__all__ = ["Compiled", "SourceSet", "compile_nvrtc", "failure_hints", "warn_compile_log"]

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


class SourceSet(NamedTuple):
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
        lines += [f"#include <{name}>" for name in self.shared_prefix()]
        lines += [f'#include "{path.as_posix()}"' for path in self.files]
        lines.append(PROBE_DECLARATION)
        return "\n".join(lines) + "\n"

    def shared_prefix(self) -> tuple[str, ...]:
        """The standard and CUDA headers that the first kernel file includes before anything else, in its order.

        The generated source includes them itself, ahead of the kernel file, so that modules whose files start
        with the same headers share a leading sequence of ``#include`` lines: NVRTC can then use one precompiled
        header of them for all such modules (see ``compile_server.py``). The meaning is unchanged: these headers
        are include-guarded, so the kernel file's own includes of them are no-ops, and nothing but comments and
        an include guard precedes them there. See :func:`headers.shared_prefix`.
        """
        if not self.files:
            return ()
        return headers.shared_prefix(self.files[0], self._user_dirs())

    def _user_dirs(self) -> tuple[Path, ...]:
        """The folders searched before the stand-ins and the CUDA headers for an ``#include <...>``."""
        return (toolchain.cujit_include_dir(), *self.include_paths)

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


class Compiled(NamedTuple):
    """A module compiled for one arch: the cubin and, per wrapper, its lowered name and parameters."""

    arch: str
    cubin: bytes
    lowered: dict[str, str]
    params: dict[str, tuple[Param, ...] | None]
    log: str = ""


def compile_nvrtc(sources: SourceSet, arch: str, reached: Sequence[tuple[str, bytes]] | None = None) -> Compiled:
    """Compile ``sources`` for ``arch`` with NVRTC. Needs no GPU.

    ``reached``: the files the sources reach (see ``cache.header_files``), for a precompiled header of them;
    None compiles without one.

    Raises:
        CompileError: NVRTC rejected the source; the error carries the log, options and name expressions.
    """
    from .compile_server import Request, compile_remote, run_nvrtc  # the cache-miss path only

    source = sources.main_source()
    options = sources.options(arch)
    probes = {expr: probe_expression(expr) for expr in sources.expressions}
    request = Request(source, f"cujit_{sources.name}.cu", options, (*sources.expressions, *probes.values()))
    prefix = sources.shared_prefix()
    result = None
    if prefix and reached is not None:
        result = compile_remote(replace(request, prefix=prefix, prefix_digest=_prefix_digest(sources, reached)))
    if result is None:
        pch = headers.pch_options(reached, sources.search_dirs(), sources.extra_cflags, arch)
        result = run_nvrtc(request, pch)
    if not result.ok:
        raise _compile_error(sources, options, source, result.log, result.status)
    lowered = {expr: result.lowered[expr] for expr in sources.expressions}
    params = {expr: parse_probe(result.lowered[probes[expr]]) for expr in sources.expressions}
    return Compiled(arch=arch, cubin=result.cubin, lowered=lowered, params=params, log=result.log)


def _prefix_digest(sources: SourceSet, reached: Sequence[tuple[str, bytes]]) -> str:
    """What a shared prefix's PCH depends on besides the options and the toolchain.

    The files of the folders searched before the CUDA headers (cujit's and the module's own): the prefix's headers
    could reach them.
    """
    user_roots = tuple(f"<I{i}>/" for i in range(1 + len(sources.include_paths)))
    h = hashlib.sha256()
    for name, data in reached:
        if name.startswith(user_roots):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _compile_error(sources: SourceSet, options: Sequence[str], source: str, log: str, status: str) -> CompileError:
    # cujit's own diagnoses go first: they say what is wrong in the caller's terms, NVRTC's log follows.
    hints = failure_hints(sources, log)
    lines = [*hints, ""] if hints else []
    lines += [f"NVRTC could not compile module {sources.name!r} ({status})", "", log or "(NVRTC gave no log)", ""]
    header_hints = headers.hints(log)
    lines += [*(f"hint: {hint}" for hint in header_hints), *([""] if header_hints else [])]
    lines.append("name expressions: " + ", ".join(sources.expressions))
    lines.append("options: " + " ".join(options))
    err = CompileError("\n".join(lines), log=log, options=options, name_expressions=sources.expressions, source=source)
    if config.dump_source():
        err.args = (err.args[0] + "\n\ngenerated source:\n" + err.numbered_source(),)
    return err


# ---------------------------------------------------------------------------------------------------- diagnostics
# NVRTC compiles name expressions as `#pragma nv_mangled_name EXPR` lines of a pseudo-file of this name, after the
# source; an error located there is an error in a cuda_wrappers expression (or in its signature probe).
_NAME_MAP_ERROR = re.compile(
    r"^__nv_name_map\(\d+\): error: (?P<message>.*)\n\s*#pragma nv_mangled_name (?P<expr>.*?)\s*$",
    re.MULTILINE,
)
_FILE_ERROR = re.compile(r"^(?!__nv_name_map\()[^\n]*\(\d+\): (?:catastrophic )?error", re.MULTILINE)
_UNDEFINED = re.compile(r'identifier "([^"]+)" is undefined')
_AMBIGUOUS_TEMPLATE = re.compile(r'cannot determine which instance of function template "([^"]+)" is intended')
_NOT_GLOBAL = "cannot form address of a non-__global__ function"


def failure_hints(sources: SourceSet, log: str) -> list[str]:
    """What cujit can tell about a failed compile beyond NVRTC's log, one line each, most specific first.

    Every diagnosis of a failed compile is gathered here; the hints open the ``CompileError``'s message, before
    NVRTC's own log.
    """
    hints: list[str] = []
    hints += _wrapper_hints(sources, log)
    return hints


def _wrapper_hints(sources: SourceSet, log: str) -> list[str]:
    """Name the ``cuda_wrappers`` expressions that name no ``__global__`` function, and why."""
    def squeeze(text: str) -> str:
        return re.sub(r"\s+", "", text)

    # Each expression is asked for twice: itself, and inside its signature probe.
    known = {squeeze(e): e for e in sources.expressions}
    known |= {squeeze(probe_expression(e)): e for e in sources.expressions}
    reasons: dict[str, list[str]] = {}
    for match in _NAME_MAP_ERROR.finditer(log):
        expr = known.get(squeeze(match["expr"]))
        if expr is not None:
            reasons.setdefault(expr, []).append(match["message"])
    if not reasons or _FILE_ERROR.search(log):
        return []  # errors in the kernel files come first, and may be why a name is missing: NVRTC's log says it
    files = ", ".join(path.as_posix() for path in sources.files)
    got = "; ".join(f"{expr!r}, {_wrapper_reason(expr, reasons[expr])}" for expr in sources.expressions
                    if expr in reasons)
    return [f"cuda_wrappers of module {sources.name!r}: expected each expression to name a __global__ function "
            f"(with its template arguments) declared in {files}, got {got}"]


def _wrapper_reason(expr: str, messages: Sequence[str]) -> str:
    for message in messages:
        undefined = _UNDEFINED.search(message)
        if undefined:
            return f"which names nothing declared there ({undefined[1]!r} is undefined)"
    for message in messages:
        template = _AMBIGUOUS_TEMPLATE.search(message)
        if template:
            return (f"whose template arguments do not fit function template {template[1]!r} (wrong number or kind "
                    "of template arguments, or none given)")
    if "<" in expr and any("operand types are incompatible" in m for m in messages):
        # `f<3>` with a plain function f parses as the comparison `f < 3`.
        return f"which gives template arguments to {expr.split('<')[0].strip()!r}, a function that is not a template"
    if any(_NOT_GLOBAL in m for m in messages):
        return "which does not name a __global__ function"
    return f"which NVRTC rejects: {messages[0]}"


def warn_compile_log(sources: SourceSet, arch: str, log: str) -> None:
    """Show NVRTC's warnings of a successful compile as a :class:`~cujit.CompileWarning`.

    Called where NVRTC has just compiled, so a warning shows once per compile; a module served from the cache does
    not warn again (its log stays in ``Compiled.log``).
    """
    if re.search(r"\bwarning\b", log):
        warn_user(f"NVRTC warnings for module {sources.name!r} ({arch}):\n{log}", CompileWarning)


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
