"""What NVRTC sees besides the kernel files: include folders, predefined macros, options, and hints for errors.

NVRTC has no standard library, no ``CUDA_VERSION`` and no CUB on its include path, so kernel code written for nvcc
does not compile as it is. This module gives every compile what nvcc would have given it:

* ``cujit/include_nvrtc``: stand-ins for the C and C++ standard headers (light ones written out, trait and
  utility ones mapped onto libcu++, host-only ones empty, so that guarded host code may keep its includes),
  ``<cuda.h>``, and ``cujit_prelude.h``, which NVRTC reads first. Only NVRTC
  gets this folder; clangd and host compilers keep their real standard library.
* CUB and thrust from the same CCCL copy as libcu++ (CuPy's), and the CUDA compiler's ``crt/`` headers, which
  ``<mma.h>`` and ``<cuda_device_runtime_api.h>`` include; curand's headers where the wheel is installed.
* ``-DCUDA_VERSION=<NVRTC's version>``, ``-std=c++17`` unless the flags choose a standard, and the flags with
  ``{arch}`` / ``{cc}`` replaced for the arch being compiled.

It also reads a failed compile's log and says what to do: see :func:`hints`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import toolchain
from .errors import CujitError

__all__ = [
    "cccl_extra_dirs",
    "crt_include_dir",
    "cuda_version",
    "expand_flags",
    "find_crt_dir",
    "hints",
    "identity",
    "nvrtc_options",
    "pch_options",
    "prelude",
    "shared_prefix",
    "stand_in_dir",
    "use_pch",
    "HOST_ONLY_STAND_INS",
    "STAND_INS",
]

_PACKAGE = Path(__file__).resolve().parent.parent
_DEFAULT_STD = "-std=c++17"
# Set to the value nvcc builds get: libcu++ picks 16 for every other compiler, and its type-list metaprograms
# then cost NVRTC about a second of preprocessing per module that reaches <cuda/std/type_traits>.
_CCCL_UNROLL = "_CCCL_META_UNROLL_LIMIT"
_CCCL_UNROLL_NVCC = 10
_STD_FLAG = re.compile(r"^--?std(=|$)")
_CRT_PROBE = Path("crt") / "host_defines.h"
# cuda.pathfinder answers that come from an explicit installation rather than a guess at system folders.
_TRUSTED_FOUND_VIA = ("site-packages", "conda", "CUDA_PATH", "CUDA_HOME")

#: The standard headers that cujit provides under NVRTC with their device meaning (see
#: cujit/include_nvrtc/README.md).
STAND_INS: tuple[str, ...] = (
    "algorithm", "array", "assert.h", "bit", "cassert", "cfloat", "cinttypes", "climits", "cmath", "concepts",
    "cstddef", "cstdint", "cstdio", "cstdlib", "cstring", "float.h", "functional", "initializer_list",
    "inttypes.h", "limits", "limits.h", "math.h", "numeric", "optional", "ranges", "span", "stddef.h",
    "stdint.h", "stdio.h", "stdlib.h", "string.h", "tuple", "type_traits", "utility", "version",
)

#: Host-only standard headers: their stand-ins declare nothing, so that host code behind ``#ifndef
#: __CUDACC_RTC__`` or in templates never instantiated compiles while its includes stay as they are.
HOST_ONLY_STAND_INS: tuple[str, ...] = (
    "any", "atomic", "chrono", "condition_variable", "deque", "exception", "filesystem", "fstream", "future",
    "iomanip", "ios", "iosfwd", "iostream", "istream", "iterator", "list", "locale", "map", "memory",
    "memory_resource", "mutex", "ostream", "queue", "random", "regex", "set", "shared_mutex", "sstream", "stack",
    "stdexcept", "streambuf", "string", "string_view", "thread", "typeinfo", "unordered_map", "unordered_set",
    "valarray", "variant", "vector",
)

# Host-only headers without a stand-in (C and POSIX headers): a missing one gets its own hint.
_HOST_ONLY = frozenset(
    "csignal ctime signal.h time.h locale.h errno.h cerrno wchar.h cwchar ctype.h cctype pthread.h unistd.h "
    "sys/types.h".split()
)
# The other standard headers: neither a stand-in nor host-only.
_OTHER_STANDARD = frozenset(
    "barrier bitset ccomplex cfenv charconv codecvt compare complex coroutine csetjmp cstdarg cuchar "
    "execution expected fenv.h latch mdspan new numbers ratio scoped_allocator semaphore "
    "source_location stdarg.h stdbool.h system_error typeindex".split()
)

# What device code uses instead of the names that the host-only stand-ins leave out, by header.
_DEVICE_INSTEAD = {
    "string": "a const char* and a length, or a fixed-size char array (printf prints them)",
    "string_view": "cuda::std::string_view (<cuda/std/string_view>)",
    "sstream": "printf",
    "iostream": "printf",
    "ostream": "printf",
    "istream": "data read on the host and passed to the kernel",
    "iomanip": "printf's format specifiers",
    "fstream": "data read on the host and passed to the kernel",
    "vector": "a pointer and a length passed to the kernel, or cuda::std::array (<array>) of a fixed size",
    "deque": "a pointer and a length passed to the kernel",
    "list": "a pointer and a length passed to the kernel",
    "map": "a sorted array built on the host and searched on the device",
    "set": "a sorted array built on the host and searched on the device",
    "unordered_map": "a hash table in device memory, built on the host",
    "unordered_set": "a hash table in device memory, built on the host",
    "queue": "a ring buffer in shared or global memory",
    "stack": "a fixed-size array and an index",
    "atomic": "cuda::std::atomic or cuda::atomic_ref (<cuda/std/atomic>, <cuda/atomic>), or atomicAdd and friends",
    "memory": "raw pointers to memory that the host allocates (cuda::std::addressof is in <cuda/std/memory>)",
    "exception": "assert() or an error code written to memory: device code cannot throw",
    "stdexcept": "assert() or an error code written to memory: device code cannot throw",
    "mutex": "atomics (cuda::std::atomic, atomicCAS) and __syncthreads()",
    "shared_mutex": "atomics (cuda::std::atomic, atomicCAS) and __syncthreads()",
    "condition_variable": "atomics and __syncthreads(), or cuda::std::barrier",
    "thread": "the CUDA thread hierarchy (threadIdx, blockIdx)",
    "future": "a second kernel on a stream, ordered by the host",
    "chrono": "clock64() or globaltimer, or cuda::std::chrono (<cuda/std/chrono>)",
    "random": "curand (<curand_kernel.h>) or a counter-based hash",
    "iterator": "cuda::std's iterators (<cuda/std/iterator>)",
    "variant": "cuda::std::variant (<cuda/std/variant>)",
    "any": "a template parameter or a tagged union",
    "typeinfo": "templates and cuda::std::is_same_v (<type_traits>)",
}
# The names of those headers that kernel code most often reaches for, and the header that declares each.
_HOST_NAMES = {
    **dict.fromkeys(("string", "wstring", "to_string", "stoi", "stol", "stoll", "stof", "stod", "getline",
                     "char_traits", "basic_string"), "string"),
    **dict.fromkeys(("ostringstream", "stringstream", "istringstream", "basic_stringstream"), "sstream"),
    **dict.fromkeys(("cout", "cerr", "clog", "cin", "endl", "flush"), "iostream"),
    **dict.fromkeys(("ostream", "basic_ostream"), "ostream"),
    **dict.fromkeys(("istream", "basic_istream"), "istream"),
    **dict.fromkeys(("setw", "setprecision", "setfill", "hex", "dec", "fixed", "scientific"), "iomanip"),
    **dict.fromkeys(("ifstream", "ofstream", "fstream"), "fstream"),
    "vector": "vector", "deque": "deque", "list": "list", "forward_list": "list",
    **dict.fromkeys(("map", "multimap"), "map"), **dict.fromkeys(("set", "multiset"), "set"),
    **dict.fromkeys(("unordered_map", "unordered_multimap"), "unordered_map"),
    **dict.fromkeys(("unordered_set", "unordered_multiset"), "unordered_set"),
    **dict.fromkeys(("queue", "priority_queue"), "queue"), "stack": "stack",
    **dict.fromkeys(("atomic", "atomic_flag", "atomic_ref", "memory_order", "memory_order_relaxed",
                     "memory_order_acquire", "memory_order_release", "memory_order_seq_cst",
                     "atomic_thread_fence"), "atomic"),
    **dict.fromkeys(("unique_ptr", "shared_ptr", "weak_ptr", "make_unique", "make_shared", "allocator",
                     "allocator_traits", "default_delete"), "memory"),
    **dict.fromkeys(("exception", "exception_ptr", "terminate", "current_exception", "rethrow_exception"),
                    "exception"),
    **dict.fromkeys(("runtime_error", "logic_error", "invalid_argument", "out_of_range", "length_error",
                     "domain_error", "range_error", "overflow_error", "underflow_error"), "stdexcept"),
    **dict.fromkeys(("mutex", "recursive_mutex", "timed_mutex", "lock_guard", "unique_lock", "scoped_lock",
                     "call_once", "once_flag"), "mutex"),
    **dict.fromkeys(("shared_mutex", "shared_lock"), "shared_mutex"),
    "condition_variable": "condition_variable",
    **dict.fromkeys(("thread", "this_thread", "jthread"), "thread"),
    **dict.fromkeys(("future", "promise", "async", "packaged_task"), "future"),
    "chrono": "chrono",
    **dict.fromkeys(("mt19937", "mt19937_64", "random_device", "uniform_int_distribution",
                     "uniform_real_distribution", "normal_distribution", "default_random_engine"), "random"),
    **dict.fromkeys(("iterator_traits", "back_inserter", "istream_iterator", "ostream_iterator",
                     "reverse_iterator", "make_reverse_iterator", "advance", "distance", "next", "prev"),
                    "iterator"),
    **dict.fromkeys(("variant", "visit", "holds_alternative", "monostate"), "variant"),
    "string_view": "string_view",
    **dict.fromkeys(("any", "any_cast", "bad_any_cast"), "any"),
    **dict.fromkeys(("type_info", "bad_cast", "bad_typeid"), "typeinfo"),
}
#: The name std::function is not in libcu++: <functional>'s stand-in has the rest of the header.
_NOT_IN_LIBCU = {
    "function": "std::function is host-only (it erases the type and may allocate): device code takes the "
                "callable as a template parameter (a functor or a lambda type)",
    "bind": "std::bind is host-only: use a lambda",
}


def stand_in_dir() -> Path:
    """``cujit/include_nvrtc``: the standard-header stand-ins, on NVRTC's include path only."""
    return _PACKAGE / "include_nvrtc"


