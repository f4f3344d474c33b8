"""Where the compiler and the headers come from: NVRTC through CuPy, the CUDA headers of NVRTC's own release.

NVRTC is whichever libnvrtc CuPy's binding loads. The CUDA headers handed to it must come from the same CUDA
release: the same major version, and not newer than NVRTC (newer headers use pragmas and builtins that an older
NVRTC rejects; CUDA 13's ``cuda_fp8.h`` fails to parse under NVRTC 12). Several releases are often installed at
once: torch 2.11 and later bring CUDA 13 wheels (``nvidia/cu13/include``) beside the CUDA 12 wheels that cujit
depends on (``nvidia/cuda_runtime/include``). So every known place is looked at, each folder's version is read from
its ``cuda.h``, and the newest folder that fits NVRTC wins; when none fits, one error names both versions.

Everything here is looked up once per process and memoised; none of it needs a GPU or a driver.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from . import frameworks, release
from .errors import CujitError

__all__ = [
    "HeaderDir",
    "cccl_identity",
    "cccl_include_dir",
    "choose_cuda_headers",
    "cuda_header_candidates",
    "cuda_headers_identity",
    "compiling_nvrtc",
    "cuda_include_dir",
    "cujit_include_dir",
    "cupy_headers_mismatch",
    "header_version",
    "kernels_dir",
    "load_nvrtc",
    "nvrtc",
    "nvrtc_environment",
    "nvrtc_version",
]

_PACKAGE = Path(__file__).resolve().parent.parent
_VERSION_DEFINE = re.compile(rb"#[ \t]*define[ \t]+(CUDA_VERSION|CUDART_VERSION)[ \t]+(\d+)")
# Where NVIDIA's wheels put the CUDA runtime headers, relative to a site-packages folder: one folder per major
# version from CUDA 13 on, a per-component folder before.
_WHEEL_LAYOUTS = ("nvidia/cu[0-9]*/include", "nvidia/cuda_runtime/include")


def cujit_include_dir() -> Path:
    """``cujit/include``: the folder that makes ``#include <cujit/...>`` work."""
    return _PACKAGE / "include"


def kernels_dir() -> Path:
    """``cujit/kernels``: where relative ``cuda_files`` are looked up."""
    return _PACKAGE / "kernels"


@functools.cache
def nvrtc() -> Any:
    """CuPy's NVRTC binding (``cupy_backends.cuda.libs.nvrtc``), bound to the libnvrtc that ``release`` chooses.

    Compiles with no GPU and no driver.
    """
    release.preload_chosen()
    try:
        from cupy_backends.cuda.libs import nvrtc as binding
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise CujitError(
            "cujit needs CuPy for NVRTC: pip install cupy-cuda12x (or cupy-cuda13x for CUDA 13)"
        ) from exc
    frameworks.first_calls_without_cupy(binding.getVersion)  # loads libnvrtc, which CuPy would log by importing itself
    return binding


@functools.cache
def compiling_nvrtc() -> Any:
    """CuPy's NVRTC binding, checked to be bound to the release the cache keys were made for (:func:`nvrtc_version`).

    They differ only where something loaded another libnvrtc into this process between the two (CuPy's binding
    takes the first its finder meets); compiling on would file code under another toolchain's keys. Checked once
    per process (a failure is raised again on every call): the binding does not change library once bound.
    """
    binding = nvrtc()
    bound = tuple(int(v) for v in binding.getVersion())
    expected = nvrtc_version()
    if bound != expected:
        raise CujitError(
            "CuPy's NVRTC binding uses NVRTC {}.{}, but cujit chose NVRTC {}.{} ({}) for this process: another "
            "libnvrtc was loaded in between. Fix: set CUJIT_NVRTC to the library to use, or let cujit compile "
            "before anything else loads NVRTC.".format(*bound, *expected, release.chosen().describe())
        )
    return binding


def _version_of_chosen_library() -> tuple[int, int]:
    """``nvrtcVersion`` of the library the rule picks, loaded with ctypes.

    No CuPy import (0.1-0.2 s): a worker or server loads the library ahead of its first compile this way.
    """
    library = release.preload_chosen()
    handle = ctypes.CDLL(str(library.path))
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    status = handle.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    if status != 0:
        raise CujitError(f"{library.describe()}: nvrtcVersion returned {status}")
    return major.value, minor.value


