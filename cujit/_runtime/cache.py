"""The compile cache: one versioned key, an in-memory layer and an on-disk layer.

Key: SHA-256 over labelled, length-prefixed fields: schema, cujit and NVRTC versions, the identities of the CUDA
headers and of libcu++, arch, options, name expressions, the generated source, and the name and digest of every
file the sources reach. The key depends on contents only, never on where things are installed: every path is
written relative to its search root (the kernel file's folder, cujit's include folder, each include folder, the
CUDA headers, libcu++), so a moved checkout or virtual environment, or identical wheels reinstalled elsewhere, keep
their entries, and an edited header is never served stale.

Disk, in ``CUJIT_CACHE_DIR/cujit-cache-N`` (N changes with the key or entry format; older folders are never read):
one ``<key>.cubin`` per module and arch, ``MAGIC | sha256(payload) | payload``, published as ``<key>.tmp.<pid>.<r>``
in the same folder and ``os.replace``d; ``<key>.lock`` is the advisory lock compilers of that key take. Reads are
get-or-miss: a missing, short, corrupt or foreign file is a miss. Writers lock and look again before compiling, so
concurrent processes compile once; where locks are not honoured they still publish identical files atomically. A
process killed mid-publish leaves a temporary file that the next publish removes once its writer is gone; its lock
dies with it. The folder holds machine code that cujit loads, so it is created private (0700) and refused with a
warning when other users can write it.

Read-only layers, ``CUJIT_CACHE_LAYERS`` (folders that ``precompile --layer`` wrote and an image or a wheel ships,
each holding ``cujit-cache-N`` as above), are read in order after memory and before the own folder. cujit never
writes, locks or sweeps a layer; a layer that other users can write is refused with a warning, as the own folder is.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from . import config, headers, toolchain
from .compile import Compiled, SourceSet, compile_nvrtc, offline_error, warn_compile_log
from .errors import CujitError, warn_user
from .signature import Param
from .version import __version__ as _CUJIT_VERSION

__all__ = [
    "SCHEMA",
    "CacheStats",
    "DiskCounts",
    "cache_key",
    "cache_stats",
    "clear_disk",
    "clear_memory",
    "describe_entries",
    "disk_dir",
    "disk_usage",
    "get_or_compile",
    "layer_dirs",
]

SCHEMA = "cujit-cache-3"
_MAGIC = b"CUJITC2\n"
_SUFFIX = ".cubin"
_LOCK_SUFFIX = ".lock"
_TMP = re.compile(r"\.tmp\.(\d+)\.[0-9a-f]+$")
#: A temporary file older than this whose writer is gone is an orphan; older than _ORPHAN_ANY, whatever its pid.
_ORPHAN_AGE_S = 60.0
_ORPHAN_ANY_S = 3600.0
_logger = logging.getLogger("cujit")


class CacheStats(dict[str, int]):
    """Process-wide counters: ``compiles``, ``disk_hits``, ``layer_hits``, ``memory_hits``, ``disk_writes``, ``loads``.

    ``layer_hits`` counts modules read from a read-only layer (``CUJIT_CACHE_LAYERS``), ``disk_hits`` those read
    from ``CUJIT_CACHE_DIR``.
    """


_STATS = CacheStats(compiles=0, disk_hits=0, layer_hits=0, memory_hits=0, disk_writes=0, disk_errors=0, loads=0)
_STATS_LOCK = threading.Lock()


def count(name: str) -> None:
    """Add one to the process-wide counter ``name``."""
    with _STATS_LOCK:
        _STATS[name] += 1


def cache_stats() -> CacheStats:
    """A snapshot of the process-wide cache counters."""
    with _STATS_LOCK:
        return CacheStats(_STATS)


def _field(h: hashlib._Hash, label: str, value: bytes | str) -> None:
    data = value.encode() if isinstance(value, str) else value
    h.update(f"{label}:{len(data)}:".encode())
    h.update(data)


def cache_key(sources: SourceSet, arch: str) -> str:
    """The cache key of ``sources`` compiled for ``arch``: every input that changes the output, and nothing else.

    Contents and names relative to their search roots go in, absolute paths and file times do not.
    """
    roots = _Roots.of(sources)
    h = hashlib.sha256()
    _field(h, "schema", SCHEMA)
    _field(h, "cujit", _CUJIT_VERSION)
    _field(h, "nvrtc", "{}.{}".format(*toolchain.nvrtc_version()))
    _field(h, "cuda-headers", toolchain.cuda_headers_identity())
    _field(h, "libcu++", toolchain.cccl_identity())
    _field(h, "headers", headers.identity())
    _field(h, "arch", arch)
    _field(h, "options", "\0".join(roots.options(sources.options(arch))))
    _field(h, "names", "\0".join(sources.expressions))
    _field(h, "source", roots.source(sources))
    for name, data in _reached_files(roots)[0]:
        _field(h, "file", name)
        _field(h, "digest", hashlib.sha256(data).digest())
    return h.hexdigest()


def header_files(sources: SourceSet) -> list[tuple[str, bytes]] | None:
    """What a precompiled header of ``sources`` depends on: the files they reach, named relative to their roots.

    None where a computed ``#include MACRO`` could reach other files.
    """
    files, computed = _reached_files(_Roots.of(sources))
    return None if computed else files


# ---------------------------------------------------------------------------------------------------- key inputs
# Not anchored at line starts: ten times faster, and a match inside a comment only adds a file to the key.
_INCLUDE = re.compile(rb'#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]')
_COMPUTED_INCLUDE = re.compile(rb"#[ \t]*include[ \t]*[A-Za-z_]")
_PATH_FLAGS = ("-I", "--include-path", "--pre-include", "-include")


class _Roots(NamedTuple):
    """The folders that names in the key are relative to, each with a label that stands for it.

    ``search`` are the ``#include`` folders besides the includer's own, in NVRTC's order; the CUDA headers and
    libcu++ are labelled only (their identities cover their contents); kernel files and pre-included files are
    named relative to their own folders. Paths are absolute strings, unresolved (NVRTC does not resolve links).
    """

    search: tuple[tuple[str, str], ...]
    fixed: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    #: (label, folder) of every root, deepest first, for labelling paths in options.
    folders: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, sources: SourceSet) -> _Roots:
        search = tuple((f"<I{i}>", os.path.abspath(p)) for i, p in enumerate(sources.search_dirs()))
        fixed = [("<cuda>", os.path.abspath(toolchain.cuda_include_dir()))]
        cccl = toolchain.cccl_include_dir()
        if cccl is not None:
            fixed.append(("<libcu++>", os.path.abspath(cccl)))
        # CUB and thrust, crt/ and curand: labelled like the CUDA headers (headers.identity() covers them).
        fixed += [(f"<include{i}>", os.path.abspath(d)) for i, d in enumerate(headers.extra_include_dirs())]
        files = [(f"<file{i}>", os.path.abspath(p)) for i, p in enumerate(sources.files)]
        files += [(f"<pre{i}>", os.path.abspath(p)) for i, p in enumerate(sources.pre_included())]
        folders = [*search, *fixed, *((label, os.path.dirname(f)) for label, f in files)]  # noqa: PTH120
        deepest = sorted(folders, key=lambda item: len(item[1]), reverse=True)  # stable: the first label wins ties
        return cls(search, tuple(fixed), tuple(files), tuple(deepest))

    def label(self, path: str) -> str:
        """``path`` written relative to the deepest root that holds it (unchanged where none does)."""
        absolute = os.path.abspath(path)
        for label, root in self.folders:
            if absolute == root:
                return label
            if absolute.startswith(root) and absolute[len(root) : len(root) + 1] == os.sep:
                return f"{label}/{absolute[len(root) + 1 :]}".replace(os.sep, "/")
        return path

    def options(self, options: Sequence[str]) -> list[str]:
        """``options`` with the path of every include and pre-include flag labelled."""
        out: list[str] = []
        pending = False
        for opt in options:
            if pending:
                out.append(self.label(opt))
                pending = False
                continue
            if opt.startswith("-"):
                for flag in _PATH_FLAGS:
                    if opt == flag:
                        pending = True
                    elif opt.startswith(flag + "="):
                        opt = flag + "=" + self.label(opt[len(flag) + 1 :])
                    elif flag == "-I" and opt.startswith("-I"):
                        opt = "-I" + self.label(opt[2:])
                    else:
                        continue
                    break
            out.append(opt)
        return out

    def source(self, sources: SourceSet) -> str:
        """The generated source with the kernel files' paths labelled."""
        text = sources.main_source()
        for i, path in enumerate(sources.files):
            text = text.replace(f'"{Path(path).as_posix()}"', f'"<file{i}>/{Path(path).name}"')
        return text