def prelude() -> Path:
    """The file NVRTC reads before every module (``--pre-include``): what nvcc's implicit includes declare."""
    return stand_in_dir() / "cujit_prelude.h"


def cuda_version() -> int:
    """``CUDA_VERSION`` as cuda.h spells it, for the NVRTC in use: 12.9 -> 12090."""
    major, minor = toolchain.nvrtc_version()
    return major * 1000 + minor * 10


def find_crt_dir(cuda_include: Path) -> Path | None:
    """The folder whose ``crt/`` holds ``host_defines.h``, ``mma.h`` and friends, of the CUDA headers' release.

    A toolkit keeps ``crt/`` next to the other CUDA headers, and so does the CUDA 13 wheel layout (from the
    ``nvidia-cuda-crt`` wheel); the CUDA 12 wheels ship it with nvcc (``nvidia-cuda-nvcc-cu12``, a sibling folder).
    A ``crt/`` of another major version than the headers, or newer than NVRTC, is never used. Guessed system
    folders (``/usr/local/cuda``) are never used either: their version need not match the headers in use.
    """
    headers_release = toolchain.header_version(cuda_include)
    for path in _crt_candidates(cuda_include):
        if (path / _CRT_PROBE).is_file() and _crt_fits(path, cuda_include, headers_release):
            return path
    return None


