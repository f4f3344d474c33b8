"""The compile worker of ``compile_modules``: what runs in the worker processes.

Only worker processes import it: the fork server imports it once (``set_forkserver_preload``) and
:func:`preload` loads NVRTC there, so every worker forked from the server starts with the compiler loaded instead of
loading it again (a third of a second each). Each worker lets NVRTC keep precompiled headers (see
``headers.use_pch``), so the second and later instantiations of a kernel file that a worker compiles skip the
parsing of its headers: three to five times faster for kernels that include CUB.
"""

from __future__ import annotations

import multiprocessing.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import cache, headers, toolchain
from .compile import Compiled, SourceSet
from .errors import CujitError

__all__ = ["compile_one", "preload"]


def preload() -> None:
    """Load NVRTC now; a failure is left to the compile that needs it, which reports it the same way."""
    try:
        toolchain.load_nvrtc()
    except CujitError:
        pass


_PCH_STARTED: list[bool] = []


def _start_pch() -> None:
    """Once per worker: a private folder for NVRTC's precompiled headers, removed when the worker exits."""
    if _PCH_STARTED:
        return
    _PCH_STARTED.append(True)
    folder = tempfile.mkdtemp(prefix="cujit-pch-")
    # Workers end through multiprocessing, which runs its finalizers but not atexit handlers.
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(folder, True), exitpriority=0)
    headers.use_pch(Path(folder))


def compile_one(sources: SourceSet, arch: str, environ: dict[str, str]) -> tuple[str, Compiled, bool, float]:
    """Compile ``sources`` for ``arch`` through the cache, with the caller's ``CUJIT_*`` settings.

    Returns the cache key, the compiled module, whether NVRTC ran (rather than a cache hit) and the seconds taken.
    """
    _start_pch()
    for name in [k for k in os.environ if k.startswith("CUJIT_") and k not in environ]:
        del os.environ[name]
    os.environ.update(environ)
    start = time.perf_counter()
    before = cache.cache_stats()["compiles"]
    key, compiled = cache.get_or_compile(sources, arch)
    return key, compiled, cache.cache_stats()["compiles"] > before, time.perf_counter() - start