def load_nvrtc() -> tuple[int, int]:
    """Load the libnvrtc that compiles in this process now and return its (major, minor) version.

    CuPy's binding's library where the binding is imported, else the library the rule picks, loaded with ctypes.
    Raises ``CujitError`` where it cannot be loaded.
    """
    try:
        if "cupy_backends.cuda.libs.nvrtc" in sys.modules:
            major, minor = nvrtc().getVersion()
            return int(major), int(minor)
        return _version_of_chosen_library()
    except CujitError:
        raise
    except Exception as exc:  # CuPy raises several types when libnvrtc is missing
        raise CujitError(
            "NVRTC could not be loaded: install the NVRTC wheel that matches your CuPy "
            "(pip install 'nvidia-cuda-nvrtc-cu12' for cupy-cuda12x, "
            "'cuda-toolkit[nvrtc,cudart]==13.*' for cupy-cuda13x) "
            f"or point CUDA_PATH at a CUDA toolkit; the loader said: {exc}"
        ) from exc


@functools.cache
def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor) version: the release that compiles in this process, which the cache keys name.

    Where CuPy's binding is imported, its library answers. Otherwise the release comes from the chosen library's
    files (``libnvrtc-builtins.so.X.Y`` beside it) without loading it, so that a warm start, all cache hits, never
    maps the library (about 100 MB); only where the files do not say is it loaded to ask. Before any compile,
    :func:`compiling_nvrtc` checks that the library the binding loaded is this release.
    """
    named = release.chosen()
    if "cupy_backends.cuda.libs.nvrtc" in sys.modules or named.version is None:
        major, minor = load_nvrtc()
    else:
        major, minor = named.version
    if named.origin == release.PINNED and named.version is not None and named.version[0] != int(major):
        raise CujitError(
            f"CUJIT_NVRTC names {named.describe()}, but CuPy's binding had loaded NVRTC {major}.{minor} already. "
            "Fix: unset CUJIT_NVRTC, or set it before anything in this process compiles with CuPy."
        )
    return int(major), int(minor)


def nvrtc_environment() -> dict[str, str]:
    """``CUJIT_NVRTC`` for a process that cujit starts: the libnvrtc this process compiles with (loaded if needed).

    Empty where there is none to name; the child then applies the rule itself.
    """
    try:
        library = nvrtc_library()
    except CujitError:
        return {}
    return {} if library is None else {"CUJIT_NVRTC": str(library)}


@functools.cache
def nvrtc_library() -> Path | None:
    """The file of the libnvrtc in use (loaded first), or None where the process map is unreadable."""
    version = load_nvrtc()
    for library in release.loaded_nvrtc():
        if library.version is None or library.version[0] == version[0]:
            return library.path
    return None


@functools.cache
def check_driver_for_launch() -> None:
    """Raise ``CujitError`` before code is built for a GPU whose driver could not load NVRTC's cubins.

    Memoised once it passes; a failure is raised again on every call.
    """
    release.check_driver(nvrtc_version(), release.driver_version())


# ---------------------------------------------------------------------------------------------------- CUDA headers
class HeaderDir(NamedTuple):
    """A folder of CUDA headers (it holds ``cuda_runtime.h``) and the CUDA version its ``cuda.h`` declares."""

    path: Path
    version: tuple[int, int] | None
    origin: str

    def describe(self) -> str:
        """``CUDA 12.9 in /path (origin)`` for messages."""
        release = "CUDA of unknown version" if self.version is None else "CUDA {}.{}".format(*self.version)
        return f"{release} in {self.path} ({self.origin})"


def header_version(folder: Path) -> tuple[int, int] | None:
    """The CUDA (major, minor) of a header folder: ``CUDA_VERSION`` of ``cuda.h``, else ``CUDART_VERSION``."""
    for name in ("cuda.h", "cuda_runtime_api.h"):
        try:
            with (folder / name).open("rb") as f:
                head = f.read(1 << 16)  # the define sits in the first few hundred lines
        except OSError:
            continue
        match = _VERSION_DEFINE.search(head)
        if match:
            value = int(match.group(2))
            return value // 1000, (value % 1000) // 10
    return None


def _candidate_folders(search_path: Sequence[str]) -> Iterable[tuple[Path, str]]:
    """Every folder that may hold CUDA headers, in search order, with where it came from."""
    for entry in search_path:
        nvidia = Path(entry or ".") / "nvidia"
        try:
            names = [item.name for item in nvidia.iterdir()]
        except OSError:
            continue
        # CUDA 13 and later: nvidia/cu13/include (newest first); CUDA 12: nvidia/cuda_runtime/include.
        majors = sorted((n for n in names if re.fullmatch(r"cu\d+", n)), key=lambda n: int(n[2:]), reverse=True)
        for name in [*majors, *(["cuda_runtime"] if "cuda_runtime" in names else [])]:
            yield nvidia / name / "include", "an NVIDIA wheel"
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        yield Path(conda) / "include", "CONDA_PREFIX"
        for target in sorted(Path(conda).glob("targets/*/include")):
            yield target, "CONDA_PREFIX"
    for var in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(var)
        if root:
            yield Path(root) / "include", var
    yield Path("/usr/local/cuda/include"), "the system toolkit"


def _beside_loaded_nvrtc() -> Iterable[tuple[Path, str]]:
    """The header folders of the releases whose libnvrtc this process has loaded (see ``release.loaded_nvrtc``).

    torch may have loaded one NVRTC and CuPy another; the version rule picks among their folders.
    """
    for loaded in release.loaded_nvrtc():
        library = loaded.path
        # A toolkit's lib64/ -> include/, a CUDA 13 wheel's cu13/lib -> cu13/include, a CUDA 12 wheel's
        # cuda_nvrtc/lib -> cuda_runtime/include.
        root = library.parent.parent
        yield root / "include", f"beside the loaded {library.name}"
        yield root.parent / "cuda_runtime" / "include", f"beside the loaded {library.name}"


def _header_dirs(folders: Iterable[tuple[Path, str]], known: Sequence[HeaderDir] = ()) -> list[HeaderDir]:
    out: list[HeaderDir] = []
    seen = {os.path.realpath(c.path) for c in known}
    for folder, origin in folders:
        real = os.path.realpath(folder)
        if real in seen or not (folder / "cuda_runtime.h").is_file():
            continue
        seen.add(real)
        out.append(HeaderDir(Path(os.path.abspath(folder)), header_version(folder), origin))
    return out


def cuda_header_candidates(search_path: Sequence[str] | None = None) -> list[HeaderDir]:
    """Every folder of CUDA headers in the usual places, in search order, each with its version.

    The places: NVIDIA's wheels in every folder of ``search_path`` (``sys.path`` by default: site-packages, and
    a ``pip install --target`` folder on ``PYTHONPATH``), ``CONDA_PREFIX``, ``CUDA_PATH``, ``CUDA_HOME`` and
    ``/usr/local/cuda``.
    """
    return _header_dirs(_candidate_folders(sys.path if search_path is None else search_path))


def _install_hint(major: int, minor: int) -> str:
    if major <= 12:
        return (f"pip install 'nvidia-cuda-runtime-cu12=={major}.{minor}.*' (or set CUDA_PATH to a CUDA "
                f"{major}.{minor} toolkit)")
    return (f"pip install 'cuda-toolkit[cudart]=={major}.{minor}.*' (or set CUDA_PATH to a CUDA {major}.{minor} "
            "toolkit)")


def choose_cuda_headers(candidates: Sequence[HeaderDir], nvrtc: tuple[int, int]) -> HeaderDir:
    """The headers to compile with under NVRTC ``nvrtc``: the newest of its major version not newer than it.

    Among equal versions the first in ``candidates`` wins. Raises ``CujitError`` naming every folder seen and
    what to install when none fits.
    """
    fitting = [c for c in candidates if c.version is not None and c.version[0] == nvrtc[0] and c.version <= nvrtc]
    if fitting:
        best = max(c.version for c in fitting if c.version is not None)
        return next(c for c in fitting if c.version == best)
    want = f"CUDA {nvrtc[0]}.x headers not newer than {nvrtc[0]}.{nvrtc[1]}"
    if candidates:
        got = "; ".join(c.describe() for c in candidates)
    else:
        got = "no folder with cuda_runtime.h (looked at the NVIDIA wheels on sys.path, CONDA_PREFIX, CUDA_PATH, " \
              "CUDA_HOME and /usr/local/cuda)"
    raise CujitError(
        f"CUDA headers for NVRTC {nvrtc[0]}.{nvrtc[1]} (the NVRTC that CuPy loads): expected {want}, got {got}. "
        f"NVRTC and the headers must come from one CUDA release: {_install_hint(*nvrtc)}"
    )


@functools.cache
def cuda_include_dir() -> Path:
    """The folder holding ``cuda_runtime.h``, ``cuda_fp16.h`` and friends, of NVRTC's own CUDA release.

    The usual places are looked at first (see :func:`cuda_header_candidates`); unless one holds exactly NVRTC's
    version, the folder beside the loaded libnvrtc and what ``cuda.pathfinder`` finds are added. The newest folder
    with NVRTC's major version and not newer than NVRTC is used.
    """
    version = nvrtc_version()
    candidates = cuda_header_candidates()
    if not any(c.version == version for c in candidates):
        # Reading /proc/self/maps costs about a millisecond: only where the cheap places have no exact match.
        candidates = [*_header_dirs(_beside_loaded_nvrtc(), candidates), *candidates]
        candidates += _pathfinder_candidates(candidates)
    return choose_cuda_headers(candidates, version).path


def _pathfinder_candidates(known: Sequence[HeaderDir]) -> list[HeaderDir]:
    """What ``cuda.pathfinder`` finds (it also knows system-wide installs)."""
    try:
        from cuda import pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
    except (ImportError, AttributeError, RuntimeError, OSError):
        return []
    return _header_dirs([(Path(found), "cuda.pathfinder")], known) if found else []


def cupy_headers_mismatch() -> str | None:
    """Why CuPy's own kernels cannot compile here, or None when they can (or CuPy does not pick headers itself).

    CuPy 14 compiles its array kernels (arithmetic, reductions, ``cupy.random``) with the CUDA headers that
    ``cuda.pathfinder.find_nvidia_header_directory("cudart")`` finds first, and that search prefers a CUDA 13
    wheel (``nvidia/cu13``, which torch 2.11 and later install) whatever NVRTC CuPy loads. Under NVRTC 12 those
    headers do not parse. cujit's own kernels are not affected (:func:`cuda_include_dir` picks by NVRTC's
    version); this says what to install so that CuPy's are not either.
    """
    try:
        import cupy
        from cuda import pathfinder

        if int(cupy.__version__.split(".")[0]) < 14:
            return None
        found = pathfinder.find_nvidia_header_directory("cudart")
    except (ImportError, AttributeError, RuntimeError, OSError, ValueError):
        return None
    if not found:
        return None
    headers = header_version(Path(found))
    major, minor = nvrtc_version()
    if headers is None or headers[0] == major:
        return None
    fix = ("install the CUDA 13 stack instead (pip install cupy-cuda13x 'cuda-toolkit[nvrtc,cudart]==13.*', then "
           "cujit with --no-deps)" if headers[0] == 13 else _install_hint(major, minor))
    return (f"CuPy's own kernels (array arithmetic, reductions, cupy.random) will not compile here: CuPy "
            f"{cupy.__version__} takes the CUDA {headers[0]}.{headers[1]} headers in {found} (the first that "
            f"cuda.pathfinder finds) but compiles with NVRTC {major}.{minor}. cujit's kernels are not affected. "
            f"To use CuPy's kernels as well, {fix}.")


def _listing_digest(root: Path, subfolders: tuple[str, ...] = ("crt",)) -> str:
    """SHA-256 over the names and sizes of the files of ``root`` and of ``subfolders``, and the names of its folders.

    Not the whole tree: a toolkit's include folder holds thousands of files (CCCL, Thrust, CUB), which would cost
    tens of milliseconds to walk on every start; a release or patch level changes the top-level headers too.
    """
    rows: list[str] = []
    for prefix in ("", *(sub + "/" for sub in subfolders)):
        try:
            with os.scandir(root / prefix) as it:
                for item in it:
                    name = prefix + item.name
                    if item.is_dir():
                        rows.append(f"{name}/")
                    elif item.is_file():
                        rows.append(f"{name}\0{item.stat().st_size}")
        except OSError:
            continue
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


@functools.cache
def cuda_headers_identity() -> str:
    """The identity of the CUDA headers in use, independent of where they are installed.

    Their CUDA version and a digest of the names and sizes of the files in the folder and in ``crt/``: another
    release or patch level changes it, moving the folder does not. Computed once per process, in about a
    millisecond; hashing the megabytes of their contents would cost many.
    """
    root = cuda_include_dir()
    version = header_version(root)
    release = "unknown" if version is None else "{}.{}".format(*version)
    return f"cuda {release}|files {_listing_digest(root)}"


@functools.cache
def cccl_include_dir() -> Path | None:
    """CuPy's copy of libcu++ (``cuda/std/...``), the C++ standard library that works under NVRTC."""
    import importlib.util

    # Find CuPy's folder without importing it (the import costs a third of a second).
    spec = importlib.util.find_spec("cupy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / "_core" / "include" / "cupy" / "_cccl"
    path = path / "libcudacxx"
    return path if path.is_dir() else None


@functools.cache
def cccl_identity() -> str:
    """The identity of CuPy's libcu++ copy, independent of where CuPy is installed.

    The copy is part of the CuPy build, so CuPy's version file and libcu++'s own version header identify it; both
    are small files read once per process (hashing the whole tree of about a thousand files would cost tens of
    milliseconds on every start).
    """
    root = cccl_include_dir()
    if root is None:
        return "none"
    cupy_version = root.parents[4] / "_version.py"  # root is cupy/_core/include/cupy/_cccl/libcudacxx
    return (f"cccl {_file_digest(root / 'cuda' / 'std' / '__cccl' / 'version.h')}"
            f"|cupy {_file_digest(cupy_version)}")
