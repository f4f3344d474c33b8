"""``load_jit``, ``JitModule`` and ``Kernel``: a module's sources, its compiled forms per arch, its kernels per device.

Ownership runs one way: a :class:`JitModule` compiles (through the cache) and loads its cubin on a device; each of
its :class:`Kernel` objects asks it for its function handle there and keeps a ``LoadedKernel`` per device; the
kernel generates its own launcher on its first launch. Locks are per module and per kernel: NVRTC never runs
under a process-wide lock, so threads compiling unrelated modules do not wait for each other.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cache, config, driver, toolchain
from .compile import Compiled, SourceSet
from .errors import CujitError, LaunchError
from .launch import LoadedKernel, check_args, make_launcher
from .signature import Param

__all__ = ["JitModule", "Kernel", "load_jit"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")

# Per driver backend, (cache key, device) -> (context, {expression: function handle}): equal modules share one
# load per device.
_LOADED_GUARD = threading.Lock()  # guards the lock table only; loading happens under a per-entry lock
_LOAD_LOCKS: dict[tuple[str, int], threading.Lock] = {}


def _load_lock(key: tuple[str, int]) -> threading.Lock:
    with _LOADED_GUARD:
        return _LOAD_LOCKS.setdefault(key, threading.Lock())


class Kernel:
    """One ``__global__`` function of a module; launch it with :class:`~cujit.LaunchKernel` or :meth:`launch`."""

    def __init__(self, module: JitModule, name: str, expression: str) -> None:
        self.module = module
        self.name = name
        self.expression = expression
        self._table: dict[int, LoadedKernel] = {}
        self._params: tuple[Param, ...] | None = None
        self._launcher: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<cujit kernel {self.name} = {self.expression} of module {self.module.name}>"

    @property
    def params(self) -> tuple[Param, ...]:
        """The kernel's parameters, read from its compiled form (compiles for the default arch if needed)."""
        if self._params is None:
            self._params = self.module.params_of(self.expression, self.module.compile())
        return self._params

    def launch(self, grid: Any, block: Any, *args: Any, shared_mem: int = 0, stream: Any = None) -> None:
        """Launch with ``args``; the same as ``LaunchKernel(grid, block, shared_mem, stream)(self, *args)``.

        ``grid`` and ``block`` are ints or tuples of up to three ints. Tensors go in as device pointers,
        scalars are packed to the kernel's parameter types.
        """
        launcher = self._launcher
        if launcher is None:
            launcher = self._make_launcher()
        launcher(grid, block, args, shared_mem, stream)

    def check_args(self, *args: Any) -> bytes:
        """Pack ``args`` as :meth:`launch` would, without a GPU; returns the packed bytes.

        Raises ``LaunchError`` for a wrong count, type or range. Tensors stand for pointers (their device is not
        checked here).
        """
        return check_args(self.expression, self.params, args)

    def on(self, device: int) -> LoadedKernel:
        """This kernel loaded on ``device`` (compiling and loading on first use)."""
        found = self._table.get(device)
        return found if found is not None else self._load(device)

    def _make_launcher(self) -> Any:
        driver.require_gpu()
        with self._lock:
            if self._launcher is None:
                self._launcher = make_launcher(self.expression, self.params, self._table, self._load)
            return self._launcher

    def _load(self, device: int) -> LoadedKernel:
        found = self._table.get(device)
        if found is not None:
            return found
        count = driver.device_count()
        if not 0 <= device < count:
            raise LaunchError(f"{self.expression}: no CUDA device {device} (this process sees {count})")
        ctx, function, params = self.module.function_on(device, self.expression)
        with self._lock:
            found = self._table.get(device)
            if found is None:
                found = self._table[device] = LoadedKernel(self.expression, device, ctx, function, params)
            return found


