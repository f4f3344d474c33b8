"""The ``.clangd`` file that lets clangd parse cujit's ``.cuh`` files as CUDA, as NVRTC will compile them.

clang's CUDA mode wants more than NVRTC does, and the NVIDIA wheels are laid out differently from a toolkit:

* ``--cuda-path`` must name a folder holding both ``include/`` and ``bin/``, or clang reports "cannot find CUDA
  installation". The cudart wheel has only ``include/`` and ``lib/``, so cujit builds a small stand-in root
  under the cache folder: an ``include`` link to the real headers and an empty ``bin/``.
* clang's CUDA wrapper headers include ``crt/host_defines.h``, ``crt/host_config.h`` and friends. A toolkit keeps
  them in ``include/crt``; the CUDA 12 wheels ship them with nvcc (``nvidia-cuda-nvcc-cu12``), so that folder is
  added with ``-I``.

A system toolkit found by guessing (``/usr/local/cuda*``) is never used: its version need not match the headers
that NVRTC compiles with. Only the headers' own folder, the nvcc wheel next to them, ``cuda.pathfinder``'s
wheel, conda and ``CUDA_PATH`` answers, and ``CUDA_PATH`` / ``CUDA_HOME`` are considered.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from .._runtime import config, headers, toolchain
from .._runtime.errors import CujitError

__all__ = ["clangd_config", "clangd_flags", "crt_include_dir", "cuda_root_for_clang"]


def clangd_flags(arch: str) -> list[str]:
    """The compile flags clangd needs: CUDA mode, the arch, C++17, and cujit's and CUDA's include folders.

    Raises:
        CujitError: the CUDA headers or the ``crt/`` headers of the CUDA compiler cannot be found.
    """
    cuda_include = toolchain.cuda_include_dir()
    crt_include = crt_include_dir(cuda_include)
    flags = [
        "-xcuda",
        f"--cuda-gpu-arch={_clang_arch(arch)}",
        "-std=c++17",
        f"--cuda-path={cuda_root_for_clang(cuda_include)}",
        # Headers from wheels come without libdevice or a version file; clangd only parses, it never links.
        "-nocudalib",
        "--no-cuda-version-check",
        f"-I{toolchain.cujit_include_dir()}",
        # The real folder first, so that go-to-definition opens the headers where they live, not through the link.
        f"-I{cuda_include}",
    ]
    if crt_include != cuda_include:
        flags.append(f"-I{crt_include}")
    cccl = toolchain.cccl_include_dir()
    if cccl is not None:
        flags.append(f"-I{cccl}")
    # CUB and thrust, as NVRTC gets them. The standard-header stand-ins are NVRTC's alone: clang has the real ones.
    flags += [f"-I{p}" for p in headers.cccl_extra_dirs()]
    return flags


def clangd_config(arch: str, extra_include_paths: list[Path] | None = None) -> str:
    """The text of a ``.clangd`` file for CUDA sources (``.cu``, ``.cuh``)."""
    flags = clangd_flags(arch) + [f"-I{p}" for p in extra_include_paths or []]
    lines = [
        "# Written by `python -m cujit`: clangd settings for CUDA kernels compiled at run time by cujit.",
        "# Regenerate after moving the virtual environment, changing the GPU arch or deleting the cujit cache",
        "# folder (the --cuda-path below lives there).",
        "If:",
        "  PathMatch: [.*\\.cuh, .*\\.cu]",
        "CompileFlags:",
        "  Add:",
        *(f"    - {_quote(f)}" for f in flags),
        "  Compiler: clang++",
        "",
    ]
    return "\n".join(lines)


def _clang_arch(arch: str) -> str:
    """``sm_90``, ``sm_90a`` or ``compute_90`` as clang's ``--cuda-gpu-arch`` spells it."""
    value = config.check_arch(arch)
    value = value.replace("compute_", "sm_")
    # clang knows the arch-specific "a" targets but not NVCC's family-specific "f" ones; parsing is the same.
    return value[:-1] if value.endswith("f") else value


def crt_include_dir(cuda_include: Path) -> Path:
    """The folder whose ``crt/`` holds ``host_defines.h`` and friends, which clang's CUDA mode includes.

    Raises:
        CujitError: no candidate has them; the message says what to install.
    """
    found = headers.find_crt_dir(cuda_include)
    if found is not None:
        return found
    version = _cuda_version(cuda_include)
    pin = f"=={version[0]}.{version[1]}.*" if version else ""
    wheel = f"nvidia-cuda-nvcc-cu12{pin}" if version is None or version[0] == 12 else f"cuda-toolkit[nvcc]{pin}"
    raise CujitError(
        f"clangd needs the CUDA compiler headers (crt/host_defines.h), which are not next to the CUDA headers in "
        f"{cuda_include}: pip install \"{wheel}\" (the nvcc wheel ships them for CUDA 12; match the version of "
        "your CUDA headers), or set CUDA_PATH to a CUDA toolkit"
    )


def _cuda_version(cuda_include: Path) -> tuple[int, int] | None:
    """(major, minor) from ``CUDART_VERSION`` in ``cuda_runtime_api.h``, or None."""
    try:
        text = (cuda_include / "cuda_runtime_api.h").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", text)
    if match is None:
        return None
    number = int(match.group(1))
    return number // 1000, number % 1000 // 10


def cuda_root_for_clang(cuda_include: Path) -> Path:
    """A folder that clang accepts as ``--cuda-path`` (it needs ``include/`` and ``bin/``) for ``cuda_include``.

    A toolkit's own root is used as it is. For wheels, a stand-in root is made (once) in the cujit cache folder:
    ``clangd/cuda-<digest>/include`` links to ``cuda_include`` and ``bin/`` is empty.
    """
    parent = cuda_include.parent
    if cuda_include.name == "include" and (parent / "bin").is_dir():
        return parent
    digest = hashlib.sha256(str(cuda_include).encode()).hexdigest()[:16]
    root = config.cache_dir() / "clangd" / f"cuda-{digest}"
    if _is_shim(root, cuda_include):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Build it under a temporary name and rename, so that a concurrent run never sees half a shim.
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp.", dir=root.parent))
        try:
            (staging / "bin").mkdir()
            (staging / "include").symlink_to(cuda_include, target_is_directory=True)
            if root.exists() or root.is_symlink():
                if _is_shim(root, cuda_include):  # another process won the race
                    return root
                _remove(root)
            try:
                os.replace(staging, root)
            except OSError:
                if not _is_shim(root, cuda_include):
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise CujitError(
            f"could not create the CUDA root for clangd in {root} ({exc}); set CUJIT_CACHE_DIR to a writable folder"
        ) from exc
    return root


def _is_shim(root: Path, cuda_include: Path) -> bool:
    link = root / "include"
    try:
        return (root / "bin").is_dir() and link.is_symlink() and link.readlink() == cuda_include
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)  # does not follow the include link, so the real headers are safe


def _quote(flag: str) -> str:
    return f'"{flag}"' if any(c in flag for c in ' :#"') else flag
