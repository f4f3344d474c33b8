"""The compile cache: one versioned key, an in-memory layer and an on-disk layer.

Key: SHA-256 over labelled, length-prefixed fields (schema, cujit and NVRTC versions, CUDA headers, arch,
options, name expressions, generated source, and the path and digest of every file the sources reach).

Disk: one file per key in ``CUJIT_CACHE_DIR``, ``MAGIC | sha256(payload) | payload``, published with a
temporary file in the same folder and ``os.replace``. Reads are get-or-miss: a missing, short, corrupt or foreign
file is a miss. Writers take an advisory lock and look again before compiling, so concurrent processes compile
once; where locks are not honoured they still publish identical files atomically. The folder holds machine code
that cujit loads, so it is created private (0700) and refused with a warning when other users can write it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from . import config, headers, toolchain
from .compile import Compiled, SourceSet, compile_nvrtc, offline_error, scan_includes
from .signature import Param
from .version import __version__ as _CUJIT_VERSION

__all__ = ["CacheStats", "cache_key", "cache_stats", "get_or_compile"]

SCHEMA = "cujit-cache-2"
_MAGIC = b"CUJITC2\n"
_SUFFIX = ".cubin"
_logger = logging.getLogger("cujit")



class CacheStats(dict[str, int]):
    """Process-wide counters: ``compiles``, ``disk_hits``, ``memory_hits``, ``disk_writes``, ``loads``."""


_STATS = CacheStats(compiles=0, disk_hits=0, memory_hits=0, disk_writes=0, disk_errors=0, loads=0)
_STATS_LOCK = threading.Lock()


def _count(name: str) -> None:
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
    """The cache key of ``sources`` compiled for ``arch``: every input that changes the output, and nothing else."""
    h = hashlib.sha256()
    _field(h, "schema", SCHEMA)
    _field(h, "cujit", _CUJIT_VERSION)
    _field(h, "nvrtc", "{}.{}".format(*toolchain.nvrtc_version()))
    _field(h, "cuda-headers", toolchain.cuda_headers_identity())
    _field(h, "libcu++", toolchain.cccl_identity())
    _field(h, "headers", headers.identity())
    _field(h, "arch", arch)
    options = sources.options(arch)
    _field(h, "options", "\0".join(options))
    _field(h, "names", "\0".join(sources.expressions))
    _field(h, "source", sources.main_source())
    files, computed = scan_includes((*sources.files, *sources.pre_included()), sources.search_dirs())
    if computed:
        # A `#include MACRO` can reach any file in the project folders: cover all of them.
        extra: list[Path] = []
        for folder in {*sources.search_dirs(), *(f.parent for f in sources.files)}:
            extra += [p for p in folder.rglob("*") if p.is_file()]
        files = sorted({*files, *((p.resolve(), p.read_bytes()) for p in extra)})
    for path, data in files:
        _field(h, "file", str(path))
        _field(h, "digest", hashlib.sha256(data).digest())
    return h.hexdigest()


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
        warnings.warn(message, RuntimeWarning, stacklevel=4)


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


def _encode(compiled: Compiled, key: str, name: str) -> bytes:
    meta = {
        "key": key,
        "name": name,
        "arch": compiled.arch,
        "lowered": compiled.lowered,
        "params": {k: None if v is None else [asdict(p) for p in v] for k, v in compiled.params.items()},
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            os.replace(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _count("disk_writes")
    except OSError as exc:
        _count("disk_errors")
        _warn_once(f"write:{folder}", f"cujit: cannot write to cache folder {folder} ({exc.strerror}); "
                   "compiled kernels stay in memory only")


@contextlib.contextmanager
def _file_lock(folder: Path, key: str) -> Iterator[None]:
    """An advisory inter-process lock; where the file system refuses locks, go on without one."""
    try:
        import fcntl

        fd = os.open(folder / (key + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
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
    """The compiled module for ``arch``: from memory, from disk, or from NVRTC (then stored in both)."""
    key = cache_key(sources, arch)
    found = _MEMORY.get(key)
    if found is not None:
        _count("memory_hits")
        return key, found
    with _key_lock(key):
        found = _MEMORY.get(key)
        if found is not None:
            _count("memory_hits")
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
            _count("disk_hits")
        else:
            found = _compile(sources, arch, key)
        _MEMORY[key] = found
        return key, found


def lookup(sources: SourceSet, arch: str) -> Compiled | None:
    """The compiled module from memory or disk (then kept in memory), or None; never compiles."""
    key = cache_key(sources, arch)
    found = _MEMORY.get(key)
    if found is not None:
        return found
    folder = disk_dir()
    found = _read(folder, key) if folder is not None else None
    if found is not None:
        _count("disk_hits")
        _MEMORY.setdefault(key, found)
    return found


def remember(key: str, compiled: Compiled) -> None:
    """Keep ``compiled``, made under ``key`` by another process (a compile worker), in the memory layer."""
    _MEMORY.setdefault(key, compiled)


def _compile(sources: SourceSet, arch: str, key: str) -> Compiled:
    if config.offline():
        raise offline_error(sources, arch, key)
    start = time.perf_counter()
    compiled = compile_nvrtc(sources, arch)
    ms = (time.perf_counter() - start) * 1e3
    _count("compiles")
    _logger.info("compiled %s for %s in %.1f ms (key %s)", sources.name, arch, ms, key[:16])
    return compiled


def clear_memory() -> None:
    """Forget every compiled module held in memory (tests use it to simulate a new process)."""
    _MEMORY.clear()


def describe_entries(folder: Path) -> list[dict[str, object]]:
    """What the cache folder holds: one dict per entry (file, bytes, module name, arch, valid)."""
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


def clear_disk(root: Path) -> int:
    """Delete every cache folder of every schema under ``root``; return how many files were removed."""
    removed = 0
    for folder in root.glob("cujit-cache-*"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.suffix in (_SUFFIX, ".lock") or ".tmp." in path.name:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