def crt_release(folder: Path) -> tuple[int, int] | None:
    """The CUDA release of a folder holding ``crt/``: its wheel's version where a wheel installed it, else cuda.h's."""
    layout = folder.parent
    if layout.parent.name == "nvidia":
        site = layout.parent.parent
        wheel = "nvidia_cuda_nvcc_cu12" if layout.name == "cuda_nvcc" else "nvidia_cuda_crt"
        for info in sorted(site.glob(f"{wheel}-*.dist-info"), reverse=True):
            match = re.match(r".*-(\d+)\.(\d+)", info.name)
            if match:
                return int(match.group(1)), int(match.group(2))
    return toolchain.header_version(folder)


def _crt_fits(path: Path, cuda_include: Path, headers_release: tuple[int, int] | None) -> bool:
    release = crt_release(path)
    if release is None or headers_release is None:
        # Unknown: only the headers' own folder, or the CUDA 12 wheels' nvcc folder beside CUDA 12 headers.
        return path == cuda_include or (path.parent.name == "cuda_nvcc" and (headers_release or (12,))[0] == 12)
    try:
        nvrtc = toolchain.nvrtc_version()
    except CujitError:
        nvrtc = headers_release
    return release[0] == headers_release[0] and release <= max(nvrtc, headers_release)