class JitModule:
    """A module of kernels compiled at run time; ``module.<python_name>`` is a :class:`Kernel`."""

    def __init__(self, sources: SourceSet) -> None:
        self._sources = sources
        self._compiled: dict[str, tuple[str, Compiled]] = {}
        self._lock = threading.Lock()
        self.kernels: dict[str, Kernel] = {py: Kernel(self, py, expr) for py, expr in sources.wrappers}

    @property
    def name(self) -> str:
        return self._sources.name

    @property
    def sources(self) -> SourceSet:
        return self._sources

    def __repr__(self) -> str:
        return f"<cujit JitModule {self.name}: {', '.join(self.kernels)}>"

    def __getattr__(self, name: str) -> Kernel:
        # Only reached for names that are not attributes; __dict__ is read directly so that a half-built
        # module (during unpickling, say) raises AttributeError instead of recursing.
        kernels = self.__dict__.get("kernels")
        if kernels is None:
            raise AttributeError(name)
        if name in kernels:
            return kernels[name]  # type: ignore[no-any-return]
        raise AttributeError(f"module {self.name!r} has no kernel {name!r} (its kernels: {', '.join(kernels)})")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.kernels})

    def compile(self, arch: str | None = None) -> Compiled:
        """Compile for ``arch`` (default: the current GPU's, else ``CUJIT_DEFAULT_ARCH``), or fetch it from the cache.

        Needs no GPU and no driver when ``arch`` is given.
        """
        return self._compiled_for(driver.default_arch() if arch is None else config.check_arch(arch))[1]

    def _compiled_for(self, arch: str) -> tuple[str, Compiled]:
        found = self._compiled.get(arch)
        if found is None:
            with self._lock:  # this module only: other modules compile at the same time
                found = self._compiled.get(arch)
                if found is None:
                    found = self._compiled[arch] = cache.get_or_compile(self._sources, arch)
        return found

    def cache_key(self, arch: str) -> str:
        """The cache key for ``arch`` (reads the sources and headers)."""
        return cache.cache_key(self._sources, config.check_arch(arch))

    def params_of(self, expression: str, compiled: Compiled, sizes: list[int] | None = None) -> tuple[Param, ...]:
        """The parameters of the kernel ``expression`` in ``compiled``.

        ``sizes`` from the driver fill in the size of structs passed by value, which the lowered name does not tell.
        """
        params = compiled.params.get(expression)
        if params is None:
            raise CujitError(
                f"cannot read the parameter types of {expression} from its lowered name "
                f"{compiled.lowered.get(expression)!r}; use parameters of builtin, pointer or class type"
            )
        if sizes is not None:
            if len(sizes) != len(params):
                raise CujitError(f"{expression}: the driver reports {len(sizes)} parameters, the name {len(params)}")
            params = tuple(
                Param(p.kind, s, p.cpp, p.code) if p.kind == "record" else p for p, s in zip(params, sizes, strict=True)
            )
        return params

    def function_on(self, device: int, expression: str) -> tuple[int, int, tuple[Param, ...]]:
        """(context, function handle, parameters) of one of this module's kernels on ``device``.

        Compiles for the device's arch (or takes it from the cache) and loads the cubin once per device; a first
        launch inside a CUDA graph capture works.
        """
        active = driver.backend()
        toolchain.check_driver_for_launch()
        key, compiled = self._compiled_for(active.arch_of(device))
        slot = (key, device)
        table = active.modules()
        loaded = table.get(slot)
        if loaded is None:
            with _load_lock(slot):
                loaded = table.get(slot)
                if loaded is None:
                    expressions = list(self._sources.expressions)
                    names = [compiled.lowered[e] for e in expressions]
                    with active.capture_relaxed():
                        ctx, _, handles = active.load_module(device, compiled.cubin, names)
                    loaded = table[slot] = (ctx, dict(zip(expressions, handles, strict=True)))
                    cache.count("loads")
        ctx, functions = loaded
        function = functions[expression]
        params = self.params_of(expression, compiled)
        if any(p.kind == "record" and not p.size for p in params):
            sizes = active.param_sizes(function)
            if sizes is None:
                index, record = next((i, p) for i, p in enumerate(params) if p.kind == "record")
                raise LaunchError(f"{expression}: parameter {index} ({record.cpp}) is a struct passed by value, and "
                                  "this driver does not report its size (cuFuncGetParamInfo needs a CUDA 12.4 or "
                                  "later driver); pass a pointer to it instead")
            params = self.params_of(expression, compiled, sizes)
        return ctx, function, params


def _resolve_file(path: str | Path) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = toolchain.kernels_dir() / candidate
    if not candidate.is_file():
        raise CujitError(f"cuda_files: {path} not found (looked for {candidate}); relative paths are relative to "
                         f"{toolchain.kernels_dir()}")
    return candidate.resolve()


def load_jit(
    name: str,
    *args: object,
    cuda_files: Sequence[str | Path],
    cuda_wrappers: Sequence[tuple[str, str]],
    extra_cuda_cflags: Sequence[str] = (),
    extra_include_paths: Sequence[str | Path] = (),
) -> JitModule:
    """Declare a module of CUDA kernels, compiled with NVRTC on first use.

    Args:
        name: the module's name (used in logs, errors and the cache).
        *args: the template arguments that make this instantiation unique (usually ``make_cpp_args(...)``).
        cuda_files: ``.cuh`` files, relative to ``cujit/kernels/`` or absolute.
        cuda_wrappers: ``(python_name, C++ name expression)`` pairs; the expression names a ``__global__`` function.
        extra_cuda_cflags: more NVRTC options (``-DNAME=1``, ``--use_fast_math``, ...).
        extra_include_paths: more folders for ``#include``.

    Raises:
        CujitError: a file or folder does not exist, or an argument is malformed.
        TypeError: an argument has the wrong type.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"load_jit: name must be a non-empty str, got {name!r}")
    if isinstance(cuda_files, (str, Path)):
        raise TypeError("load_jit: cuda_files must be a list of paths, got a single path; wrap it in a list")
    files = tuple(_resolve_file(f) for f in cuda_files)
    if not files:
        raise CujitError("load_jit: cuda_files is empty; expected at least one .cuh file")
    wrappers: list[tuple[str, str]] = []
    for pair in cuda_wrappers:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TypeError(f"load_jit: each cuda_wrappers entry must be (python_name, C++ expression), got {pair!r}")
        py, expr = pair
        if not _IDENT.match(py):
            raise CujitError(f"load_jit: python name {py!r} is not an identifier")
        if py in dict(wrappers):
            raise CujitError(f"load_jit: python name {py!r} appears twice in cuda_wrappers")
        wrappers.append((py, expr.strip()))
    if not wrappers:
        raise CujitError("load_jit: cuda_wrappers is empty; expected at least one (python_name, expression) pair")
    includes: list[Path] = []
    for folder in extra_include_paths:
        path = Path(folder).resolve()
        if not path.is_dir():
            raise CujitError(f"load_jit: extra include path {folder} is not a folder")
        includes.append(path)
    if isinstance(extra_cuda_cflags, str):
        raise TypeError("load_jit: extra_cuda_cflags must be a list of options, got a single str")
    flags = tuple(str(f) for f in extra_cuda_cflags)
    parts = [name, *(_UNSAFE.sub("_", str(a)).strip("_") for a in args)]
    full_name = "_".join(p for p in parts if p)
    return JitModule(SourceSet(full_name, files, tuple(wrappers), flags, tuple(includes)))
