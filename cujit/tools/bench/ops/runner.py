"""The serving-op sweep: inputs, contenders, checks and timing of each row.

For each case: build random inputs and every contender, check each contender's output against a reference once,
time them side by side in one process, and return the row.

Contenders of a row: ``cujit`` (the shipped op), ``torch eager`` and ``torch.compile`` of the plain reference in
``references.py``, Liger's Triton kernel where Liger has the op, and ``copy_`` of the row's bytes (twice: the two
copies' difference is the row's noise). The fused rotary + KV-store row also has ``cujit unfused`` (cujit's
rotary op, then its store op).

Method, per row:

- Inputs are random (never zeros), made once per row; in-place contenders get their own copies, restored from
  the originals once per timing round, outside the timed region (so values stay bounded however many rounds run;
  they are checked to be finite after timing).
- Each contender runs once before timing and its outputs are compared with the reference run on inputs upcast to
  float32 (float64 for float32 rows) by ||out - ref|| / ||ref|| against a per-dtype bound (bit-exact for stores);
  output buffers are poisoned with NaN first, so an unwritten element fails. A wrong contender is reported, not
  timed. The first call of torch.compile includes its compile time, reported apart.
- Rows of at most 16 tokens: each contender's calls are captured in a CUDA graph (32 calls) and the replays are
  timed (``time_graphs``). Larger rows: each call is timed alone between CUDA events, after a 256 MiB write that
  flushes L2 (``time_flushed``). Contenders are interleaved round by round; the median is reported.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import math
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import liger
from . import references as refs
from .cases import HEADLINE_TOKENS, Case
from .timing import L2Flush, Timing, capture_graph, time_flushed, time_graphs

if TYPE_CHECKING:
    import torch

__all__ = [
    "CALLS_PER_GRAPH",
    "CONTENDERS",
    "Compiler",
    "Contender",
    "Env",
    "GpuTimer",
    "Setup",
    "Unavailable",
    "compare",
    "cujit_op",
    "run_case",
    "run_sweep",
]

#: Column order of the contenders in the report.
CONTENDERS: tuple[str, ...] = ("cujit", "cujit unfused", "eager", "compile", "liger")
#: Calls captured in one CUDA graph for the small rows.
CALLS_PER_GRAPH = 32
#: Largest ||out - ref|| / ||ref|| accepted per output dtype.
REL_TOL: dict[str, float] = {"float32": 5e-4, "float16": 3e-3, "bfloat16": 1.5e-2, "float8_e4m3fn": 3e-2}
#: Positions in the rotary cos/sin cache, and slots in the KV caches (fixed, so shapes depend on tokens only).
MAX_POSITION = 32768
NUM_SLOTS = 32768
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


def _accepts(fn: Callable[..., Any], parameter: str) -> bool:
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

        ``names`` for an op that returns its outputs; ``outputs`` (and ``reset``) for one that works in place.
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
            contender = allocating("compile", call, names)
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


def _tol(dtype: Any) -> float:
    return REL_TOL[str(dtype).removeprefix("torch.")]


def _upcast(t: torch.Tensor) -> torch.Tensor:
    import torch

    return t.to(torch.float64 if t.dtype == torch.float32 else torch.float32)


# -- the builders, one per family --------------------------------------------------------------------------------


def _dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype


def _cujit_or_reason(name: str) -> tuple[Callable[..., Any] | None, str]:
    try:
        return cujit_op(name), ""
    except Unavailable as exc:
        return None, str(exc)


def _liger(factory: Callable[[], Any]) -> tuple[Any, str]:
    try:
        return factory(), ""
    except liger.Unavailable as exc:
        return None, f"n/a: {exc}"


def _restore(pairs: Sequence[tuple[Any, Any]]) -> Callable[[], None]:
    def reset() -> None:
        for dst, src in pairs:
            dst.copy_(src)

    return reset


def build_norms(case: Case, env: Env) -> Setup:
    """rms_norm and fused_add_rms_norm at [T, H]."""
    import torch

    dtype, device = _dtype(case.dtype), env.device
    tokens, hidden = case.tokens, case.params["hidden"]
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    weight = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    tol = _tol(dtype)
    contenders: list[Contender] = []
    op, reason = _cujit_or_reason(case.op)
    if case.op == "rms_norm":
        expected = {"out": refs.rms_norm(_upcast(x), _upcast(weight), EPS)}
        if op is None:
            contenders.append(unavailable("cujit", reason))
        else:
            out = torch.empty_like(x)
            contenders.append(Contender("cujit", lambda: op(x, weight, EPS, out=out), lambda: {"out": out},
                                        poison=lambda: out.fill_(math.nan)))
        contenders.append(allocating("eager", lambda: refs.rms_norm(x, weight, EPS), ["out"]))
        contenders.append(env.compiler.contender(case, "ref", lambda x, w: refs.rms_norm(x, w, EPS), (x, weight),
                                                 names=["out"]))
        fn, why = _liger(lambda: liger.rms_norm(EPS))
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            contenders.append(allocating("liger", lambda: fn(x, weight), ["out"], nbytes=case.nbytes + 4 * tokens,
                                         note="+ 4*T bytes of rstd"))
        return Setup(expected, {"out": tol}, contenders)

    residual = torch.randn(tokens, hidden, dtype=dtype, device=device)
    want_x, want_r = _upcast(x), _upcast(residual)
    # The reference rounds the sum to the storage dtype, as the op does; the upcast copy rounds it to its own.
    refs.fused_add_rms_norm(want_x, want_r, _upcast(weight), EPS)
    expected = {"x": want_x, "residual": want_r}

    def inplace(name: str, call: Callable[[Any, Any], Any]) -> Contender:
        xc, rc = x.clone(), residual.clone()
        return Contender(name, lambda: call(xc, rc), lambda: {"x": xc, "residual": rc},
                         _restore([(xc, x), (rc, residual)]))

    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        contenders.append(inplace("cujit", lambda xc, rc: op(xc, rc, weight, EPS)))
    contenders.append(inplace("eager", lambda xc, rc: refs.fused_add_rms_norm(xc, rc, weight, EPS)))
    xk, rk = x.clone(), residual.clone()
    contenders.append(env.compiler.contender(
        case, "ref", lambda x, r, w: refs.fused_add_rms_norm(x, r, w, EPS), (xk, rk, weight),
        reset=_restore([(xk, x), (rk, residual)]), outputs=lambda: {"x": xk, "residual": rk}))
    fn, why = _liger(lambda: liger.fused_add_rms_norm(EPS))
    if fn is None:
        contenders.append(unavailable("liger", why))
    else:
        contenders.append(allocating("liger", lambda: fn(x, residual, weight), ["x", "residual"],
                                     nbytes=case.nbytes + 4 * tokens, note="out of place, + 4*T bytes of rstd"))
    return Setup(expected, {"x": tol, "residual": tol}, contenders, inplace=True)


def build_activations(case: Case, env: Env) -> Setup:
    """silu_and_mul and gelu_and_mul (``variant`` = approximate) on x [T, 2d]."""
    import torch

    dtype, device = _dtype(case.dtype), env.device
    tokens, d = case.tokens, case.params["d"]
    x = torch.randn(tokens, 2 * d, dtype=dtype, device=device)
    gelu = case.op == "gelu_and_mul"
    approximate = case.variant
    ref: Callable[[Any], Any] = (lambda x: refs.gelu_and_mul(x, approximate)) if gelu else refs.silu_and_mul
    expected = {"out": ref(_upcast(x))}
    contenders: list[Contender] = []
    op, reason = _cujit_or_reason(case.op)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        out = torch.empty(tokens, d, dtype=dtype, device=device)
        if gelu:
            def call() -> Any:
                return op(x, approximate, out=out)
        else:
            def call() -> Any:
                return op(x, out=out)
        contenders.append(Contender("cujit", call, lambda: {"out": out}, poison=lambda: out.fill_(math.nan)))
    contenders.append(allocating("eager", lambda: ref(x), ["out"]))
    contenders.append(env.compiler.contender(case, "ref", lambda x: ref(x), (x,), names=["out"]))
    if gelu and approximate != "tanh":
        contenders.append(unavailable("liger", "n/a: Liger's GEGLU has the tanh form only"))
    else:
        fn, why = _liger(liger.gelu_tanh_and_mul if gelu else liger.silu_and_mul)
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            a, b = x[:, :d].contiguous(), x[:, d:].contiguous()
            contenders.append(allocating("liger", lambda: fn(a, b), ["out"], note="gate and up as two tensors"))
    return Setup(expected, {"out": _tol(dtype)}, contenders)


def _rotary_inputs(case: Case, env: Env) -> dict[str, Any]:
    import torch

    dtype, device = _dtype(case.dtype), env.device
    tokens = case.tokens
    qh, kh, hs, rd = (case.params[k] for k in ("q_heads", "kv_heads", "head_size", "rotary_dim"))
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rd, 2, dtype=torch.float64, device=device) / rd))
    angles = torch.outer(torch.arange(MAX_POSITION, dtype=torch.float64, device=device), inv_freq)
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)
    positions = torch.randperm(MAX_POSITION, device=device)[:tokens]
    return {"positions": positions, "cos_sin_cache": cache, "head_size": hs, "qh": qh, "kh": kh, "rd": rd,
            "q": torch.randn(tokens, qh * hs, dtype=dtype, device=device),
            "k": torch.randn(tokens, kh * hs, dtype=dtype, device=device)}


def build_rotary(case: Case, env: Env) -> Setup:
    """rotary_embedding in place on q [T, Hq*D] and k [T, Hkv*D]; ``variant`` neox or gptj."""
    import torch

    inputs = _rotary_inputs(case, env)
    positions, cache, hs = inputs["positions"], inputs["cos_sin_cache"], inputs["head_size"]
    q, k = inputs["q"], inputs["k"]
    is_neox = case.variant == "neox"
    want_q, want_k = _upcast(q), _upcast(k)
    refs.rotary_embedding(positions, want_q, want_k, _upcast(cache), hs, is_neox)
    expected = {"q": want_q, "k": want_k}
    tol = _tol(q.dtype)

    def inplace(name: str, call: Callable[[Any, Any], Any], **extra: Any) -> Contender:
        qc, kc = q.clone(), k.clone()
        return Contender(name, lambda: call(qc, kc), lambda: {"q": qc, "k": kc}, _restore([(qc, q), (kc, k)]),
                         **extra)

    contenders: list[Contender] = []
    op, reason = _cujit_or_reason("rotary_embedding")
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        extra: dict[str, Any] = {"head_size": hs} if _accepts(op, "head_size") else {}
        contenders.append(inplace("cujit", lambda qc, kc: op(positions, qc, kc, cache, is_neox=is_neox, **extra)))
    contenders.append(inplace("eager", lambda qc, kc: refs.rotary_embedding(positions, qc, kc, cache, hs, is_neox)))
    qk, kk = q.clone(), k.clone()
    contenders.append(env.compiler.contender(
        case, "ref", lambda p, q, k, c: refs.rotary_embedding(p, q, k, c, hs, is_neox), (positions, qk, kk, cache),
        reset=_restore([(qk, q), (kk, k)]), outputs=lambda: {"q": qk, "k": kk}))
    if not is_neox:
        contenders.append(unavailable("liger", "n/a: Liger's rope is the neox (rotate-half) style only"))
    else:
        fn, why = _liger(liger.rope)
        if fn is None:
            contenders.append(unavailable("liger", why))
        else:
            tokens, rd = case.tokens, inputs["rd"]
            rows = cache.index_select(0, positions)
            cos = torch.cat((rows[:, : rd // 2], rows[:, : rd // 2]), dim=-1)[None].contiguous()
            sin = torch.cat((rows[:, rd // 2:], rows[:, rd // 2:]), dim=-1)[None].contiguous()
            nbytes = case.nbytes - tokens * positions.element_size()

            def liger_call(qc: Any, kc: Any) -> Any:
                return fn(qc.view(1, tokens, inputs["qh"], hs).transpose(1, 2),
                          kc.view(1, tokens, inputs["kh"], hs).transpose(1, 2), cos, sin)

            contenders.append(inplace("liger", liger_call, nbytes=nbytes,
                                      note="[1, H, T, D] views, cos/sin gathered per token untimed, no positions"))
    return Setup(expected, {"q": tol, "k": tol}, contenders, inplace=True)


def _kv_caches(tokens: int, kh: int, hs: int, cache_dtype: Any, device: str) -> tuple[Any, Any]:
    import torch

    shape = (NUM_SLOTS, kh, hs)
    return (torch.randn(shape, device=device).to(cache_dtype), torch.randn(shape, device=device).to(cache_dtype))


def _kv_outputs(k_cache: Any, v_cache: Any, slots: Any, untouched: Any) -> Callable[[], dict[str, Any]]:
    def outputs() -> dict[str, Any]:
        return {"k_rows": k_cache[slots], "v_rows": v_cache[slots], "k_rest": k_cache[untouched],
                "v_rest": v_cache[untouched]}

    return outputs


def build_kv_cache(case: Case, env: Env) -> Setup:
    """store_kv_cache of k, v [T, Hkv, D] into caches [32768 slots, Hkv, D] at distinct random slots."""
    import torch

    dtype, device = _dtype(case.dtype), env.device
    cache_dtype = _dtype(case.extra["cache_dtype"])
    tokens, kh, hs = case.tokens, case.params["kv_heads"], case.params["head_size"]
    k = torch.randn(tokens, kh, hs, dtype=dtype, device=device)
    v = torch.randn(tokens, kh, hs, dtype=dtype, device=device)
    slots = torch.randperm(NUM_SLOTS, device=device)[:tokens]
    untouched = torch.ones(NUM_SLOTS, dtype=torch.bool, device=device)
    untouched[slots] = False
    k_init, v_init = _kv_caches(tokens, kh, hs, cache_dtype, device)
    fp8 = cache_dtype == torch.float8_e4m3fn
    k_scale = (k.abs().amax().float() / refs.FP8_MAX).reshape(1) if fp8 else None
    v_scale = (v.abs().amax().float() / refs.FP8_MAX).reshape(1) if fp8 else None

    def store(name: str, call: Callable[[Any, Any], Any]) -> Contender:
        kc, vc = k_init.clone(), v_init.clone()
        return Contender(name, lambda: call(kc, vc), _kv_outputs(kc, vc, slots, untouched),
                         _restore([(kc, k_init), (vc, v_init)]))

    contenders: list[Contender] = []
    op, reason = _cujit_or_reason("store_kv_cache")
    cujit_kwargs: dict[str, Any] = {}
    if op is not None:
        values: dict[str, Any] = {"k": k, "v": v, "slot_mapping": slots, "k_cache": None, "v_cache": None}
        if fp8:
            values.update(k_scale=k_scale, v_scale=v_scale, scale=k_scale, kv_scale=k_scale)
        try:
            cujit_kwargs = bind(op, values, "store_kv_cache")
            scales = sorted(name for name in cujit_kwargs if "scale" in name)
            if fp8 and not scales:
                raise Unavailable("not available: store_kv_cache takes no scale for an fp8 cache")
            if fp8 and scales != ["k_scale", "v_scale"] and v_scale is not None and k_scale is not None:
                v_scale = k_scale  # one scale for both caches: the other contenders use it too
        except Unavailable as exc:
            op, reason = None, str(exc)
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        def cujit_call(kc: Any, vc: Any) -> Any:
            return op(**{**cujit_kwargs, "k_cache": kc, "v_cache": vc})

        contenders.append(store("cujit", cujit_call))
    want_k, want_v = k_init.clone(), v_init.clone()
    refs.store_kv_cache(k, v, want_k, want_v, slots, k_scale, v_scale)
    expected = _kv_outputs(want_k, want_v, slots, untouched)()
    rows_tol = REL_TOL["float8_e4m3fn"] if fp8 else 0.0
    tolerance = {"k_rows": rows_tol, "v_rows": rows_tol, "k_rest": 0.0, "v_rest": 0.0}
    contenders.append(store("eager", lambda kc, vc: refs.store_kv_cache(k, v, kc, vc, slots, k_scale, v_scale)))
    kk, vk = k_init.clone(), v_init.clone()
    args = (k, v, kk, vk, slots, *((k_scale, v_scale) if fp8 else ()))

    def ref(*args: Any) -> None:
        refs.store_kv_cache(*args)

    contenders.append(env.compiler.contender(case, "ref", ref, args, reset=_restore([(kk, k_init), (vk, v_init)]),
                                             outputs=_kv_outputs(kk, vk, slots, untouched)))
    return Setup(expected, tolerance, contenders)


def build_quant(case: Case, env: Env) -> Setup:
    """per-token, per-tensor (dynamic or static) and per-group (128) fp8 e4m3 quantization of x [T, H]."""
    import torch

    dtype, device = _dtype(case.dtype), env.device
    tokens, hidden = case.tokens, case.params["hidden"]
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    op, reason = _cujit_or_reason(case.op)
    args: tuple[Any, ...] = (x,)
    if case.op == "per_token_quant_fp8":
        ref: Callable[..., Any] = refs.per_token_quant_fp8
    elif case.op == "per_tensor_quant_fp8":
        ref = refs.per_tensor_quant_fp8
        if case.variant == "static":
            args = (x, (x.abs().amax().float() / refs.FP8_MAX).reshape(1))
    else:
        group = case.params["group_size"]

        def ref(x: Any) -> Any:
            return refs.per_token_group_quant_fp8(x, group)

    expected = dict(zip(("q", "scale"), ref(*args), strict=True))
    tolerance = {"q": REL_TOL["float8_e4m3fn"], "scale": 1e-6}
    contenders: list[Contender] = []
    if op is None:
        contenders.append(unavailable("cujit", reason))
    elif case.op == "per_token_group_quant_fp8":
        contenders.append(allocating("cujit", lambda: op(x, case.params["group_size"]), ["q", "scale"]))
    else:
        contenders.append(allocating("cujit", lambda: op(*args), ["q", "scale"]))
    contenders.append(allocating("eager", lambda: ref(*args), ["q", "scale"]))
    contenders.append(env.compiler.contender(case, "ref", lambda *a: ref(*a), args, names=["q", "scale"]))
    return Setup(expected, tolerance, contenders)


def build_fused(case: Case, env: Env) -> Setup:
    """rotary_embedding_with_kv_cache: cujit's fused op, cujit's two ops in sequence, and the unfused reference.

    q [T, Hq, D], k and v [T, Hkv, D] (3-D views of [T, H*D] tensors), caches [32768 slots, Hkv, D] in q's dtype.
    The fused op rotates q in place and writes the rotated k and v into the caches without writing k back; the
    unfused sequence also rotates k in place. All are measured against the bytes the fused op must move.
    """
    import torch

    inputs = _rotary_inputs(case, env)
    positions, cache, hs = inputs["positions"], inputs["cos_sin_cache"], inputs["head_size"]
    q, k = inputs["q"], inputs["k"]
    tokens, kh = case.tokens, inputs["kh"]
    v = torch.randn_like(k)
    slots = torch.randperm(NUM_SLOTS, device=env.device)[:tokens]
    untouched = torch.ones(NUM_SLOTS, dtype=torch.bool, device=env.device)
    untouched[slots] = False
    k_init, v_init = _kv_caches(tokens, kh, hs, q.dtype, env.device)
    want_q, want_k = _upcast(q), _upcast(k)
    want_kc, want_vc = _upcast(k_init), _upcast(v_init)
    refs.rotary_store_kv_cache(positions, want_q, want_k, _upcast(v), _upcast(cache), want_kc, want_vc, slots, hs)
    # v is stored as it is, and the slots not in slot_mapping keep their bytes: both compared bit for bit.
    expected = {"q": want_q, "k_rows": want_kc[slots], "v_rows": v.view(tokens, kh, hs),
                "k_rest": k_init[untouched], "v_rest": v_init[untouched]}
    tol = _tol(q.dtype)
    tolerance = {"q": tol, "k_rows": tol, "v_rows": 0.0, "k_rest": 0.0, "v_rest": 0.0}

    def fused(name: str, call: Callable[[Any, Any, Any, Any], Any]) -> Contender:
        qc, kc, kcache, vcache = q.clone(), k.clone(), k_init.clone(), v_init.clone()

        def outputs() -> dict[str, Any]:
            return {"q": qc, **_kv_outputs(kcache, vcache, slots, untouched)()}

        return Contender(name, lambda: call(qc, kc, kcache, vcache), outputs,
                         _restore([(qc, q), (kc, k), (kcache, k_init), (vcache, v_init)]))

    qh = inputs["qh"]
    contenders: list[Contender] = []
    op, reason = _cujit_or_reason("rotary_embedding_with_kv_cache")
    if op is None:
        contenders.append(unavailable("cujit", reason))
    else:
        def fused_call(qc: Any, kc: Any, kcache: Any, vcache: Any) -> Any:
            return op(positions, qc.view(tokens, qh, hs), kc.view(tokens, kh, hs), v.view(tokens, kh, hs), cache,
                      kcache, vcache, slots, is_neox=True)

        contenders.append(fused("cujit", fused_call))
    rotary, why_rotary = _cujit_or_reason("rotary_embedding")
    store, why_store = _cujit_or_reason("store_kv_cache")
    if rotary is None or store is None:
        contenders.append(unavailable("cujit unfused", why_rotary or why_store))
    else:
        extra: dict[str, Any] = {"head_size": hs} if _accepts(rotary, "head_size") else {}

        def unfused(qc: Any, kc: Any, kcache: Any, vcache: Any) -> None:
            rotary(positions, qc, kc, cache, is_neox=True, **extra)
            store(kc.view(tokens, kh, hs), v.view(tokens, kh, hs), kcache, vcache, slots)

        contenders.append(fused("cujit unfused", unfused))

    def eager(qc: Any, kc: Any, kcache: Any, vcache: Any) -> None:
        refs.rotary_store_kv_cache(positions, qc, kc, v, cache, kcache, vcache, slots, hs)

    contenders.append(fused("eager", eager))
    qk, kk, kck, vck = q.clone(), k.clone(), k_init.clone(), v_init.clone()

    def compiled_outputs() -> dict[str, Any]:
        return {"q": qk, **_kv_outputs(kck, vck, slots, untouched)()}

    contenders.append(env.compiler.contender(
        case, "ref", lambda p, q, k, v, c, kc, vc, s: refs.rotary_store_kv_cache(p, q, k, v, c, kc, vc, s, hs),
        (positions, qk, kk, v, cache, kck, vck, slots), outputs=compiled_outputs,
        reset=_restore([(qk, q), (kk, k), (kck, k_init), (vck, v_init)])))
    return Setup(expected, tolerance, contenders, inplace=True)


BUILDERS: dict[str, Callable[[Case, Env], Setup]] = {
    "norms": build_norms,
    "activations": build_activations,
    "rotary": build_rotary,
    "kv_cache": build_kv_cache,
    "quant": build_quant,
    "fused": build_fused,
}


# -- running a row -----------------------------------------------------------------------------------------------


class GpuTimer:
    """Times contenders on the GPU: CUDA-graph replays for small rows, L2-flushed single calls for the rest."""

    def __init__(self, rounds: int = 10, flushed_iters: int = 10, graph_iters: int = 5) -> None:
        self.flush = L2Flush()
        self.rounds, self.flushed_iters, self.graph_iters = rounds, flushed_iters, graph_iters

    def flushed(self, fns: Mapping[str, Callable[[], Any]],
                resets: Mapping[str, Callable[[], None]]) -> tuple[dict[str, Timing], dict[str, str]]:
        """Each call alone after an L2 flush (see ``time_flushed``)."""
        return time_flushed(fns, self.flush, rounds=self.rounds, iters=self.flushed_iters, resets=resets), {}

    def graphed(self, fns: Mapping[str, Callable[[], Any]], calls: int,
                resets: Mapping[str, Callable[[], None]]) -> tuple[dict[str, Timing], dict[str, str]]:
        """``calls`` calls captured per graph, replays timed (see ``time_graphs``); capture failures reported."""
        graphs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, fn in fns.items():
            reset = resets.get(name)
            if reset is not None:
                reset()
            try:
                graphs[name] = capture_graph(fn, calls)
            except Exception as exc:  # reported in the contender's cell; the other contenders still run
                errors[name] = f"error: graph capture failed: {_short(exc)}"
                _print_traceback(name)
        timings = time_graphs(graphs, calls, rounds=self.rounds, iters=self.graph_iters, resets=resets)
        return timings, errors


@dataclass
class Env:
    """What every row shares: the device, the compiler of references and the timer."""

    device: str
    compiler: Compiler
    timer: Any  # GpuTimer, or anything with the same two methods
    sync: Callable[[], None] = field(default=lambda: None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _print_traceback(name: str) -> None:
    print(f"    [{name}] " + "    ".join(traceback.format_exc(limit=-4).splitlines(keepends=True)), file=sys.stderr,
          end="", flush=True)


def _check(contender: Contender, setup: Setup, sync: Callable[[], None]) -> None:
    """Run the contender once on its reset inputs and compare every output; a failure stops it being timed."""
    if contender.fn is None or contender.outputs is None:
        return
    for attempt in range(2):
        try:
            if contender.reset is not None:
                contender.reset()
            if contender.poison is not None:
                contender.poison()
            sync()
            start = time.perf_counter()
            contender.fn()
            sync()
            contender.first_call_s = time.perf_counter() - start
            got = contender.outputs()
            break
        except Exception as exc:  # a failing contender is reported in its cell, the row goes on
            if attempt == 0 and contender.fallback is not None:
                contender.fallback()
                continue
            _print_traceback(contender.name)
            contender.fail(f"error: {_short(exc)}")
            return
    problems = []
    for name, want in setup.expected.items():
        if name not in got:
            problems.append(f"{name} missing")
            continue
        problem = compare(got[name], want, setup.tolerance[name])
        if problem:
            problems.append(f"{name}: {problem}")
    if problems:
        contender.fail("wrong: " + "; ".join(problems))


def _finite(contender: Contender) -> bool:
    import torch

    if contender.outputs is None:
        return True
    for value in contender.outputs().values():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.element_size() > 1:
            if not bool(torch.isfinite(value).all()):
                return False
    return True


def run_case(case: Case, env: Env) -> dict[str, Any]:
    """Build, check and time one row; returns it as a JSON-ready dict (see ``report``)."""
    import torch

    setup = BUILDERS[case.family](case, env)
    half = max(case.nbytes // 2, 1)
    src = torch.randint(0, 256, (half,), dtype=torch.uint8, device=env.device)
    dst = torch.empty_like(src)
    copies = [Contender("copy_", lambda: dst.copy_(src)), Contender("copy_ again", lambda: dst.copy_(src))]
    for contender in setup.contenders:
        _check(contender, setup, env.sync)
    timed = [c for c in copies + setup.contenders if c.fn is not None]
    fns = {c.name: c.fn for c in timed if c.fn is not None}
    resets = {c.name: c.reset for c in timed if c.reset is not None}
    if case.graph:
        timings, errors = env.timer.graphed(fns, CALLS_PER_GRAPH, resets)
    else:
        timings, errors = env.timer.flushed(fns, resets)
    for contender in timed:
        if contender.name in errors:
            contender.fail(errors[contender.name])
        else:
            contender.timing = timings.get(contender.name)
            if setup.inplace and contender.name not in ("copy_", "copy_ again") and not _finite(contender):
                contender.note = (contender.note + "; " if contender.note else "") + "non-finite values after timing"
    return _row(case, copies, setup.contenders)


def _row(case: Case, copies: list[Contender], contenders: list[Contender]) -> dict[str, Any]:
    copy, again = copies
    copy_us = copy.timing.median_us if copy.timing else None
    noise = None
    if copy.timing and again.timing:
        noise = abs(again.timing.median_us / copy.timing.median_us - 1)
    copy_gbps = case.nbytes / (copy_us * 1e-6) / 1e9 if copy_us else None
    cells: dict[str, Any] = {}
    for c in contenders:
        cell: dict[str, Any] = {"status": c.status, "note": c.note}
        if c.nbytes is not None:
            cell["bytes"] = c.nbytes
        if c.first_call_s is not None:
            cell["first_call_s"] = round(c.first_call_s, 4)
        if c.status == "ok" and c.timing is not None:
            nbytes = c.nbytes if c.nbytes is not None else case.nbytes
            gbps = nbytes / (c.timing.median_us * 1e-6) / 1e9
            cell.update(us=c.timing.median_us, low_us=c.timing.low_us, high_us=c.timing.high_us,
                        samples=c.timing.samples, gbps=gbps, x_copy=gbps / copy_gbps if copy_gbps else None)
        elif c.status == "ok":
            cell["status"] = "not timed"
        cells[c.name] = cell
    return {
        "family": case.family, "op": case.op, "variant": case.variant, "label": case.label, "dtype": case.dtype,
        "tokens": case.tokens, "shape": dict(case.params), "group": case.group, "bytes": case.nbytes,
        "formula": case.formula, "timing": "graph" if case.graph else "flush",
        "calls_per_graph": CALLS_PER_GRAPH if case.graph else None,
        "copy_us": copy_us, "copy_gbps": copy_gbps, "noise": noise, "contenders": cells,
    }


# -- the sweep ---------------------------------------------------------------------------------------------------


def _error_row(case: Case, message: str) -> dict[str, Any]:
    return {
        "family": case.family, "op": case.op, "variant": case.variant, "label": case.label, "dtype": case.dtype,
        "tokens": case.tokens, "shape": dict(case.params), "group": case.group, "bytes": case.nbytes,
        "formula": case.formula, "timing": "graph" if case.graph else "flush",
        "calls_per_graph": CALLS_PER_GRAPH if case.graph else None, "copy_us": None, "copy_gbps": None,
        "noise": None, "contenders": {}, "error": message,
    }


def _versions() -> dict[str, Any]:
    import platform
    from importlib import metadata

    import torch

    import cujit

    try:
        triton: str | None = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = None
    return {"torch": torch.__version__, "triton": triton, "liger": liger.version(), "cujit": cujit.__version__,
            "python": platform.python_version()}


def run_sweep(cases: Sequence[Case], folder: Path, compile_mode: str = "static", argv: Sequence[str] = (),
              quick: bool = False, time_limit: float | None = None) -> int:
    """Run every case on the current GPU, print a line per row and the tables, write the report into ``folder``.

    The tables and the JSON are rewritten after every row, so a run stopped from outside keeps what it measured;
    with ``time_limit`` (seconds) no row starts after that much time and the rows left are listed as not run.
    Returns the exit code: 0 when every row ran (contenders may still be unavailable or wrong: the report says),
    1 without a GPU, with no rows, when the time limit left rows out, or when the CUDA context broke.
    """
    import datetime

    import torch

    from .report import progress_line, write_report

    if not torch.cuda.is_available():
        print("cujit bench --ops needs a CUDA GPU; none is visible here.", file=sys.stderr)
        return 1
    if not cases:
        print("cujit bench --ops: no row matches the --ops, --tokens and --sizes given.", file=sys.stderr)
        return 1
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    meta: dict[str, Any] = {
        "device": torch.cuda.get_device_name(index), "sms": props.multi_processor_count,
        "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0), "memory_bytes": props.total_memory,
        **_versions(), "compile": compile_mode, "quick": quick, "argv": list(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "calls_per_graph": CALLS_PER_GRAPH,
    }
    print(f"cujit serving-op benchmark on {meta['device']} ({meta['sms']} SMs, L2 {meta['l2_bytes'] / 1e6:.0f} MB): "
          f"{len(cases)} rows; torch {meta['torch']}, triton {meta['triton']}, "
          f"liger-kernel {meta['liger'] or 'not installed'}; torch.compile {compile_mode}", flush=True)
    env = Env("cuda", Compiler(compile_mode), GpuTimer(), torch.cuda.synchronize)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    broken = False
    skipped: list[Case] = []
    with torch.no_grad():
        for i, case in enumerate(cases, 1):
            if time_limit is not None and time.perf_counter() - start > time_limit:
                skipped = list(cases[i - 1:])
                print(f"time limit of {time_limit:.0f} s reached: {len(skipped)} rows not run", file=sys.stderr,
                      flush=True)
                break
            torch.manual_seed(i)
            try:
                row = run_case(case, env)
            except Exception as exc:  # one row's failure (out of memory, a bug) must not lose the whole sweep
                _print_traceback(case.label)
                row = _error_row(case, f"row failed: {_short(exc)}")
                try:
                    torch.cuda.synchronize()
                except Exception:  # a kernel fault ends the CUDA context: nothing after it can be measured
                    broken = True
            rows.append(row)
            gc.collect()  # the row's tensors and graphs, before the next row allocates its own
            torch.cuda.empty_cache()
            print(progress_line(i, len(cases), row, time.perf_counter() - start), flush=True)
            write_report(rows, {**meta, "partial": True}, folder, plots=False)
            if broken:
                print("the CUDA context broke: stopping; the rows so far are written", file=sys.stderr, flush=True)
                break
    meta["elapsed_s"] = round(time.perf_counter() - start, 1)
    meta["not_run"] = [f"{c.label} {c.dtype} T={c.tokens} {c.shape_text()}" for c in skipped]
    meta["compile_first_calls_s"] = round(sum(
        r["contenders"].get("compile", {}).get("first_call_s", 0.0) for r in rows), 1)
    result = write_report(rows, meta, folder)
    print()
    print(result["text"])
    plots = f"{len(result['plots'])} plots" if result["plots"] else result["plot_message"]
    print(f"wrote {result['markdown']}, {result['json']}; {plots} (in {folder}); {meta['elapsed_s']:.0f} s, of "
          f"which torch.compile's first calls {meta['compile_first_calls_s']:.0f} s", flush=True)
    return 1 if broken or skipped else 0
