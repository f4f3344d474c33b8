"""Where the compiler and the headers come from: NVRTC through CuPy, CUDA headers from wheels or CUDA_PATH.

Everything here is looked up once per process and memoised; none of it needs a GPU or a driver.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from .errors import CujitError

__all__ = ["cccl_include_dir", "cuda_include_dir", "cujit_include_dir", "kernels_dir", "nvrtc", "nvrtc_version"]

_PACKAGE = Path(__file__).resolve().parent.parent


def cujit_include_dir() -> Path:
    """``cujit/include``: the folder that makes ``#include <cujit/...>`` work."""
    return _PACKAGE / "include"


def kernels_dir() -> Path:
    """``cujit/kernels``: where relative ``cuda_files`` are looked up."""
    return _PACKAGE / "kernels"


@functools.cache
def nvrtc() -> Any:
    """CuPy's NVRTC binding (``cupy_backends.cuda.libs.nvrtc``): compiles with no GPU and no driver."""
    try:
        from cupy_backends.cuda.libs import nvrtc as binding
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise CujitError(
            "cujit needs CuPy for NVRTC: pip install cupy-cuda12x (or cupy-cuda13x for CUDA 13)"
        ) from exc
    return binding


@functools.cache
def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor) version; loading the library is the first thing that can fail."""
    try:
        major, minor = nvrtc().getVersion()
    except Exception as exc:  # CuPy raises several types when libnvrtc is missing
        raise CujitError(
            "NVRTC could not be loaded: install the NVRTC wheel that matches your CuPy "
            "(pip install 'cuda-toolkit[nvrtc,cudart]==12.*' for cupy-cuda12x, ==13.* for cupy-cuda13x) "
            f"or point CUDA_PATH at a CUDA toolkit; the loader said: {exc}"
        ) from exc
    return int(major), int(minor)


@functools.cache
def cuda_include_dir() -> Path:
    """The folder holding ``cuda_runtime.h``, ``cuda_fp16.h`` and friends.

    Looked up with ``cuda.pathfinder`` (the installed NVIDIA wheels, then conda, then ``CUDA_PATH`` /
    ``CUDA_HOME``), then in ``CUDA_PATH`` / ``CUDA_HOME`` directly.
    """
    candidates: list[Path] = []
    try:
        from cuda import pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            candidates.append(Path(found))
    except (ImportError, AttributeError, RuntimeError):
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(var)
        if root:
            candidates.append(Path(root) / "include")
    for path in candidates:
        if (path / "cuda_runtime.h").is_file():
            return path
    raise CujitError(
        "the CUDA headers (cuda_runtime.h) were not found: install them with "
        "pip install 'cuda-toolkit[nvrtc,cudart]==12.*' (==13.* for CUDA 13) or set CUDA_PATH to a CUDA toolkit"
    )


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
def cuda_headers_identity() -> str:
    """A short identity of the CUDA headers in use: their folder and the size and time of two key files."""
    root = cuda_include_dir()
    parts = [str(root)]
    for name in ("cuda.h", "cuda_runtime_api.h"):
        try:
            st = (root / name).stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:missing")
    return "|".join(parts)


@functools.cache
def cccl_identity() -> str:
    """A short identity of CuPy's libcu++ copy (``cuda/std/...``): its folder and the times of its top folders."""
    root = cccl_include_dir()
    if root is None:
        return "none"
    parts = [str(root)]
    for sub in ("cuda", "cuda/std", "nv"):
        try:
            parts.append(f"{sub}:{(root / sub).stat().st_mtime_ns}")
        except OSError:
            parts.append(f"{sub}:missing")
    return "|".join(parts)
