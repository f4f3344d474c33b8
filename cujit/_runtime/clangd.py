"""The ``.clangd`` file that lets clangd parse cujit's ``.cuh`` files as CUDA, as NVRTC will compile them."""

from __future__ import annotations

from pathlib import Path

from . import toolchain

__all__ = ["clangd_config", "clangd_flags"]


def clangd_flags(arch: str) -> list[str]:
    """The compile flags clangd needs: CUDA mode, the arch, C++17, and cujit's and CUDA's include folders."""
    cuda_include = toolchain.cuda_include_dir()
    flags = [
        "-xcuda",
        f"--cuda-gpu-arch={arch.replace('compute_', 'sm_')}",
        "-std=c++17",
        # The CUDA headers come from a wheel, not a full toolkit: no libdevice and no version file to check.
        f"--cuda-path={cuda_include.parent}",
        "-nocudalib",
        "--no-cuda-version-check",
        f"-I{toolchain.cujit_include_dir()}",
        f"-I{cuda_include}",
    ]
    cccl = toolchain.cccl_include_dir()
    if cccl is not None:
        flags.append(f"-I{cccl}")
    return flags


def clangd_config(arch: str, extra_include_paths: list[Path] | None = None) -> str:
    """The text of a ``.clangd`` file for CUDA sources (``.cu``, ``.cuh``)."""
    flags = clangd_flags(arch) + [f"-I{p}" for p in extra_include_paths or []]
    lines = [
        "# Written by `python -m cujit`: clangd settings for CUDA kernels compiled at run time by cujit.",
        "# Regenerate after moving the virtual environment or changing the GPU arch.",
        "If:",
        "  PathMatch: [.*\\.cuh, .*\\.cu]",
        "CompileFlags:",
        "  Add:",
        *(f"    - {_quote(f)}" for f in flags),
        "  Compiler: clang++",
        "",
    ]
    return "\n".join(lines)


def _quote(flag: str) -> str:
    return f'"{flag}"' if any(c in flag for c in ' :#"') else flag