def _crt_candidates(cuda_include: Path) -> Iterable[Path]:
    """Where ``crt/`` may be, best first; lazily, so the slower look-ups run only when needed."""
    yield cuda_include
    yield cuda_include.parent.parent / "cuda_nvcc" / "include"  # the CUDA 12 wheels: nvidia/cuda_runtime/include
    try:
        from cuda import pathfinder

        located = pathfinder.locate_nvidia_header_directory("nvcc")
    except (ImportError, AttributeError, RuntimeError):
        located = None
    if located is not None and located.abs_path and located.found_via in _TRUSTED_FOUND_VIA:
        yield Path(located.abs_path)
    for var in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(var)
        if root:
            yield Path(root) / "include"


@functools.cache
def crt_include_dir() -> Path | None:
    """The ``crt/`` folder's parent to add to NVRTC's path, or None (not found, or already the CUDA folder)."""
    cuda_include = toolchain.cuda_include_dir()
    found = find_crt_dir(cuda_include)
    return None if found is None or found == cuda_include else found


@functools.cache
def cccl_extra_dirs() -> tuple[Path, ...]:
    """CUB and thrust from the CCCL copy that libcu++ comes from (the versions must match).

    CuPy keeps ``_cccl/{libcudacxx,cub,thrust}`` side by side; a CCCL folder that holds ``cub/`` itself (a CUDA
    toolkit's ``include/cccl``) needs nothing more.
    """
    root = toolchain.cccl_include_dir()
    if root is None or (root / "cub").is_dir():
        return ()
    return tuple(path for path in (root.parent / "cub", root.parent / "thrust") if (path / path.name).is_dir())


@functools.cache
def _curand_include_dir() -> Path | None:
    """The folder of curand's headers (``curand_kernel.h``) of NVRTC's own CUDA release, where installed; else None.

    The CUDA header folder itself where it has them (a toolkit; CUDA 13's wheels), else NVIDIA's wheels on
    ``sys.path``: ``nvidia/cu<major>/include``, or ``nvidia/curand/include`` for CUDA 12 (``cujit[curand]``).
    curand's headers of another release are never used: torch's CUDA 13 wheels bring theirs, which NVRTC 12
    cannot parse.
    """
    cuda = toolchain.cuda_include_dir()
    if (cuda / "curand_kernel.h").is_file():
        return cuda
    major = toolchain.nvrtc_version()[0]
    for entry in sys.path:
        site = Path(entry or ".")
        for folder in (site / "nvidia" / f"cu{major}" / "include", site / "nvidia" / "curand" / "include"):
            if not (folder / "curand_kernel.h").is_file():
                continue
            # A folder with cuda.h says its release; the per-component layout is CUDA 12's (and 11's, unsupported).
            release = toolchain.header_version(folder)
            if (release[0] if release is not None else 12) == major:
                return folder
    return None


def extra_include_dirs() -> tuple[Path, ...]:
    """The folders NVRTC searches after the CUDA headers and libcu++, in order."""
    dirs = list(cccl_extra_dirs())
    crt = crt_include_dir()
    if crt is not None:
        dirs.append(crt)
    curand = _curand_include_dir()
    if curand is not None and curand != toolchain.cuda_include_dir():
        dirs.append(curand)
    return tuple(dirs)


