"""Which CUDA release compiles: the NVRTC library cujit uses, chosen by one rule, and the driver that loads its output.

The rule, in order:

0. ``CUJIT_NVRTC``, where set, names the library, and nothing else is considered. cujit sets it for the processes it
   starts (compile workers, the compile server), so that they compile with the NVRTC of the process that started
   them, whatever a fresh process would pick.
1. Where CuPy's binding is in use already, its library is the one (a second NVRTC cannot be handed to it). Where
   a library of a newer CUDA major version than the one rule 2 picks is loaded (torch's CUDA build links its own),
   CuPy's binding would take that one, so it is the one. An older one that is loaded does not count: torch 2.11
   and later, installed beside the ``-cu12`` wheels, load both ``libnvrtc.so.13`` and ``libnvrtc.so.12`` at
   import, and CuPy's binding asks for ``.so.13`` first.
2. Otherwise, among the NVRTC libraries installed (NVIDIA's wheels on ``sys.path``, ``CONDA_PREFIX``,
   ``CUDA_PATH``, ``CUDA_HOME``, ``/usr/local/cuda``), those the driver can use (the release's major version not
   above the driver's; any when no driver is present, e.g. compiling for an explicit arch on a build machine),
   newest release first. cujit loads that library itself before CuPy's binding looks, so the choice never
   depends on the order in which a third-party finder searches.
3. The CUDA headers are always of NVRTC's own release (``toolchain.cuda_include_dir``).
4. Before code is built for a GPU, the driver must accept NVRTC's release: a cubin of a newer major version than
   the driver's is never built (``check_driver``).

Nothing here needs a GPU; the driver's version is read with ``cuDriverGetVersion``, which needs no context.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from . import config
from .errors import CujitError

__all__ = ["LOADED", "PINNED", "NvrtcLibrary", "check_driver", "choose_nvrtc", "chosen", "driver_version",
           "installed_nvrtc", "library_version", "loaded_nvrtc", "nvrtc_paths_in_maps", "preload_chosen"]

_BUILTINS = re.compile(r"libnvrtc-builtins\.so\.(\d+)\.(\d+)$")
_VERSIONED = re.compile(r"libnvrtc\.so\.(\d+)\.(\d+)")
_SONAME = re.compile(r"libnvrtc\.so\.(\d+)$")
# Where NVIDIA's wheels put libnvrtc, relative to a site-packages folder, newest layout first: one folder per
# major version from CUDA 13 on, a per-component folder for CUDA 12.
_WHEEL_LIB_DIRS = ("nvidia/cu[0-9]*/lib", "nvidia/cuda_nvrtc/lib")
LOADED = "already loaded in this process"
PINNED = "CUJIT_NVRTC"
# The oldest driver of each CUDA major version (Linux), for messages.
_DRIVER_FLOOR = {12: "525", 13: "580"}


class NvrtcLibrary(NamedTuple):
    """One libnvrtc on this machine: its file, its CUDA (major, minor) release and where it was found."""

    path: Path
    version: tuple[int, int] | None
    origin: str

    def describe(self) -> str:
        """``NVRTC 13.0 in /path (origin)`` for messages."""
        release = "NVRTC of unknown version" if self.version is None else "NVRTC {}.{}".format(*self.version)
        return f"{release} in {self.path} ({self.origin})"


def library_version(path: Path) -> tuple[int, int] | None:
    """The release of a libnvrtc file: from its own versioned name, else from ``libnvrtc-builtins.so.X.Y`` beside it.

    Every NVIDIA package ships the builtins library next to libnvrtc under its exact major.minor name; the wheels
    name libnvrtc itself by major version only.
    """
    real = Path(os.path.realpath(path))
    for name in (real.name, path.name):
        match = _VERSIONED.match(name)
        if match:
            return int(match.group(1)), int(match.group(2))
    try:
        names = sorted((item.name for item in real.parent.iterdir()), reverse=True)
    except OSError:
        return None
    major = _SONAME.match(path.name)
    for name in names:
        found = _BUILTINS.match(name)
        if found and (major is None or found.group(1) == major.group(1)):
            return int(found.group(1)), int(found.group(2))
    return None


def _library_folders(search_path: Sequence[str]) -> Iterable[tuple[Path, str]]:
    for entry in search_path:
        site = Path(entry or ".")
        for pattern in _WHEEL_LIB_DIRS:
            for folder in sorted(site.glob(pattern), reverse=True):
                yield folder, "an NVIDIA wheel"
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        yield Path(conda) / "lib", "CONDA_PREFIX"
    for var in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(var)
        if root:
            yield Path(root) / "lib64", var
            yield Path(root) / "lib", var
    yield Path("/usr/local/cuda/lib64"), "the system toolkit"


def installed_nvrtc(search_path: Sequence[str] | None = None) -> list[NvrtcLibrary]:
    """Every libnvrtc in the usual places, in search order, each once (by real path), with its release."""
    out: list[NvrtcLibrary] = []
    seen: set[str] = set()
    for folder, origin in _library_folders(sys.path if search_path is None else search_path):
        try:
            names = sorted((item.name for item in folder.iterdir()), reverse=True)
        except OSError:
            continue
        for name in names:
            if not _SONAME.match(name):
                continue
            path = folder / name
            real = os.path.realpath(path)
            if real in seen or not Path(real).is_file():
                continue
            seen.add(real)
            out.append(NvrtcLibrary(Path(os.path.abspath(path)), library_version(path), origin))
    return out


def nvrtc_paths_in_maps(data: str) -> list[str]:
    """The libnvrtc files named in the text of a ``/proc/PID/maps``, each once, in order of first mapping.

    A path is the rest of its line and may hold spaces. A torch process maps hundreds of files: each line is found
    from the name (a regular expression over the whole map took ten times as long, ~1 ms on a small host).
    """
    paths: dict[str, None] = {}
    at = data.find("libnvrtc.so")
    while at >= 0:
        start, end = data.rfind("\n", 0, at) + 1, data.find("\n", at)
        end = len(data) if end < 0 else end
        line = data[start:end]
        path = line[line.find("/"):] if "/" in line else ""
        if path.rpartition("/")[2].startswith("libnvrtc.so"):
            paths[path] = None
        at = data.find("libnvrtc.so", end)
    return list(paths)


def loaded_nvrtc() -> list[NvrtcLibrary]:
    """The libnvrtc files this process has loaded already (Linux: ``/proc/self/maps``), newest major first.

    That is the order in which ``cuda.pathfinder`` asks the loader for one, so the first is what CuPy's binding
    takes.
    """
    try:
        data = Path("/proc/self/maps").read_text(errors="surrogateescape")
    except OSError:
        return []
    found = [NvrtcLibrary(Path(p), library_version(Path(p)), LOADED) for p in nvrtc_paths_in_maps(data)]
    return sorted(found, key=lambda lib: -(lib.version or (0, 0))[0])


def choose_nvrtc(installed: Sequence[NvrtcLibrary], loaded: Sequence[NvrtcLibrary],
                 driver: tuple[int, int] | None) -> NvrtcLibrary:
    """The rule (see the module's docstring) as a pure function. Raises ``CujitError`` when nothing is usable.

    ``loaded`` is newest major version first: CuPy's binding asks the loader for ``libnvrtc.so.13`` before
    ``libnvrtc.so.12``, so of what is loaded it takes the first; a library that cujit loads (the newest usable
    installed) comes before an older loaded one, and after a newer one.
    """
    known = [lib for lib in installed if lib.version is not None]
    usable = [lib for lib in known if driver is None or (lib.version is not None and lib.version[0] <= driver[0])]
    best = None
    if usable:
        newest = max(lib.version for lib in usable if lib.version is not None)
        best = next(lib for lib in usable if lib.version == newest)
    if loaded:
        first = loaded[0]
        # The loaded library of the same major version is the one the loader hands out for that soname.
        if best is None or best.version is None or first.version is None or first.version[0] >= best.version[0]:
            return first
    if best is not None:
        return best
    if installed and not known:
        return installed[0]  # versions unreadable: the first found, as the loader would have it; checked later
    raise CujitError(_nothing_usable(installed, driver))


def _nothing_usable(installed: Sequence[NvrtcLibrary], driver: tuple[int, int] | None) -> str:
    got = "; ".join(lib.describe() for lib in installed) or (
        "no libnvrtc (looked at the NVIDIA wheels on sys.path, CONDA_PREFIX, CUDA_PATH, CUDA_HOME and "
        "/usr/local/cuda)")
    if driver is None or not installed:
        fix = "pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12"
    else:
        fix = ("pip install 'nvidia-cuda-nvrtc-cu12' 'nvidia-cuda-runtime-cu12' (CUDA 12 code, which this driver "
               "loads), or update the NVIDIA driver")
    return f"no NVRTC that this machine can use ({_driver_text(driver)}): found {got}. Fix: {fix}"


def _driver_text(driver: tuple[int, int] | None) -> str:
    return "no driver: compile-only" if driver is None else "a driver for CUDA {}.{}".format(*driver)


# ---------------------------------------------------------------------------------------------------- driver
@functools.cache
def driver_version() -> tuple[int, int] | None:
    """The CUDA (major, minor) the installed driver supports, or None without a driver. Needs no GPU context."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    value = ctypes.c_int(0)
    try:
        status = libcuda.cuDriverGetVersion(ctypes.byref(value))
    except AttributeError:
        return None
    if status != 0 or value.value <= 0:
        return None
    return value.value // 1000, (value.value % 1000) // 10


def check_driver(nvrtc_version: tuple[int, int], driver: tuple[int, int] | None) -> None:
    """Raise ``CujitError`` when the driver cannot load cubins of NVRTC's release (a newer major version).

    Within one major version a driver loads cubins of any minor release (CUDA's minor version compatibility), so
    only the major versions are compared. No driver: nothing is loaded, nothing to check.
    """
    if driver is None or nvrtc_version[0] <= driver[0]:
        return
    major = nvrtc_version[0]
    floor = _DRIVER_FLOOR.get(major, "a newer one")
    raise CujitError(
        f"NVRTC {major}.{nvrtc_version[1]} ({chosen().describe()}) builds CUDA {major} code, which the installed "
        f"driver (CUDA {driver[0]}.{driver[1]}) cannot load. Fix: update the NVIDIA driver to {floor} or newer. "
        f"Where NVRTC was loaded by torch, a torch built for CUDA {driver[0]} is the other way out; otherwise "
        f"pip install 'nvidia-cuda-nvrtc-cu{driver[0]}' 'nvidia-cuda-runtime-cu{driver[0]}' gives cujit a CUDA "
        f"{driver[0]} NVRTC. `python -m cujit doctor` shows what is installed."
    )


# ---------------------------------------------------------------------------------------------------- loading
@functools.cache
def chosen() -> NvrtcLibrary:
    """The NVRTC library the rule picks in this process (what is loaded, or what :func:`preload_chosen` loads)."""
    named = config.nvrtc_path()
    if named is not None:
        library = NvrtcLibrary(named, library_version(named), PINNED)
        loaded = loaded_nvrtc()
        # CuPy's binding takes the first loaded (newest major) over the named one where its major is newer.
        first = loaded[0].version if loaded else None
        if first is not None and library.version is not None and first[0] > library.version[0]:
            raise CujitError(
                f"CUJIT_NVRTC names {library.describe()}, but this process has loaded {loaded[0].describe()} "
                "already (torch's CUDA build loads its own at import), and CuPy's binding would take that one. "
                "Fix: unset CUJIT_NVRTC, or name an NVRTC of the same CUDA major version."
            )
        return library
    return choose_nvrtc(installed_nvrtc(), loaded_nvrtc(), driver_version())


def preload_chosen() -> NvrtcLibrary:
    """Load the chosen libnvrtc (if the process holds none yet), so that CuPy's binding takes exactly that one."""
    library = chosen()
    if library.origin == LOADED:
        return library
    builtins = [p for p in library.path.parent.glob("libnvrtc-builtins.so.*") if _BUILTINS.match(p.name)]
    try:
        for path in builtins:  # the loader of some wheels does not find them beside libnvrtc by itself
            ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
        ctypes.CDLL(str(library.path), mode=os.RTLD_GLOBAL)
    except OSError as exc:
        raise CujitError(f"{library.describe()} could not be loaded: {exc}") from exc
    return library