def _reached_files(roots: _Roots) -> tuple[list[tuple[str, bytes]], bool]:
    """Every file the kernel and pre-included files reach through ``#include`` within the project folders.

    Includes are resolved as NVRTC does: a quoted name first next to the including file, then in the search
    folders. Names found nowhere there (the CUDA headers and libcu++, covered by their identities) are skipped.
    Every ``#include`` line counts, whatever ``#if`` surrounds it: a key over a superset is still right. Each file
    is named relative to the root it was found through. A computed ``#include MACRO`` can reach any file of the
    project folders, so then all of them are covered. Returns the files and whether such an include was seen.

    Paths are handled as strings with ``os.path``: this runs on every module's first cache lookup in a process,
    where pathlib would cost several times more.
    """
    seen: dict[str, tuple[str, bytes]] = {}
    computed = False
    stack = [(path, label, os.path.basename(path)) for label, path in reversed(roots.files)]  # noqa: PTH119
    while stack:
        path, label, rel = stack.pop()
        if path in seen:
            continue
        try:
            with open(path, "rb") as f:  # noqa: PTH123
                data = f.read()
        except OSError as exc:
            raise CujitError(f"cannot read kernel source {path}: {exc.strerror}") from exc
        seen[path] = (f"{label}/{rel}", data)
        if not computed and _COMPUTED_INCLUDE.search(data):
            computed = True
        for kind, raw in _INCLUDE.findall(data):
            name = raw.decode("utf-8", "replace").strip()
            if os.path.isabs(name):  # noqa: PTH117
                if os.path.isfile(name):  # noqa: PTH113
                    stack.append((os.path.abspath(name), "<abs>", name))
                continue
            here = [(os.path.dirname(path), label, posixpath.dirname(rel))] if kind == b'"' else []  # noqa: PTH120
            for folder, root_label, base in [*here, *((r, lb, "") for lb, r in roots.search)]:
                # Not resolved: NVRTC looks for a header's own includes next to the path as it was named, also
                # when that path is a symbolic link.
                candidate = os.path.abspath(os.path.join(folder, name))  # noqa: PTH118
                if os.path.isfile(candidate):  # noqa: PTH113
                    stack.append((candidate, root_label, posixpath.normpath(posixpath.join(base, name))))
                    break
    files = list(seen.values())
    if computed:
        covered = set(seen)
        folders = [*roots.search, *((label, os.path.dirname(f)) for label, f in roots.files)]  # noqa: PTH120
        for label, folder in _unique_folders(folders):
            for item in sorted(Path(folder).rglob("*")):
                if item.is_file() and str(item) not in covered:
                    covered.add(str(item))
                    files.append((f"{label}/{item.relative_to(folder).as_posix()}", item.read_bytes()))
    return sorted(files), computed