@functools.cache
def identity() -> str:
    """What the cache key needs to know about the folders added here, by content: no paths, no file times.

    The stand-ins are covered file by file (they are found through the include scan). For CUB and thrust, the
    crt/ headers and curand, the digest of a file that changes with every release of each stands for the folder.
    """
    parts = [f"cuda-version={cuda_version()}"]
    for path in extra_include_dirs():
        for probe in ("cub/version.cuh", "thrust/version.h", "crt/mma.hpp", "crt/host_defines.h", "curand_kernel.h"):
            try:
                data = (path / probe).read_bytes()
            except OSError:
                continue
            parts.append(f"{probe}:{hashlib.sha256(data).hexdigest()[:16]}")
    return "|".join(parts)


def expand_flags(flags: Iterable[str], arch: str) -> tuple[str, ...]:
    """``flags`` with ``{arch}`` replaced by the arch (``sm_90a``) and ``{cc}`` by its number (``90``).

    So that an arch-dependent define (``-DSM={cc}``) follows the arch chosen at the first launch. Only these two
    exact placeholders change; other braces in a flag stay as they are.
    """
    digits = re.search(r"\d+", arch)
    number = digits.group(0) if digits else ""
    return tuple(f.replace("{arch}", arch).replace("{cc}", number) for f in flags)


def _defines(flags: Sequence[str], name: str) -> bool:
    """Whether ``flags`` define or undefine macro ``name`` (``-DNAME``, ``-DNAME=1``, ``-D NAME``, ``-UNAME``)."""
    pattern = re.compile(rf"^(?:-D|-U|--define-macro=|--undefine-macro=)?{re.escape(name)}(?:=|$)")
    for i, flag in enumerate(flags):
        if flag.startswith(("-D", "-U", "--define-macro=", "--undefine-macro=")) and pattern.match(flag):
            return True
        if flag in ("-D", "-U", "--define-macro", "--undefine-macro") and i + 1 < len(flags):
            if re.match(rf"^{re.escape(name)}(?:=|$)", flags[i + 1]):
                return True
    return False


def nvrtc_options(arch: str, include_paths: Sequence[Path], extra_cflags: Sequence[str]) -> tuple[str, ...]:
    """Every NVRTC option of a compile for ``arch``, in order; the cache key hashes exactly these.

    Include order: cujit's headers, the module's own folders, the stand-ins (before the CUDA headers, so that
    ``<cuda.h>`` is cujit's), the CUDA headers, libcu++, CUB and thrust, ``crt/``, curand; then the user's flags,
    last, so that their ``-I`` and ``-D`` see everything above. A ``-std=`` among them replaces the default.
    """
    flags = expand_flags(extra_cflags, arch)
    opts = [f"-arch={arch}"]
    if not any(_STD_FLAG.match(f) for f in flags):
        opts.append(_DEFAULT_STD)
    opts.append(f"-I{toolchain.cujit_include_dir()}")
    opts += [f"-I{p}" for p in include_paths]
    opts.append(f"-I{stand_in_dir()}")
    opts.append(f"-I{toolchain.cuda_include_dir()}")
    cccl = toolchain.cccl_include_dir()
    if cccl is not None:
        opts.append(f"-I{cccl}")
    opts += [f"-I{p}" for p in extra_include_dirs()]
    opts.append(f"--pre-include={prelude()}")
    if not _defines(flags, "CUDA_VERSION"):
        opts.append(f"-DCUDA_VERSION={cuda_version()}")
    if not _defines(flags, _CCCL_UNROLL):
        opts.append(f"-D{_CCCL_UNROLL}={_CCCL_UNROLL_NVCC}")
    opts += flags
    return tuple(opts)


# ---------------------------------------------------------------------------------------------------- prefix
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_LEADING_INCLUDE = re.compile(r"#[ \t]*include[ \t]*<([^<>\s]+)>[ \t]*$")
_PRAGMA_ONCE = re.compile(r"#[ \t]*pragma[ \t]+once[ \t]*$")
_IFNDEF = re.compile(r"#[ \t]*ifndef[ \t]+(\w+)[ \t]*$")
_DEFINE = re.compile(r"#[ \t]*define[ \t]+(\w+)[ \t]*$")
_GUARD_HEAD = 4096  # a guarded header opens with a licence comment and its guard within this many bytes


