"""Compiling many modules at once: ``compile_modules``, in worker processes.

NVRTC runs one compile per call, on one core, and CuPy's binding holds the GIL while it runs, so threads compile
one after the other. Worker processes do not: each compiles its share, publishes the result to the disk cache
exactly as an in-process compile would (same key, same atomic publish, same lock), and sends it back; the parent
then keeps it in its memory cache. A module that is already cached is never sent to a worker.

Workers are forked from a fork server (a clean process that imports only cujit), never from the caller itself,
which may hold CUDA contexts and threads that a fork must not copy. Each task carries the caller's ``CUJIT_*``
variables, so a worker uses the same cache folder and settings even when they changed after the server started.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from . import cache, config, driver, toolchain
from .compile import Compiled
from .errors import CujitError

if TYPE_CHECKING:
    import multiprocessing.context

    from .module import JitModule

__all__ = ["CompileResult", "compile_modules", "compile_pairs"]


class CompileResult(NamedTuple):
    """What happened to one (module, arch): its compiled form or its error, whether NVRTC ran, and how long."""

    module: JitModule
    arch: str
    compiled: Compiled | None
    error: CujitError | None
    compiled_now: bool
    seconds: float


def compile_modules(
    modules: Iterable[JitModule], arch: str | Sequence[str] | None = None, jobs: int | None = None
) -> list[Compiled]:
    """Compile ``modules`` (or fetch them from the cache) for ``arch``, several at a time, in worker processes.

    Use it where a program knows the modules it will need (a server warming up, an image being built): forty
    instantiations that take a second each are compiled in about forty seconds divided by the number of cores.
    Afterwards every module's first launch finds its kernels compiled. Needs no GPU when ``arch`` is given. As
    with any use of multiprocessing, a script that calls it should do so under ``if __name__ == "__main__":``
    (the workers import the script's main module, as multiprocessing's spawn and forkserver methods do).

    Args:
        modules: :class:`JitModule` objects, from ``load_jit``.
        arch: one arch (``"sm_90"``) or several; default: the current GPU's, else ``CUJIT_DEFAULT_ARCH``.
        jobs: the most worker processes to run at once; default: the cores this process may use. ``1`` compiles
            in this process, one module after the other.

    Returns:
        The compiled modules, in the order of ``modules`` (for several archs: each module's archs in turn).

    Raises:
        CompileError: a module did not compile; the others were compiled and cached all the same.
        TypeError, ValueError: a module is not a JitModule, or ``arch`` / ``jobs`` is malformed.
    """
    from .module import JitModule

    items = list(modules)
    for item in items:
        if not isinstance(item, JitModule):
            raise TypeError(f"compile_modules: expected JitModule objects, got {type(item).__name__}")
    archs = _archs(arch)
    results = compile_pairs([(m, a) for m in items for a in archs], jobs)
    for result in results:
        if result.error is not None:
            raise result.error
    return [r.compiled for r in results if r.compiled is not None]


def compile_pairs(
    pairs: Sequence[tuple[JitModule, str]],
    jobs: int | None = None,
    on_done: Callable[[CompileResult], None] | None = None,
) -> list[CompileResult]:
    """Compile every (module, arch) of ``pairs``, in parallel where that helps; never raises a CompileError.

    ``on_done`` is called in this process as each one finishes (in the order they finish). The results come back
    in the order of ``pairs``.
    """
    jobs = _jobs(jobs)
    results: list[CompileResult | None] = [None] * len(pairs)
    pending: list[int] = []
    for index, (module, arch) in enumerate(pairs):
        start = time.perf_counter()
        if cache.lookup(module.sources, arch) is not None:
            # Now in the memory layer: compile() only binds it to the module.
            compiled = module.compile(arch)
            results[index] = _done(CompileResult(module, arch, compiled, None, False, time.perf_counter() - start),
                                   on_done)
        else:
            pending.append(index)
    if len(pending) <= 1 or jobs == 1 or config.offline():
        for index in pending:
            results[index] = _done(_compile_here(*pairs[index]), on_done)
    else:
        _compile_in_workers(pairs, pending, min(jobs, len(pending)), results, on_done)
    return [r for r in results if r is not None]


def _done(result: CompileResult, on_done: Callable[[CompileResult], None] | None) -> CompileResult:
    if on_done is not None:
        on_done(result)
    return result


def _compile_here(module: JitModule, arch: str) -> CompileResult:
    start = time.perf_counter()
    before = cache.cache_stats()["compiles"]
    try:
        compiled = module.compile(arch)
    except CujitError as exc:
        return CompileResult(module, arch, None, exc, True, time.perf_counter() - start)
    now = cache.cache_stats()["compiles"] > before
    return CompileResult(module, arch, compiled, None, now, time.perf_counter() - start)


def _compile_in_workers(
    pairs: Sequence[tuple[JitModule, str]],
    pending: list[int],
    jobs: int,
    results: list[CompileResult | None],
    on_done: Callable[[CompileResult], None] | None,
) -> None:
    import concurrent.futures  # here, not at the top: `import cujit` should not pay for multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    from . import worker  # only here: the parent needs its name, the workers its code

    # The workers compile with this process's NVRTC, not with whatever a fresh process would pick: the fork server
    # loads NVRTC when it starts, so CUJIT_NVRTC is in the environment it starts with, and in each job's settings.
    pin = toolchain.nvrtc_environment()
    environ = {**{k: v for k, v in os.environ.items() if k.startswith("CUJIT_")}, **pin}
    started = {}
    with config.environment(pin), \
            concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=_context()) as pool:
        futures = {}
        # Modules that start with the same files, flags and arch next to each other: a worker that compiles two of
        # them in a row reuses the first one's precompiled headers.
        for index in sorted(pending, key=lambda i: _prefix(pairs[i])):
            module, arch = pairs[index]
            futures[pool.submit(worker.compile_one, module.sources, arch, environ)] = index
            started[index] = time.perf_counter()
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            module, arch = pairs[index]
            try:
                key, compiled, compiled_now, seconds = future.result()
            except CujitError as exc:
                result = CompileResult(module, arch, None, exc, True, time.perf_counter() - started[index])
            except BrokenProcessPool as exc:
                error = CujitError(f"compile_modules: the worker compiling {module.name} for {arch} died ({exc}); "
                                   "compile it alone with module.compile(arch) to see why")
                result = CompileResult(module, arch, None, error, True, time.perf_counter() - started[index])
            else:
                cache.remember(key, compiled)
                result = CompileResult(module, arch, module.compile(arch), None, compiled_now, seconds)
            results[index] = _done(result, on_done)


def _prefix(pair: tuple[JitModule, str]) -> tuple[str, ...]:
    sources = pair[0].sources
    return (*map(str, sources.files), *sources.extra_cflags, pair[1])


def _context() -> multiprocessing.context.BaseContext:
    import multiprocessing

    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # The server imports the worker (and so loads NVRTC) once; every worker forked from it starts with both.
        ctx.set_forkserver_preload([f"{__package__}._forkserver"])
        return ctx
    return multiprocessing.get_context("spawn")


def _jobs(jobs: int | None) -> int:
    if jobs is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"compile_modules: jobs must be an int, got {type(jobs).__name__}")
    if jobs < 1:
        raise ValueError(f"compile_modules: jobs: expected a positive number of processes, got {jobs}")
    return jobs


def _archs(arch: str | Sequence[str] | None) -> list[str]:
    if arch is None:
        return [driver.default_arch()]
    if isinstance(arch, str):
        return [config.check_arch(arch)]
    archs = [config.check_arch(a) for a in arch]
    if not archs:
        raise ValueError("compile_modules: arch: expected at least one arch, got none")
    return list(dict.fromkeys(archs))
