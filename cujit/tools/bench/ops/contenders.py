"""What an op family's module builds a row from: contenders, the op lookup, torch.compile of references, checks.

A family module (``norms.py``, ``router.py``, ...) declares a ``FAMILY`` (``Family``): its ops, the rows of each
(``Case``) and a builder that makes a row's random inputs, its contenders and the outputs each must produce
(``Setup``). Everything such a builder needs is here; the runner (``runner.py``) checks and times what it built.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..adapters import Unavailable as AdapterUnavailable
from .case import HEADLINE_TOKENS, Case

if TYPE_CHECKING:
    import torch

    from ..timing import Timing

__all__ = [
    "EPS",
    "MAX_POSITION",
    "NUM_SLOTS",
    "REL_TOL",
    "Compiler",
    "Contender",
    "Env",
    "Family",
    "Setup",
    "Unavailable",
    "accepts",
    "adapter_or_reason",
    "allocating",
    "bind",
    "compare",
    "cujit_op",
    "cujit_or_reason",
    "liger_or_reason",
    "map_outputs",
    "restore",
    "tol",
    "torch_dtype",
    "unavailable",
    "upcast",
]

#: Largest ||out - ref|| / ||ref|| accepted per output dtype.
REL_TOL: dict[str, float] = {"float32": 5e-4, "float16": 3e-3, "bfloat16": 1.5e-2, "float8_e4m3fn": 3e-2}
#: Positions in the rotary cos/sin cache, and slots in the KV caches (fixed, so shapes depend on tokens only):
#: the defaults of ``Env``.
MAX_POSITION = 32768
NUM_SLOTS = 32768
#: The epsilon of every norm.
EPS = 1e-6


class Unavailable(Exception):
    """A contender cannot run here; the message says why (shown in its cell)."""


_RESOLVED: dict[str, Callable[..., Any] | str] = {}


def cujit_op(name: str) -> Callable[..., Any]:
    """The function of op ``name``: ``cujit.<name>.<name>``; or ``Unavailable``.

    A missing module is "not available"; a module that exists but fails to import is reported with its error.
    """
    found = _RESOLVED.get(name)
    if found is None:
        found = _RESOLVED[name] = _resolve(name, f"cujit.{name}")
    if isinstance(found, str):
        raise Unavailable(found)
    return found


def _resolve(name: str, module_name: str) -> Callable[..., Any] | str:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            return f"not available: importing {module_name} failed: {exc}"
    except Exception as exc:  # the module exists and is broken: say so instead of skipping it
        return f"not available: importing {module_name} failed: {type(exc).__name__}: {exc}"
    else:
        if callable(getattr(module, name, None)):
            return getattr(module, name)  # type: ignore[no-any-return]
    return f"not available: no cujit.{name} here"


def accepts(fn: Callable[..., Any], parameter: str) -> bool:
    """Whether ``fn`` has a parameter named ``parameter`` (for an op whose signature grew a keyword)."""
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def bind(fn: Callable[..., Any], values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Keyword arguments for ``fn``, taken by parameter name from ``values``.

    For ops whose exact signature the benchmark cannot know in advance. Raises ``Unavailable`` for a required
    parameter that ``values`` lacks.
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError) as exc:
        raise Unavailable(f"not available: cannot read the signature of {what}: {exc}") from exc
    kwargs: dict[str, Any] = {}
    for parameter in parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name in values:
            kwargs[parameter.name] = values[parameter.name]
        elif parameter.default is parameter.empty:
            raise Unavailable(f"not available: {what}{inspect.signature(fn)} has a parameter "
                              f"{parameter.name!r} the benchmark does not know")
    return kwargs


# -- contenders --------------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way of computing a row's op, with what it needs to be checked and timed."""

    name: str
    fn: Callable[[], Any] | None = None  # the timed call; None when unavailable, wrong or failed
    outputs: Callable[[], dict[str, Any]] | None = None  # the tensors to check, read after fn()
    reset: Callable[[], None] | None = None  # restores the inputs fn changes (outside timed regions)
    poison: Callable[[], Any] | None = None  # fills the output buffers with NaN before the check
    fallback: Callable[[], None] | None = None  # called once if the first call raises, then retried
    nbytes: int | None = None  # bytes this contender really moves, where they differ from the row's
    note: str = ""
    status: str = "ok"
    first_call_s: float | None = None
    timing: Timing | None = None
    #: Bounds that replace the row's for some outputs of this contender (one it writes in a narrower dtype).
    tolerance: dict[str, float] = field(default_factory=dict)

    def fail(self, status: str) -> None:
        """Mark the contender as not timed, with the reason."""
        self.status = status
        self.fn = None