def _directives(text: str) -> list[str]:
    """The lines of ``text`` with comments removed, stripped, empty ones left out (comments' newlines kept)."""
    text = _COMMENTS.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def shared_prefix(kernel_file: Path, user_dirs: Sequence[Path]) -> tuple[str, ...]:
    """The headers ``<name>`` that ``kernel_file`` includes before any other line, up to the first other line.

    Comments, blank lines, ``#pragma once`` and an include guard (``#ifndef X`` / ``#define X``) may come before
    and between them. Only headers that NVRTC finds in cujit's stand-ins, the CUDA headers or CCCL (not in
    ``user_dirs``, searched first) and that are include-guarded count, so that including them once more before the
    kernel file changes nothing; the list stops at the first one that does not qualify.
    """
    try:
        with open(kernel_file, "rb") as f:  # noqa: PTH123
            text = f.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return ()
    names: list[str] = []
    guard: str | None = None
    for line in _directives(text):
        if _PRAGMA_ONCE.match(line):
            continue
        if not names and guard is None and _IFNDEF.match(line):
            guard = _IFNDEF.match(line)[1]  # type: ignore[index]
            continue
        define = _DEFINE.match(line)
        if guard is not None and define and define[1] == guard:
            guard = ""
            continue
        include = _LEADING_INCLUDE.match(line)
        if include is None or not _guarded_system_header(include[1], tuple(user_dirs)):
            break
        names.append(include[1])
    if guard:  # an #ifndef without its #define: not a guard, so nothing may move above it
        return ()
    return tuple(names)


@functools.cache
def _system_dirs() -> tuple[Path, ...]:
    cccl = toolchain.cccl_include_dir()
    return (stand_in_dir(), toolchain.cuda_include_dir(), *((cccl,) if cccl else ()), *extra_include_dirs())


def _guarded_system_header(name: str, user_dirs: tuple[Path, ...]) -> bool:
    """Whether ``<name>`` resolves to an include-guarded file of the stand-ins, the CUDA headers or CCCL."""
    if ".." in name.split("/") or name.startswith("/"):
        return False
    for folder in user_dirs:
        if os.path.isfile(os.path.join(folder, name)):  # noqa: PTH113, PTH118
            return False
    for folder in _system_dirs():
        path = os.path.join(folder, name)  # noqa: PTH118
        if os.path.isfile(path):  # noqa: PTH113
            return _is_guarded(path)
    return False


@functools.lru_cache(maxsize=512)
def _is_guarded_cached(path: str, size: int, mtime_ns: int) -> bool:
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            head = f.read(_GUARD_HEAD).decode("utf-8", "replace")
    except OSError:
        return False
    lines = _directives(head)
    if not lines:
        return False
    if _PRAGMA_ONCE.match(lines[0]):
        return True
    first = _IFNDEF.match(lines[0])
    second = _DEFINE.match(lines[1]) if len(lines) > 1 else None
    return bool(first and second and first[1] == second[1])