def _unique_folders(folders: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each folder once, with the label it has first."""
    out: dict[str, str] = {}
    for label, folder in folders:
        out.setdefault(folder, label)
    return [(label, folder) for folder, label in out.items()]


# ---------------------------------------------------------------------------------------------------- memory
_MEMORY: dict[str, Compiled] = {}
_KEY_LOCKS: dict[str, threading.Lock] = {}
_KEY_LOCKS_GUARD = threading.Lock()


def _key_lock(key: str) -> threading.Lock:
    with _KEY_LOCKS_GUARD:
        return _KEY_LOCKS.setdefault(key, threading.Lock())


# ---------------------------------------------------------------------------------------------------- disk
_WARNED: set[str] = set()


def _warn_once(tag: str, message: str) -> None:
    if tag not in _WARNED:
        _WARNED.add(tag)
        warn_user(message, RuntimeWarning)


def disk_dir() -> Path | None:
    """The usable cache folder, created if needed, or ``None`` (disk cache off, unusable or unsafe)."""
    if not config.disk_cache_enabled():
        return None
    root = config.cache_dir()
    folder = root / SCHEMA
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.mkdir(exist_ok=True, mode=0o700)
        st = folder.stat()
    except OSError as exc:
        _warn_once(
            f"mkdir:{folder}",
            f"cujit: cache folder {folder} is not usable ({exc.strerror}); compiled kernels stay in memory only",
        )
        return None
    for path, info in ((root, root.stat()), (folder, st)):
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            _warn_once(
                f"unsafe:{path}",
                f"cujit: refusing to load kernels from {path}: it is writable by other users "
                f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); run `chmod 700 {path}` or set "
                "CUJIT_CACHE_DIR to a private folder. Compiled kernels stay in memory only.",
            )
            return None
    if not os.access(folder, os.W_OK | os.X_OK):
        _warn_once(f"ro:{folder}", f"cujit: cache folder {folder} is read-only; compiled kernels are not saved")
    return folder


def layer_dirs() -> list[Path]:
    """The schema folders of the usable read-only layers of ``CUJIT_CACHE_LAYERS``, in order.

    A layer that does not exist, or has no folder of this schema, is skipped with one warning; one that other users
    can write is refused with one warning (it holds machine code that cujit loads).
    """
    out: list[Path] = []
    for layer in config.cache_layers():
        folder = layer / SCHEMA
        try:
            info = folder.stat()
        except OSError:
            _warn_once(f"layer:{folder}", f"cujit: cache layer {layer} holds no {SCHEMA} folder (not written by "
                       "`python -m cujit precompile --layer` of this cujit version?); it is skipped")
            continue
        unsafe = [p for p, st in ((layer, layer.stat()), (folder, info)) if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)]
        if unsafe:
            _warn_once(f"unsafe:{unsafe[0]}", f"cujit: refusing to load kernels from cache layer {unsafe[0]}: it is "
                       f"writable by other users (mode {stat.S_IMODE(unsafe[0].stat().st_mode):o})")
            continue
        out.append(folder)
    return out


def _read_layers(key: str) -> Compiled | None:
    """The module under ``key`` from the first read-only layer that holds it, or None."""
    for folder in layer_dirs():
        found = _read(folder, key)
        if found is not None:
            count("layer_hits")
            return found
    return None


def _encode(compiled: Compiled, key: str, name: str) -> bytes:
    meta = {
        "key": key,
        "name": name,
        "arch": compiled.arch,
        "lowered": compiled.lowered,
        "params": {k: None if v is None else [p._asdict() for p in v] for k, v in compiled.params.items()},
        "log": compiled.log,
    }
    header = json.dumps(meta, sort_keys=True).encode()
    payload = len(header).to_bytes(4, "little") + header + compiled.cubin
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(blob: bytes, key: str) -> Compiled | None:
    head = len(_MAGIC) + 32
    if len(blob) < head + 4 or not blob.startswith(_MAGIC):
        return None
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(_MAGIC) : head]:
        return None
    size = int.from_bytes(payload[:4], "little")
    try:
        meta = json.loads(payload[4 : 4 + size])
        if meta["key"] != key:
            return None
        params = {k: None if v is None else tuple(Param(**p) for p in v) for k, v in meta["params"].items()}
        return Compiled(meta["arch"], payload[4 + size :], dict(meta["lowered"]), params, meta.get("log", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _read(folder: Path, key: str) -> Compiled | None:
    try:
        blob = (folder / (key + _SUFFIX)).read_bytes()
    except OSError:
        return None
    return _decode(blob, key)


def _publish(folder: Path, key: str, compiled: Compiled, name: str) -> None:
    final = folder / (key + _SUFFIX)
    tmp = folder / f"{key}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    data = _encode(compiled, key, name)
    try:
        _sweep_temporaries(folder)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        count("disk_writes")
    except OSError as exc:
        count("disk_errors")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _warn_once(f"full:{folder}", f"cujit: cannot save compiled kernels in {folder}: no space left on its "
                       f"disk ({exc.strerror}); they stay in memory only. Free some space, or run "
                       "`python -m cujit cache clear` or set CUJIT_CACHE_DIR to another disk.")
        else:
            _warn_once(f"write:{folder}", f"cujit: cannot write to cache folder {folder} ({exc.strerror}); "
                       "compiled kernels stay in memory only")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _is_orphan(path: Path, now: float) -> bool:
    """A temporary file whose writer died: older than a minute and its pid gone, or older than an hour."""
    match = _TMP.search(path.name)
    if match is None:
        return False
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return False
    return age > _ORPHAN_ANY_S or (age > _ORPHAN_AGE_S and not _pid_alive(int(match.group(1))))


def _sweep_temporaries(folder: Path) -> int:
    """Remove the temporary files that killed writers left behind; return how many."""
    now = time.time()
    removed = 0
    with os.scandir(folder) as it:
        names = [item.name for item in it if ".tmp." in item.name]
    for name in names:
        path = folder / name
        if _is_orphan(path, now):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def _file_lock(folder: Path, key: str) -> Iterator[None]:
    """An advisory inter-process lock; where the file system refuses locks, go on without one."""
    try:
        import fcntl

        fd = os.open(folder / (key + _LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # e.g. a network folder without lock support: atomic publishing still keeps entries whole
        yield
    finally:
        os.close(fd)


def get_or_compile(sources: SourceSet, arch: str) -> tuple[str, Compiled]:
    """The compiled module for ``arch``: from memory, from disk, or from NVRTC (then stored in both).

    Every ``CUJIT_`` variable is checked first, so that a bad value is reported whether or not the module is
    cached.
    """
    config.validate()
    key = cache_key(sources, arch)
    found = _MEMORY.get(key)
    if found is not None:
        count("memory_hits")
        return key, found
    with _key_lock(key):
        found = _MEMORY.get(key)
        if found is not None:
            count("memory_hits")
            return key, found
        found = _read_layers(key)
        if found is not None:
            _MEMORY[key] = found
            return key, found
        folder = disk_dir()
        if folder is not None:
            found = _read(folder, key)
            if found is None:
                with _file_lock(folder, key):
                    found = _read(folder, key)
                    if found is None:
                        found = _compile(sources, arch, key)
                        _publish(folder, key, found, sources.name)
                        _MEMORY[key] = found
                        return key, found
            count("disk_hits")
        else:
            found = _compile(sources, arch, key)
        _MEMORY[key] = found
        return key, found


def lookup(sources: SourceSet, arch: str) -> Compiled | None:
    """The compiled module from memory, a layer or disk (then kept in memory), or None; never compiles."""
    key = cache_key(sources, arch)
    found = _MEMORY.get(key)
    if found is not None:
        return found
    found = _read_layers(key)
    if found is not None:
        return _MEMORY.setdefault(key, found)
    folder = disk_dir()
    found = _read(folder, key) if folder is not None else None
    if found is not None:
        count("disk_hits")
        _MEMORY.setdefault(key, found)
    return found


def remember(key: str, compiled: Compiled) -> None:
    """Keep ``compiled``, made under ``key`` by another process (a compile worker), in the memory layer."""
    _MEMORY.setdefault(key, compiled)


def _compile(sources: SourceSet, arch: str, key: str) -> Compiled:
    if config.offline():
        raise offline_error(sources, arch, key)
    start = time.perf_counter()
    compiled = compile_nvrtc(sources, arch, header_files(sources))
    ms = (time.perf_counter() - start) * 1e3
    count("compiles")
    _logger.info("compiled %s for %s in %.1f ms (key %s)", sources.name, arch, ms, key[:16])
    warn_compile_log(sources, arch, compiled.log)
    return compiled


def clear_memory() -> None:
    """Forget every compiled module held in memory (tests use it to simulate a new process)."""
    _MEMORY.clear()


def describe_entries(folder: Path) -> list[dict[str, object]]:
    """The entries of a cache folder: one dict per ``.cubin`` file (file, bytes, module name, arch, valid)."""
    out: list[dict[str, object]] = []
    for path in sorted(folder.glob("*" + _SUFFIX)):
        try:
            blob = path.read_bytes()
        except OSError:
            continue
        key = path.name[: -len(_SUFFIX)]
        decoded = _decode(blob, key)
        meta: dict[str, object] = {}
        if decoded is not None:
            size = int.from_bytes(blob[len(_MAGIC) + 32 : len(_MAGIC) + 36], "little")
            meta = json.loads(blob[len(_MAGIC) + 36 : len(_MAGIC) + 36 + size])
        out.append({
            "file": str(path), "bytes": len(blob), "valid": decoded is not None,
            "name": meta.get("name", "?"), "arch": meta.get("arch", "?"),
            "kernels": sorted(lowered) if isinstance(lowered := meta.get("lowered"), dict) else [],
        })
    return out


@dataclass
class DiskCounts:
    """What one schema folder holds, by kind of file (see the module docstring for the layout)."""

    entries: int = 0
    bytes: int = 0
    locks: int = 0
    temporaries: int = 0
    other: int = 0

    @property
    def files(self) -> int:
        """The files cujit wrote there: entries, locks and temporaries (what ``clear_disk`` removes)."""
        return self.entries + self.locks + self.temporaries


def _kind(name: str) -> str:
    if name.endswith(_SUFFIX):
        return "entries"
    if name.endswith(_LOCK_SUFFIX):
        return "locks"
    if ".tmp." in name:
        return "temporaries"
    return "other"


def _schema_folders(root: Path) -> list[Path]:
    """The schema folders under ``root``, the current one first."""
    found = [p for p in root.glob("cujit-cache-*") if p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: (p.name != SCHEMA, p.name))


def disk_usage(root: Path) -> dict[str, DiskCounts]:
    """What each schema folder under ``root`` holds, by folder name, the current schema first."""
    out: dict[str, DiskCounts] = {}
    for folder in _schema_folders(root):
        counts = out[folder.name] = DiskCounts()
        for path in folder.iterdir():
            kind = _kind(path.name)
            setattr(counts, kind, getattr(counts, kind) + 1)
            if kind == "entries":
                with contextlib.suppress(OSError):
                    counts.bytes += path.stat().st_size
    return out


def clear_disk(root: Path) -> dict[str, DiskCounts]:
    """Delete the entries, locks and temporary files of every schema folder under ``root``.

    Returns what was removed, by folder name. Folders of older schemas are removed once empty.
    """
    out: dict[str, DiskCounts] = {}
    for folder in _schema_folders(root):
        counts = out[folder.name] = DiskCounts()
        for path in folder.iterdir():
            kind = _kind(path.name)
            if kind == "other":
                counts.other += 1
                continue
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                setattr(counts, kind, getattr(counts, kind) + 1)
                if kind == "entries":
                    counts.bytes += size
        if folder.name != SCHEMA:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return out