def unavailable(name: str, reason: str) -> Contender:
    """A contender shown with ``reason`` in its cell."""
    return Contender(name, status=reason)


def allocating(name: str, call: Callable[[], Any], names: Sequence[str], **extra: Any) -> Contender:
    """A contender whose call returns its outputs (one tensor or a tuple), kept for the check."""
    box: dict[str, Any] = {}

    def fn() -> None:
        box["out"] = call()

    def outputs() -> dict[str, Any]:
        out = box["out"]
        return dict(zip(names, out if isinstance(out, (tuple, list)) else (out,), strict=True))

    return Contender(name, fn, outputs, **extra)


def map_outputs(contender: Contender, derive: Callable[[dict[str, Any]], dict[str, Any]]) -> Contender:
    """``contender`` with the outputs it is checked on computed by ``derive`` from the outputs it had.

    For a row whose results are checked through something derived from them (the reference's value at each
    index an op returns), or that adds tensors the call changed in place to those it returned.
    """
    if contender.outputs is not None:
        outputs = contender.outputs
        contender.outputs = lambda: derive(outputs())
    return contender


@dataclass
class Setup:
    """A row's contenders (without copy_), and the outputs each must produce."""

    expected: dict[str, Any]
    tolerance: dict[str, float]
    contenders: list[Contender]
    inplace: bool = False


class Compiler:
    """``torch.compile`` of the references: default mode, one compile per shape (``dynamic=False``).

    Each row compiles a fresh copy of the reference's code object, so it is a first compile, never a recompile
    counted against dynamo's limit.

    ``mode="dynamic"`` compiles once per (op, variant, dtype, size) with the token dimension marked dynamic, except
    at 1 token and at the headline 4097 tokens, which stay static; ``mode="off"`` leaves torch.compile out.
    """

    def __init__(self, mode: str = "static") -> None:
        if mode not in ("static", "dynamic", "off"):
            raise ValueError(f"compile mode: expected static, dynamic or off, got {mode!r}")
        self.mode = mode
        self._shared: dict[tuple[Any, ...], _Compiled] = {}
        if mode != "off":
            import torch

            config = torch._dynamo.config
            for knob in ("recompile_limit", "cache_size_limit"):
                if hasattr(config, knob):
                    setattr(config, knob, max(getattr(config, knob), 1024))
            if hasattr(config, "accumulated_recompile_limit"):
                config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 1 << 16)
            if hasattr(config, "fail_on_recompile_limit_hit"):
                config.fail_on_recompile_limit_hit = True  # never fall back to eager silently

    def contender(self, case: Case, key: str, fn: Callable[..., Any], args: Sequence[Any],
                  names: Sequence[str] | None = None, reset: Callable[[], None] | None = None,
                  outputs: Callable[[], dict[str, Any]] | None = None) -> Contender:
        """The ``compile`` contender calling the compiled ``fn(*args)``.

        ``names`` for an op that returns its outputs; ``outputs`` for one that works in place; ``reset`` for one that
        changes its inputs (either kind).
        """
        if self.mode == "off":
            return unavailable("compile", "n/a: --compile off")
        dynamic = self.mode == "dynamic" and case.tokens not in (1, HEADLINE_TOKENS)
        if dynamic:
            shared_key = (case.op, case.variant, case.dtype, case.group, key)
            compiled = self._shared.get(shared_key)
            if compiled is None:
                compiled = self._shared[shared_key] = _Compiled(fn, case.tokens)
        else:
            compiled = _Compiled(fn, None)

        def call() -> Any:
            return compiled(*args)

        if names is not None:
            contender = allocating("compile", call, names, reset=reset)
        else:
            contender = Contender("compile", call, outputs, reset)
        contender.note = "dynamic tokens" if dynamic else ""

        def fallback() -> None:
            compiled.relax()
            contender.note = compiled.note

        contender.fallback = fallback
        return contender


