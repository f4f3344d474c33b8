"""Shared fixtures: a fresh cache folder per test, and the GPU marker that skips with a reason."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from tests.stub_cuda import StubBackend


def trapped_launch(setup: str, launch: str) -> str:
    """Run a launch that faults in a fresh process (a fault ends its CUDA context) and return what it printed.

    ``setup`` defines ``m`` (a module); ``launch`` launches the faulting kernel. The process then calls
    ``cujit.device_check()`` and prints ``LAUNCH_ERROR <message>`` for the LaunchError it raises.
    """
    code = "import cujit, torch\n" + textwrap.dedent(setup) + "\n" + textwrap.dedent(launch) + textwrap.dedent("""
        try:
            cujit.device_check()
        except cujit.LaunchError as e:
            print("LAUNCH_ERROR", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout + "\n--- stderr ---\n" + out.stderr[-2000:]


@functools.cache
def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_configure(config: pytest.Config) -> None:
    """The processes the tests start compile with the test process's NVRTC, as cujit's own workers do.

    A fresh process applies the rule by itself and can pick another installed NVRTC than this one (which may have
    been loaded by torch, or by CuPy for its own kernels, before cujit looked); tests that compare a child's cache
    keys or toolchain with this process's would then compare two toolchains. Tests of the rule itself unset it.
    """
    import os

    if "CUJIT_NVRTC" not in os.environ:
        from cujit._runtime import toolchain

        os.environ.update(toolchain.nvrtc_environment())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    count = gpu_count()
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        need = marker.kwargs.get("count", 1)
        if count < need:
            reason = "no CUDA GPU is visible" if count == 0 else f"needs {need} GPUs, {count} visible"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own cache folder and starts with an empty in-memory cache."""
    from cujit._runtime import cache

    folder = tmp_path_factory.mktemp("cache")
    folder.chmod(0o700)
    monkeypatch.setenv("CUJIT_CACHE_DIR", str(folder / "cujit"))
    monkeypatch.setenv("CUJIT_COMPILE_SERVER", "0")  # no test leaves a server behind; the server's tests start one
    for var in ("CUJIT_OFFLINE", "CUJIT_DISK_CACHE", "CUJIT_DUMP_SOURCE", "CUJIT_DEFAULT_ARCH", "CUJIT_CACHE_LAYERS"):
        monkeypatch.delenv(var, raising=False)
    cache.clear_memory()


@pytest.fixture
def stub() -> Iterator[StubBackend]:
    """The stand-in CUDA driver (tests/stub_cuda.py) for one test; imports torch, so only where it is used."""
    from tests.stub_cuda import stub_backend

    with stub_backend() as backend:
        yield backend


def rotate_in_place(part: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> None:
    """The reference rotary embedding of ``part`` [..., rotary_dim] in place, from ``cos, sin`` [..., rotary_dim / 2].

    Neox style rotates the two halves against each other, GPT-J style each even value with the odd one after it;
    the arithmetic is done in ``part``'s dtype (the tests pass float32 or float64).
    """
    half = part.shape[-1] // 2
    if is_neox:
        a, b = part[..., :half].clone(), part[..., half:].clone()
        part[..., :half], part[..., half:] = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = part[..., 0::2].clone(), part[..., 1::2].clone()
        part[..., 0::2], part[..., 1::2] = a * cos - b * sin, b * cos + a * sin
