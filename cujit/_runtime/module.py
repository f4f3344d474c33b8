"""``load_jit``, ``JitModule`` and ``Kernel``: a module's sources, compiled forms per arch, kernels per device."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import cache, config, driver, toolchain
from .compile import Compiled, SourceSet
from .errors import CujitError, LaunchError
from .launch import LoadedKernel, make_launcher
from .signature import Param

__all__ = ["JitModule", "Kernel", "load_jit"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")

# (cache key, device) -> (context, module handle, {expression: function handle}); shared by equal modules.
_LOADED: dict[tuple[str, int], tuple[int, int, dict[str, int]]] = {}
_LOAD_LOCK = threading.RLock()


class Kernel:
    """One ``__global__`` function of a module; launch it with :class:`~cujit.LaunchKernel`."""

    def __init__(self, module: JitModule, name: str, expression: str) -> None:
        self.module = module
        self.name = name
        self.expression = expression
        self._table: dict[int, LoadedKernel] = {}
        self._params: tuple[Param, ...] | None = None
        # Replaced, on the first load, by a launcher generated for this kernel's parameter list.
        self.launch = self._first_launch  # type: ignore[method-assign]
        self.launch_on = self._first_launch_on  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"<cujit kernel {self.name} = {self.expression} of module {self.module.name}>"

    @property
    def params(self) -> tuple[Param, ...]:
        """The kernel's parameters, known once it has been compiled."""
        if self._params is None:
            compiled = self.module.compile()
            self._params = _params_of(compiled, self.expression)
        return self._params

    def launch(self, grid: Any, block: Any, *args: Any, shared_mem: int = 0, stream: Any = None) -> None:
        """Launch with ``args``; the same as ``LaunchKernel(grid, block, shared_mem, stream)(self, *args)``.

        ``grid`` and ``block`` are ints or tuples of up to three ints. Tensors go in as device pointers,
        scalars are packed to the kernel's parameter types. The instance attribute that replaces this method
        after the first launch is generated for the kernel's parameter list.
        """
        self._first_launch(grid, block, *args, shared_mem=shared_mem, stream=stream)

    def launch_on(self, device: int, grid: Any, block: Any, *args: Any, shared_mem: int = 0,
                  stream: Any = None) -> None:
        """Launch on ``device`` with raw arguments: pointers as ints, no tensor handling.

        The fast path for ops that have already checked their tensors (see cujit/add_constant.py). Without
        ``stream``, the current torch stream of ``device`` (CuPy's where torch is not imported).
        """
        self._first_launch_on(device, grid, block, *args, shared_mem=shared_mem, stream=stream)

    def _first_launch_on(self, device: int, grid: Any, block: Any, *args: Any, shared_mem: int = 0,
                         stream: Any = None) -> None:
        driver.require_gpu()
        self._load(device)
        self.launch_on(device, grid, block, *args, shared_mem=shared_mem, stream=stream)

    def on(self, device: int) -> LoadedKernel:
        """This kernel loaded on ``device`` (compiling and loading on first use)."""
        found = self._table.get(device)
        return found if found is not None else self._load(device)

    def _first_launch(self, grid: Any, block: Any, *args: Any, shared_mem: int = 0, stream: Any = None) -> None:
        from .launch import _current_device

        driver.require_gpu()
        device = _first_device(args)
        self._load(_current_device() if device is None else device)
        self.launch(grid, block, *args, shared_mem=shared_mem, stream=stream)

    def _load(self, device: int) -> LoadedKernel:
        with _LOAD_LOCK:
            found = self._table.get(device)
            if found is not None:
                return found
            if device < 0 or device >= driver.device_count():
                raise LaunchError(f"{self.expression}: no CUDA device {device} (this process sees "
                                  f"{driver.device_count()})")
            # Loading is no stream work, but the global capture mode forbids it while any stream of the process
            # is being captured; relaxing it for this thread lets a first launch happen inside a CUDA graph.
            with driver.capture_relaxed():
                self.module._load_on(device)
            return self._table[device]


def _first_device(args: Iterable[Any]) -> int | None:
    from .tensors import tensor_info

    for arg in args:
        if hasattr(arg, "__dlpack__") or hasattr(arg, "__cuda_array_interface__"):
            try:
                info = tensor_info(arg)
            except (TypeError, BufferError, ValueError):
                continue
            if info.device.type in ("cuda", "cuda_managed"):
                return info.device.index
    return None


def _params_of(compiled: Compiled, expression: str, sizes: list[int] | None = None) -> tuple[Param, ...]:
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
        if arch is None:
            arch = driver.arch_of(driver.cupy_runtime().getDevice()) if driver.device_count() else config.default_arch()
        else:
            arch = config.check_arch(arch)
        found = self._compiled.get(arch)
        if found is not None:
            return found[1]
        with self._lock:
            found = self._compiled.get(arch)
            if found is None:
                found = self._compiled[arch] = cache.get_or_compile(self._sources, arch)
        return found[1]

    def cache_key(self, arch: str) -> str:
        """The cache key for ``arch`` (reads the sources and headers)."""
        return cache.cache_key(self._sources, config.check_arch(arch))

    def _load_on(self, device: int) -> None:
        arch = driver.arch_of(device)
        compiled = self.compile(arch)
        key = self._compiled[arch][0]
        loaded = _LOADED.get((key, device))
        if loaded is None:
            expressions = list(self._sources.expressions)
            names = [compiled.lowered[e] for e in expressions]
            ctx, handle, handles = driver.load_module(device, compiled.cubin, names)
            loaded = _LOADED[(key, device)] = (ctx, handle, dict(zip(expressions, handles, strict=True)))
            cache._count("loads")
        ctx, _, functions = loaded
        for kernel in self.kernels.values():
            if device in kernel._table:
                continue
            function = functions[kernel.expression]
            if kernel._params is None:
                kernel._params = _params_of(compiled, kernel.expression)
            if any(p.kind == "record" and not p.size for p in kernel._params):
                # Only the driver knows the size of a class passed by value.
                kernel._params = _params_of(compiled, kernel.expression, driver.param_sizes(function))
            kernel._table[device] = LoadedKernel(kernel, device, ctx, function, kernel._params)
            if kernel.launch == kernel._first_launch:
                kernel.launch, kernel.launch_on = make_launcher(kernel)  # type: ignore[method-assign]


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
    flags = tuple(str(f) for f in extra_cuda_cflags)
    if isinstance(extra_cuda_cflags, str):
        raise TypeError("load_jit: extra_cuda_cflags must be a list of options, got a single str")
    parts = [name, *(_UNSAFE.sub("_", str(a)).strip("_") for a in args)]
    full_name = "_".join(p for p in parts if p)
    return JitModule(SourceSet(full_name, files, tuple(wrappers), flags, tuple(includes)))