class _Compiled:
    """A reference compiled on first call, on a fresh copy of its code object."""

    def __init__(self, fn: Callable[..., Any], dynamic_tokens: int | None) -> None:
        self.source = fn
        self.dynamic_tokens = dynamic_tokens
        self.fullgraph = True
        self.note = ""
        self.fn = self._build()
        self._marked = False

    def _build(self) -> Callable[..., Any]:
        import torch

        src: Any = self.source
        fresh = types.FunctionType(src.__code__.replace(), src.__globals__, src.__name__, src.__defaults__,
                                   src.__closure__)
        dynamic = None if self.dynamic_tokens is not None else False
        return torch.compile(fresh, fullgraph=self.fullgraph, dynamic=dynamic)

    def relax(self) -> None:
        """After a failed first call: compile again per shape, allowing graph breaks."""
        self.fullgraph = False
        self.dynamic_tokens = None
        self.fn = self._build()
        self.note = "static, graph breaks allowed (fullgraph failed)"

    def __call__(self, *args: Any) -> Any:
        if self.dynamic_tokens is not None and not self._marked:
            import torch

            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.ndim and arg.shape[0] == self.dynamic_tokens:
                    torch._dynamo.mark_dynamic(arg, 0)
            self._marked = True
        return self.fn(*args)


# -- comparing outputs -------------------------------------------------------------------------------------------


def compare(got: Any, want: Any, tol: float) -> str | None:
    """None if ``got`` matches ``want`` within ``tol`` (relative norm; 0: bit-exact), else what is wrong."""
    import torch

    if not isinstance(got, torch.Tensor):
        return f"expected a tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(want.shape):
        if got.numel() != want.numel():
            return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        got = got.reshape(want.shape)
    if tol == 0:
        if got.dtype != want.dtype:
            return f"dtype {got.dtype}, expected {want.dtype}"
        same = got.contiguous().view(torch.uint8) == want.contiguous().view(torch.uint8)
        bad = int((~same).sum())
        return None if bad == 0 else f"{bad} bytes differ"
    g, w = got.to(torch.float64), want.to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        return "non-finite values"
    norm = float(w.norm())
    err = float((g - w).norm()) / (norm if norm > 0 else 1.0)
    return None if err <= tol else f"rel err {err:.1e} > {tol:.0e}"


def tol(dtype: Any) -> float:
    """The largest relative error accepted for outputs of ``dtype`` (a torch dtype or its name)."""
    return REL_TOL[str(dtype).removeprefix("torch.")]


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 (float64 if it is float32): what references are computed on."""
    import torch

    return t.to(torch.float64 if t.dtype == torch.float32 else torch.float32)


# -- helpers of the builders -------------------------------------------------------------------------------------


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (``"bfloat16"``)."""
    import torch

    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype


def cujit_or_reason(name: str) -> tuple[Callable[..., Any] | None, str]:
    """``(cujit_op(name), "")``, or ``(None, why not)``."""
    try:
        return cujit_op(name), ""
    except Unavailable as exc:
        return None, str(exc)


def adapter_or_reason(factory: Callable[[], Any]) -> tuple[Any, str]:
    """``(factory(), "")``, or ``(None, "n/a: why not")``, for an adapter of another library.

    The adapters are the functions of ``liger.py``, ``quack.py`` and ``flashinfer.py``; each raises ``Unavailable``
    (``adapters.py``) with the reason.
    """
    try:
        return factory(), ""
    except AdapterUnavailable as exc:
        return None, f"n/a: {exc}"


#: The name the family modules first used, for Liger alone; the same function.
liger_or_reason = adapter_or_reason


def restore(pairs: Sequence[tuple[Any, Any]]) -> Callable[[], None]:
    """A reset that copies each ``(dst, src)`` pair's source back into its destination."""
    def reset() -> None:
        for dst, src in pairs:
            dst.copy_(src)

    return reset


@dataclass
class Env:
    """What every row shares: the device, the compiler of references and the timer, and the fixed table sizes."""

    device: str
    compiler: Compiler
    timer: Any  # runner.GpuTimer, or anything with the same two methods
    sync: Callable[[], None] = field(default=lambda: None)
    max_position: int = MAX_POSITION  # rows of the rotary cos/sin cache
    num_slots: int = NUM_SLOTS  # slots of each KV cache


@dataclass(frozen=True)
class Family:
    """An op family: one table of the report, declared as ``FAMILY`` by the module of that name.

    ``cases(op, quick)`` gives the rows of one of ``ops`` (the full sweep, or the ``--quick`` one); ``build``
    makes a row's inputs and contenders. ``order`` places the table in the report (lower first).
    """

    name: str
    title: str
    ops: tuple[str, ...]
    cases: Callable[[str, bool], list[Case]]
    build: Callable[[Case, Env], Setup]
    order: int