def _is_guarded(path: str) -> bool:
    """Whether the file opens with ``#pragma once`` or an ``#ifndef X`` / ``#define X`` guard."""
    try:
        st = os.stat(path)  # noqa: PTH116
    except OSError:
        return False
    return _is_guarded_cached(path, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------------- PCH
_PCH_ROOT: list[Path] = []
_PCH_SEEN: set[str] = set()
_PCH_LOCK = threading.Lock()


def use_pch(folder: Path) -> None:
    """Let NVRTC keep precompiled headers under ``folder`` for every later compile of this process (workers do).

    NVRTC's automatic PCH saves the parsed state of a module's headers after a compile and reuses it for every
    later module whose sources start the same way: the instantiations of one kernel file, most of all, which then
    compile three to five times faster when they include CUB. The files are bound to this process's NVRTC heap,
    so no other process can use them, and the output is what a compile without PCH gives, so the PCH options stay
    out of the cache key.
    """
    _PCH_ROOT[:] = [folder]


def pch_options(reached: Sequence[tuple[str, bytes]] | None, search_dirs: Sequence[Path], flags: Sequence[str],
                arch: str) -> tuple[str, ...]:
    """The PCH options for a compile of ``files`` with ``flags`` for ``arch`` (NVRTC wants them first), or none.

    ``reached`` are the files the kernel files and the pre-included ones reach, named and with their contents
    (None where a computed ``#include MACRO`` could reach others: then no PCH). NVRTC does not notice a header that
    changed since it saved the PCH (it served the old contents in a test), so each PCH lives in a folder named
    after the digest of every reached file, the include folders, the flags and the arch: an edited header leads to
    a new folder, never to a stale PCH.

    A process that is not a compile worker turns PCH on the second time it compiles the same prefix: one that
    compiles one module of a kind pays nothing (saving the PCH costs a tenth of a compile, and memory), one that
    compiles many instantiations of a kernel gains from the third on.
    """
    if reached is None:
        return ()  # an #include MACRO can reach files the scan does not see: no PCH rather than a stale one
    digest = hashlib.sha256()
    for part in (arch, *flags, *map(str, search_dirs), *(name for name, _ in reached)):
        digest.update(part.encode() + b"\0")
    for _, data in reached:
        digest.update(hashlib.sha256(data).digest())
    prefix = digest.hexdigest()[:24]
    with _PCH_LOCK:
        if not _PCH_ROOT:
            if prefix not in _PCH_SEEN:
                _PCH_SEEN.add(prefix)
                return ()
            import atexit
            import shutil
            import tempfile

            root = tempfile.mkdtemp(prefix="cujit-pch-")
            atexit.register(shutil.rmtree, root, True)
            use_pch(Path(root))
        folder = _PCH_ROOT[0] / prefix
    folder.mkdir(exist_ok=True)
    # The diagnostics suppressed here only ever concern PCH files (#629: other options, #630: another prefix,
    # #20282: another heap); NVRTC then compiles without the PCH.
    return ("-pch", f"--pch-dir={folder}", "--pch-messages=false", "-diag-suppress=629,630,20282")


# ---------------------------------------------------------------------------------------------------- hints
_MISSING = re.compile(r'cannot open source file "([^"]+)"')
_HOST_CODE = re.compile(
    r"(host functions are not allowed in JIT mode|__host__ function is not allowed in JIT mode"
    r"|host variables are not allowed in JIT mode)"
)
_CUB_REMOVED = re.compile(r'namespace "cub" has no member "(Sum|Max|Min|ArgMax|ArgMin|Equality|Inequality)"')
_DRIVER_CALL = re.compile(r'identifier "(cu[A-Z]\w*)" is undefined')
_STD_MEMBER = re.compile(r'namespace "std" has no member "(\w+)"')
_CUB_REPLACEMENTS = {
    "Sum": "cuda::std::plus<>{}",
    "Max": "cuda::maximum<>{}",
    "Min": "cuda::minimum<>{}",
    "ArgMax": "cub::detail::arg_max (or a reduction over cub::KeyValuePair)",
    "ArgMin": "cub::detail::arg_min (or a reduction over cub::KeyValuePair)",
    "Equality": "cuda::std::equal_to<>{}",
    "Inequality": "cuda::std::not_equal_to<>{}",
}


def hints(log: str) -> list[str]:
    """What to do about the errors in an NVRTC ``log``, one sentence each; empty when nothing is recognised."""
    out: list[str] = []
    if _HOST_CODE.search(log):
        out.append(
            "NVRTC compiles device code only: a function or variable without __device__ (a launcher, a binding, "
            "a host helper) is host code. Keep host code out of the JIT build with #ifndef __CUDACC_RTC__ ... "
            "#endif (NVRTC defines __CUDACC_RTC__, nvcc does not), or mark a helper __device__ or __host__ "
            "__device__."
        )
    for name in dict.fromkeys(_MISSING.findall(log)):
        out.append(_missing_header_hint(name))
    for name in dict.fromkeys(_CUB_REMOVED.findall(log)):
        out.append(
            f"cub::{name} was removed in CCCL 3 (cujit uses CCCL {_cccl_version()}, the copy CuPy ships): use "
            f"{_CUB_REPLACEMENTS[name]} (<cuda/functional> declares cuda::maximum and cuda::minimum)."
        )
    for name in dict.fromkeys(_DRIVER_CALL.findall(log)):
        out.append(
            f"{name} is a CUDA driver API function, host code: under NVRTC, <cuda.h> is cujit's stand-in, which "
            "defines CUDA_VERSION, CUdeviceptr and CUtensorMap only. Call the driver from the host (cuda-python, "
            "CuPy's driver module)."
        )
    missing_std = []
    for name in dict.fromkeys(_STD_MEMBER.findall(log)):
        hint = _host_name_hint(name)
        if hint is None:
            missing_std.append(name)
        else:
            out.append(hint)
    if missing_std:
        names = ", ".join(f"std::{n}" for n in missing_std)
        out.append(
            f"{names}: include the standard header that declares it; under NVRTC cujit's stand-ins provide "
            f"<{'>, <'.join(h for h in STAND_INS if '.' not in h)}> (the trait and utility ones through "
            "libcu++), and cuda::std:: has the rest of libcu++."
        )
    return out


def _host_name_hint(name: str) -> str | None:
    """The hint for device code that names ``std::name`` from a host-only header, or None for other names."""
    if name in _NOT_IN_LIBCU:
        return f"{_NOT_IN_LIBCU[name]}."
    header = _HOST_NAMES.get(name)
    if header is None:
        return None
    return (
        f"std::{name} is declared by <{header}>, a host-only standard header: under NVRTC cujit's <{header}> "
        "declares nothing, so that host code behind #ifndef __CUDACC_RTC__ (or in a template never instantiated) "
        f"compiles, and device code cannot use it. In device code, use {_DEVICE_INSTEAD[header]}; keep host code "
        "that needs it behind #ifndef __CUDACC_RTC__."
    )


def _missing_header_hint(name: str) -> str:
    if name.startswith("crt/"):
        major = toolchain.nvrtc_version()[0]
        minor = toolchain.nvrtc_version()[1]
        wheel = (f"'nvidia-cuda-nvcc-cu12=={major}.{minor}.*'" if major == 12
                 else f"'nvidia-cuda-crt=={major}.{minor}.*'")
        return (
            f"<{name}> is one of the CUDA compiler's crt/ headers, which <mma.h>, <cuda_device_runtime_api.h> "
            f"and friends include: pip install {wheel}, matching the version of your CUDA headers."
        )
    if name.startswith("curand"):
        major = toolchain.nvrtc_version()[0]
        wheel = "'cujit[curand]' (nvidia-curand-cu12)" if major == 12 else f"'cuda-toolkit[curand]=={major}.*'"
        return (f"<{name}> comes with curand's headers of NVRTC's CUDA release ({major}): pip install {wheel}; "
                "curand headers of another CUDA release are not used.")
    if name in _HOST_ONLY:
        return (
            f"<{name}> is a host-only standard header: nothing in it runs on the device, and NVRTC has no "
            "standard library. Guard the code that needs it with #ifndef __CUDACC_RTC__, or use the libcu++ "
            f"counterpart where one exists{_libcu_hint(name)}."
        )
    if name in _OTHER_STANDARD:
        stand_ins = ", ".join(f"<{h}>" for h in STAND_INS)
        return (
            f"<{name}> was not found. NVRTC has no standard library; under NVRTC cujit provides {stand_ins}"
            f"{_libcu_hint(name)}. Other headers: pass their folder in extra_include_paths."
        )
    return f"<{name}> was not found: pass its folder in extra_include_paths (or -I in extra_cuda_cflags)."


def _libcu_hint(name: str) -> str:
    root = toolchain.cccl_include_dir()
    if root is not None and (root / "cuda" / "std" / name).is_file():
        return f" (for <{name}>: <cuda/std/{name}>, names in cuda::std::)"
    return ""


@functools.cache
def _cccl_version() -> str:
    """CCCL's version as major.minor.patch, read from the CUB header in use (``"unknown"`` if it cannot be)."""
    for folder in (*cccl_extra_dirs(), toolchain.cccl_include_dir()):
        if folder is None:
            continue
        try:
            text = (folder / "cub" / "version.cuh").read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r"#define\s+CUB_VERSION\s+(\d+)", text)
        if match:
            number = int(match.group(1))
            return f"{number // 100000}.{number // 100 % 1000}.{number % 100}"
    return "unknown"
