"""Symbolic tensor checks: ``TensorMatcher``, the ``Symbolic*`` types, ``TensorCheck`` and the check generator.

Two ways to use them:

* the chain of the guide, ``TensorMatcher([N]).with_dtype(...).verify(a).verify(b)``, which binds the symbols
  themselves and suits code that builds its symbols per call;
* ``TensorCheck(dst=matcher, src=matcher)``, built once, whose call verifies all tensors and returns the bound
  values by name. For torch and CuPy tensors it runs generated code (a few attribute reads and comparisons); on
  any mismatch, and for every other producer, it runs :func:`verify_info`, the reference verifier and the only
  place that words errors. The two therefore give the same verdicts, values and messages.

:class:`CheckEmitter` writes the generated checks; ops (``ops.py``) use it too, inlined into their launch code.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

from . import codegen, frameworks
from .dtypes import DTYPES, DType, as_dtype
from .errors import CujitError, TensorMatchError
from .tensors import (
    DEVICE_CODES,
    Device,
    TensorInfo,
    UnsupportedDTypeError,
    UnsupportedLayoutError,
    contiguous_strides,
    describe,
    device,
    element_strides,
    is_contiguous,
    tensor_info,
)

__all__ = [
    "CheckEmitter", "MatchSpec", "SymbolicDType", "SymbolicDevice", "SymbolicShape", "SymbolicSize", "TensorCheck",
    "TensorMatcher", "check_env", "info_of", "refresh", "verify_info",
]

_DL_COMPLEX = 5  # DLPack's kDLComplex
_FLOAT_CODES = (2, 4, 5)  # kDLFloat, kDLBfloat, kDLComplex

_UNBOUND = object()
_SERIALS = itertools.count(1)


class _Symbol:
    """A value that binds at its first match and must match the same value afterwards."""

    __slots__ = ("_by", "_owner", "_value", "name")
    _kind = "symbol"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self._kind
        self._value: Any = _UNBOUND
        self._by = ""
        self._owner = 0

    def unwrap(self) -> Any:
        """The bound value. Raises ``CujitError`` if nothing has bound it yet."""
        if self._value is _UNBOUND:
            raise CujitError(f"{self._kind} {self.name!r} is not bound: verify a tensor that matches it first")
        return self._value

    @property
    def is_bound(self) -> bool:
        return self._value is not _UNBOUND

    def reset(self) -> None:
        """Forget the bound value, so the symbol can be used for another call."""
        self._value = _UNBOUND
        self._by = ""

    def __repr__(self) -> str:
        value = "unbound" if self._value is _UNBOUND else repr(self._value)
        return f"{type(self).__name__}({self.name!r}: {value})"

    def __getstate__(self) -> tuple[str, Any, str, int]:
        return (self.name, self._value, self._by, self._owner)

    def __setstate__(self, state: tuple[str, Any, str, int]) -> None:
        self.name, self._value, self._by, self._owner = state


class SymbolicSize(_Symbol):
    """A dimension size or stride, shared between tensors and dimensions."""

    __slots__ = ()
    _kind = "size"

    def unwrap(self) -> int:
        return int(super().unwrap())


class SymbolicShape(_Symbol):
    """Zero or more leading dimensions, shared between tensors; ``unwrap()`` gives a tuple of ints.

    It may only be the first entry of a shape, and only on contiguous tensors:
    ``TensorMatcher([batch, D])`` matches ``[D]``, ``[4, D]``, ``[2, 3, D]``, ...
    """

    __slots__ = ()
    _kind = "shape"

    def unwrap(self) -> tuple[int, ...]:
        return tuple(super().unwrap())


class SymbolicDType(_Symbol):
    """A dtype shared between tensors; ``unwrap()`` gives a :class:`~cujit.DType`."""

    __slots__ = ()
    _kind = "dtype"

    def unwrap(self) -> DType:
        value: DType = super().unwrap()
        return value


class SymbolicDevice(_Symbol):
    """A device shared between tensors; ``unwrap()`` gives an object with ``.type`` and ``.index``."""

    __slots__ = ()
    _kind = "device"

    def unwrap(self) -> Device:
        value: Device = super().unwrap()
        return value


Dim = Union[int, SymbolicSize]  # noqa: UP007 - a runtime alias, read on Python 3.10
Entry = Union[int, SymbolicSize, SymbolicShape]  # noqa: UP007


@dataclass(frozen=True, eq=False)
class MatchSpec:
    """An immutable snapshot of one matcher's requirements, what the verifiers and the generator read."""

    shape: tuple[Entry, ...]
    strides: tuple[Dim, ...] | None
    dtypes: tuple[DType, ...] | None
    dtype_symbol: SymbolicDType | None
    device_kinds: tuple[str, ...] | None
    device_symbol: SymbolicDevice | None
    align: int

    @property
    def batch(self) -> SymbolicShape | None:
        """The leading SymbolicShape, if the shape starts with one."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, SymbolicShape) else None

    @property
    def dims(self) -> tuple[Dim, ...]:
        """The fixed dimensions: the whole shape, or the dimensions after the leading SymbolicShape."""
        return self.shape[1:] if self.batch is not None else self.shape  # type: ignore[return-value]

    def symbols(self) -> list[_Symbol]:
        out: list[_Symbol] = [d for d in (*self.shape, *(self.strides or ())) if isinstance(d, _Symbol)]
        out += [s for s in (self.dtype_symbol, self.device_symbol) if s is not None]
        return out

    def on_device(self, kinds: tuple[str, ...], symbol: SymbolicDevice) -> MatchSpec:
        """This spec, further restricted to ``kinds`` and bound to the device ``symbol``."""
        return replace(self, device_kinds=kinds, device_symbol=symbol)


def _check_dims(values: Sequence[object], what: str) -> list[Entry]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{what}: expected a list of ints, -1 or SymbolicSize, got {type(values).__name__}")
    out: list[Entry] = []
    for i, v in enumerate(values):
        if isinstance(v, SymbolicShape):
            if what != "shape" or i != 0:
                raise ValueError(f"{what}[{i}]: a SymbolicShape may only be the first entry of a shape")
            out.append(v)
        elif isinstance(v, SymbolicSize):
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            if what == "shape" and v < -1:
                raise ValueError(f"{what}[{i}]: expected a size >= 0 or -1 (any), got {v}")
            out.append(v)
        else:
            raise TypeError(f"{what}[{i}]: expected an int, -1 or SymbolicSize, got {v!r} of type {type(v).__name__}")
    return out


class TensorMatcher:
    """What a tensor argument must look like.

    Args:
        shape: one entry per dimension: an int (that size), ``-1`` (any size) or a :class:`SymbolicSize`; the
            first entry may be a :class:`SymbolicShape` (any number of leading dimensions).
    """

    def __init__(self, shape: Sequence[Entry]) -> None:
        self._shape = _check_dims(shape, "shape")
        self._strides: list[Dim] | None = None
        self._dtypes: tuple[DType, ...] | None = None
        self._dtype_symbol: SymbolicDType | None = None
        self._device_kinds: tuple[str, ...] | None = None
        self._device_symbol: SymbolicDevice | None = None
        self._align = 1
        self._verified = 0
        self._serial = next(_SERIALS)  # not id(): a dead matcher's id is reused by the next one

    def with_strides(self, strides: Sequence[Dim]) -> TensorMatcher:
        """Require these strides (in elements) instead of contiguity; ``-1`` is any stride."""
        if self._shape and isinstance(self._shape[0], SymbolicShape):
            raise ValueError("with_strides: a shape that starts with a SymbolicShape is for contiguous tensors only")
        values = _check_dims(strides, "strides")
        if len(values) != len(self._shape):
            raise ValueError(
                f"with_strides: expected {len(self._shape)} strides (one per dimension), got {len(values)}")
        self._strides = values  # type: ignore[assignment]
        return self

    def with_dtype(self, *dtypes: object, symbol: SymbolicDType | None = None) -> TensorMatcher:
        """Allow only these dtypes (none given: any); ``symbol`` binds the dtype found."""
        if symbol is not None and not isinstance(symbol, SymbolicDType):
            raise TypeError(f"with_dtype: symbol must be a SymbolicDType, got {type(symbol).__name__}")
        self._dtypes = tuple(as_dtype(d) for d in dtypes) or None
        self._dtype_symbol = symbol
        return self

    def with_device(self, *kinds: str, symbol: SymbolicDevice | None = None) -> TensorMatcher:
        """Allow only these device kinds (``"cuda"``, ``"cpu"``, ...; none given: any); ``symbol`` binds the device."""
        if symbol is not None and not isinstance(symbol, SymbolicDevice):
            raise TypeError(f"with_device: symbol must be a SymbolicDevice, got {type(symbol).__name__}")
        for kind in kinds:
            if kind not in DEVICE_CODES:
                raise ValueError(f"with_device: expected a device kind such as 'cuda' or 'cpu', got {kind!r}")
        self._device_kinds = tuple(kinds) or None
        self._device_symbol = symbol
        return self

    def with_alignment(self, nbytes: int) -> TensorMatcher:
        """Require the data pointer to be a multiple of ``nbytes`` (a power of two), as vector loads need."""
        if not isinstance(nbytes, int) or nbytes < 1 or nbytes & (nbytes - 1):
            raise ValueError(f"with_alignment: expected a power of two, got {nbytes!r}")
        self._align = nbytes
        return self

    def spec(self) -> MatchSpec:
        """A snapshot of the requirements as they are now (later ``with_*`` calls do not change it)."""
        return MatchSpec(
            shape=tuple(self._shape),
            strides=None if self._strides is None else tuple(self._strides),
            dtypes=self._dtypes,
            dtype_symbol=self._dtype_symbol,
            device_kinds=self._device_kinds,
            device_symbol=self._device_symbol,
            align=self._align,
        )

    def verify(self, tensor: Any, name: str | None = None) -> TensorMatcher:
        """Check ``tensor``; bind the symbols it meets. Returns the matcher, so calls chain.

        Raises:
            TensorMatchError: the tensor does not match; nothing is bound then.
            TypeError: ``tensor`` is not a tensor.
        """
        self._verified += 1
        label = repr(name) if name is not None else f"tensor #{self._verified}"
        spec = self.spec()
        info = info_of(tensor, label)
        # An unnamed tensor is known by its position in its matcher's chain: say when that was another matcher.
        bindings = {s: (s._value, _binder(s, self)) for s in spec.symbols() if s.is_bound}
        verify_info(spec, info, label, bindings)
        for sym, (value, by) in bindings.items():
            if not sym.is_bound:
                sym._value, sym._by, sym._owner = value, by, self._serial
        return self


def _binder(sym: _Symbol, matcher: TensorMatcher) -> str:
    """Who bound ``sym``, as ``matcher``'s messages should say it."""
    if sym._owner == matcher._serial or not sym._by.startswith("tensor #"):
        return sym._by
    words = sym._by.split(" ", 2)  # "tensor", "#N", "dimension 0"
    return f"{words[0]} {words[1]} of another matcher {words[2]}" if len(words) == 3 else sym._by


def info_of(tensor: Any, label: str) -> TensorInfo:
    """``tensor_info`` with errors that name the tensor."""
    try:
        return tensor_info(tensor)
    except UnsupportedDTypeError as exc:
        known = ", ".join(d.name for d in DTYPES)
        raise TensorMatchError(f"{label}: dtype: expected one that cujit supports ({known}), got {exc.name}") from None
    except UnsupportedLayoutError as exc:
        raise TensorMatchError(f"{label}: layout: expected plain memory in whole elements, got {exc}") from None
    except TypeError as exc:
        raise TypeError(f"{label}: {exc}") from None


def verify_info(spec: MatchSpec, info: TensorInfo, label: str, bindings: dict[_Symbol, tuple[Any, str]]) -> None:
    """The reference verifier: check ``info`` against ``spec``, adding new bindings to ``bindings``."""

    def fail(what: str, want: str, got: object) -> TensorMatchError:
        return TensorMatchError(f"{label}: {what}: expected {want}, got {got}; {describe(info)}")

    def want_symbol(sym: _Symbol) -> str:
        value, by = bindings[sym]
        return f"{sym.name} = {value} (bound by {by})"

    def match(sym: _Symbol, value: Any, what: str) -> None:
        if sym in bindings:
            if bindings[sym][0] != value:
                raise fail(what, want_symbol(sym), value)
        else:
            bindings[sym] = (value, f"{label} {what}")

    dims = spec.dims
    batch = spec.batch
    lead = len(info.shape) - len(dims)
    if batch is None and lead != 0:
        raise fail("rank", f"{len(dims)} dimension{'' if len(dims) == 1 else 's'}", f"{len(info.shape)}")
    if batch is not None:
        if lead < 0:
            raise fail("rank", f"at least {len(dims)} dimension{'' if len(dims) == 1 else 's'}", f"{len(info.shape)}")
        match(batch, tuple(info.shape[:lead]), "leading dimensions" if dims else "shape")
    for i, (want, got) in enumerate(zip(dims, info.shape[lead:], strict=True), start=lead):
        if isinstance(want, SymbolicSize):
            match(want, got, f"dimension {i}")
        elif want != -1 and want != got:
            raise fail(f"dimension {i}", str(want), got)
    if spec.strides is None:
        if not is_contiguous(info.shape, info.strides):
            # Size-1 dimensions may have any stride: show them as "*".
            pairs = zip(contiguous_strides(info.shape), info.shape, strict=True)
            wanted = [str(w) if size != 1 else "*" for w, size in pairs]
            want_strides = "<" + ", ".join(wanted) + ">"
            got_strides = "<" + ", ".join(map(str, info.strides)) + ">"
            raise fail("layout", f"contiguous strides {want_strides}", got_strides)
    else:
        for i, (want, got) in enumerate(zip(spec.strides, info.strides, strict=True)):
            if isinstance(want, SymbolicSize):
                match(want, got, f"stride {i}")
            elif want != -1 and want != got:
                raise fail(f"stride {i}", str(want), got)
    if spec.dtypes is not None and info.dtype not in spec.dtypes:
        raise fail("dtype", " or ".join(d.name for d in spec.dtypes), info.dtype.name)
    if spec.dtype_symbol is not None:
        match(spec.dtype_symbol, info.dtype, "dtype")
    if spec.device_kinds is not None and info.device.type not in spec.device_kinds:
        raise fail("device", " or ".join(spec.device_kinds), info.device)
    if spec.device_symbol is not None:
        match(spec.device_symbol, info.device, "device")
    if spec.align > 1 and info.ptr % spec.align:
        raise fail("alignment", f"a data pointer aligned to {spec.align} bytes",
                   f"{info.ptr:#x} ({info.ptr % spec.align} bytes past a multiple of {spec.align})")


# ------------------------------------------------------------------------------------------------ generator
class _DeviceMemo(dict):  # type: ignore[type-arg]
    """(type, index) -> shared :class:`Device`, filled on first sight."""

    def __missing__(self, key: tuple[str, int]) -> Device:
        value = device(*key)
        self[key] = value
        return value


class _DTypeMemo(dict):  # type: ignore[type-arg]
    """Native dtype object -> :class:`DType`, filled on first sight."""

    def __missing__(self, key: Any) -> DType:
        value = as_dtype(key)
        self[key] = value
        return value


def check_env() -> dict[str, Any]:
    """The globals that generated checks read (the library classes start out absent: see ``frameworks``)."""
    return {
        "_Tensor": frameworks.ABSENT, "_Parameter": frameworks.ABSENT, "_ndarray": frameworks.ABSENT,
        "_DEV": _DeviceMemo(), "_DT": _DTypeMemo(),
        "_estrides": element_strides, "_is_contiguous": is_contiguous, "_tuple_new": tuple.__new__,
    }


class CheckEmitter:
    """Writes the fast checks of several tensors into one generated function.

    The lines answer only "matches, with the values now held in the symbols' variables" or "don't know" (they
    run ``miss``); the generic verifier then produces the verdict and the message. They never accept what the
    generic path rejects.

    Args:
        src: the source being generated.
        env: its globals (constants such as the allowed dtypes are added there).
        flavour: ``"torch"`` or ``"cupy"``: the class every tensor must have.
        miss: the statement that gives up (``return _slow(...)``).
        var_of: the local variable that holds a symbol's value.
    """

    def __init__(self, src: codegen.Source, env: dict[str, Any], flavour: str, miss: str,
                 var_of: Callable[[_Symbol], str]) -> None:
        self.src = src
        self.env = env
        self.flavour = flavour
        self.miss = miss
        self.var_of = var_of
        self.bound: set[_Symbol] = set()
        self._count = 0
        # A device symbol is held as an index where every matcher that names it allows only CUDA.
        self._cuda_only: set[_Symbol] = set()

    def declare_cuda_only(self, symbol: SymbolicDevice) -> None:
        """Hold ``symbol`` as a plain CUDA device index (every matcher naming it requires CUDA)."""
        self._cuda_only.add(symbol)

    def symbol_value(self, symbol: _Symbol) -> str:
        """An expression for the symbol's value as the generic path gives it (DType, Device, int, tuple)."""
        var = self.var_of(symbol)
        if isinstance(symbol, SymbolicDType):
            return f"_DT[{var}]"
        if isinstance(symbol, SymbolicDevice):
            return f"_DEV[('cuda', {var})]" if symbol in self._cuda_only else f"_DEV[{var}]"
        return var

    def _bind(self, symbol: _Symbol, expr: str, same: str = "!=") -> None:
        if symbol in self.bound:
            self.src(f"if {expr} {same} {self.var_of(symbol)}: {self.miss}")
        else:
            self.src(f"{self.var_of(symbol)} = {expr}")
            self.bound.add(symbol)

    def _dim(self, want: Entry, expr: str) -> None:
        if isinstance(want, _Symbol):
            self._bind(want, expr)
        elif want != -1:
            self.src(f"if {expr} != {want}: {self.miss}")

    def tensor(self, t: str, spec: MatchSpec, *, known_type: bool = False) -> None:
        """Check the tensor held in the variable ``t`` against ``spec``."""
        src, miss, torch = self.src, self.miss, self.flavour == "torch"
        i = self._count
        self._count += 1
        if not known_type:
            if torch:
                src(f"if {t}.__class__ is not _Tensor and {t}.__class__ is not _Parameter: {miss}")
            else:
                src(f"if {t}.__class__ is not _ndarray: {miss}")
        # The dtype is always read: one that cujit does not support fails on the generic path.
        allowed = spec.dtypes if spec.dtypes is not None else DTYPES
        single = torch and len(allowed) == 1
        key = f"_dtype_{self.flavour}{i}" if single else f"_dtypes_{self.flavour}{i}"
        self.env.setdefault("_natives", []).append((key, allowed, self.flavour, single))
        src(f"_dt{i} = {t}.dtype")
        src(f"if _dt{i} {'is not' if single else 'not in'} {key}: {miss}")
        if torch:
            # Lazy conjugate views exist for complex tensors, lazy negations also for their float `.imag`
            # views; the generic path refuses both, so the fast path must not accept them.
            if any(d.code == _DL_COMPLEX for d in allowed):
                src(f"if {t}.is_conj(): {miss}")
            if any(d.code in _FLOAT_CODES for d in allowed):
                src(f"if {t}.is_neg(): {miss}")
        if spec.dtype_symbol is not None:
            self._bind(spec.dtype_symbol, f"_dt{i}", "is not" if torch else "!=")
        if spec.device_kinds is not None or spec.device_symbol is not None:
            self._device(t, spec, i)
        src(f"_s{i} = {t}.shape")
        dims, batch = spec.dims, spec.batch
        if batch is None:
            src(f"if len(_s{i}) != {len(dims)}: {miss}")
            for d, want in enumerate(dims):
                self._dim(want, f"_s{i}[{d}]")
        else:
            if dims:
                src(f"if len(_s{i}) < {len(dims)}: {miss}")
                self._bind(batch, f"_s{i}[:{-len(dims)}]")
            else:
                self._bind(batch, f"_s{i}")
            for d, want in enumerate(dims):
                self._dim(want, f"_s{i}[{d - len(dims)}]")
        if spec.strides is None:
            if torch:
                src(f"if not {t}.is_contiguous(): {miss}")
            else:
                src(f"_st{i} = _estrides({t}.strides, {t}.itemsize)")
                src(f"if _st{i} is None or not _is_contiguous(_s{i}, _st{i}): {miss}")
        else:
            if torch:
                src(f"_st{i} = {t}.stride()")
            else:
                src(f"_st{i} = _estrides({t}.strides, {t}.itemsize)")
                src(f"if _st{i} is None: {miss}")
            for d, want in enumerate(spec.strides):
                self._dim(want, f"_st{i}[{d}]")
        if spec.align > 1:
            src(f"if {t}.{'data_ptr()' if torch else 'data.ptr'} % {spec.align}: {miss}")

    def _device(self, t: str, spec: MatchSpec, i: int) -> None:
        src, miss, sym = self.src, self.miss, spec.device_symbol
        kinds = spec.device_kinds
        if sym is not None and sym in self._cuda_only:
            if self.flavour == "torch":
                src(f"if not {t}.is_cuda: {miss}")
                self._bind(sym, f"{t}.get_device()")
            else:
                self._bind(sym, f"{t}.device.id")
            return
        if self.flavour == "cupy":
            src(f"_dv{i} = ('cuda', {t}.device.id)")
        elif kinds == ("cuda",):
            src(f"if not {t}.is_cuda: {miss}")
            src(f"_dv{i} = ('cuda', {t}.get_device())")
        elif kinds == ("cpu",):
            src(f"if not {t}.is_cpu: {miss}")
            src(f"_dv{i} = ('cpu', 0)")
        else:
            src(f"_dv{i} = {t}.device")
            src(f"_dv{i} = (_dv{i}.type, _dv{i}.index or 0)")
        if kinds is not None:
            src(f"if _dv{i}[0] not in {kinds!r}: {miss}")
        if sym is not None:
            self._bind(sym, f"_dv{i}")


def refresh(env: dict[str, Any]) -> None:
    """Bind ``env``'s library classes to the libraries imported so far, with the dtype objects its checks use.

    Until torch (or CuPy) is imported, the checks of that flavour compare with dtype sets that nothing matches;
    the generic path calls this on every run, so a library imported late takes the fast path from then on.
    """
    changed = frameworks.bind(env)
    if changed or "_natives_ready" not in env:
        env["_natives_ready"] = True
        for key, allowed, flavour, single in env.get("_natives", ()):
            natives = _native_dtypes(allowed, flavour)
            env[key] = (next(iter(natives)) if natives else _UNBOUND) if single else natives


def _native_dtypes(dtypes: tuple[DType, ...], flavour: str) -> frozenset[Any]:
    """The torch (or NumPy, for CuPy) dtype objects of ``dtypes`` that the library has."""
    out: set[Any] = set()
    if flavour == "torch":
        torch = frameworks.torch()
        for d in dtypes:
            native = getattr(torch, d.name, None) if torch is not None else None
            if native is not None:
                out.add(native)
        return frozenset(out)
    import numpy

    return frozenset(numpy.dtype(d.numpy_name) for d in dtypes if d.numpy_name is not None)


class TensorCheck:
    """Matchers for an op's tensor arguments, generated once; a call verifies them all and returns the symbols.

    ``TensorCheck(dst=m1, src=m2)(y, x)`` (or ``(dst=y, src=x)``) verifies ``y`` with ``m1`` and ``x`` with
    ``m2`` (keyword order is argument order) and returns the values of :attr:`symbols` as a named tuple, in order
    of first appearance: ``n, dtype = check(y, x)`` or ``check(y, x).dtype``. The symbols themselves are not
    bound, so one check serves any number of threads at once.
    """

    def __init__(self, **matchers: TensorMatcher) -> None:
        if not matchers:
            raise ValueError("TensorCheck: expected at least one named TensorMatcher")
        for name, m in matchers.items():
            if not isinstance(m, TensorMatcher):
                raise TypeError(f"TensorCheck: {name} must be a TensorMatcher, got {type(m).__name__}")
            if not codegen.is_identifier(name) or name.startswith("_"):
                raise ValueError(f"TensorCheck: {name!r} cannot name an argument (identifiers not starting with _)")
        self._matchers = dict(matchers)
        self.names = tuple(matchers)
        self._specs = tuple(m.spec() for m in matchers.values())
        symbols: list[_Symbol] = []
        for spec in self._specs:
            symbols += [s for s in spec.symbols() if s not in symbols]
        self.symbols: tuple[_Symbol, ...] = tuple(symbols)
        self._result = collections.namedtuple("TensorCheckResult", [s.name for s in symbols], rename=True)  # type: ignore[misc]
        self._env = self._generate()
        self._dispatch = self._env["dispatch"]

    def __call__(self, *tensors: Any, **named: Any) -> tuple[Any, ...]:
        """Verify the tensors (one per matcher, by position or by name); return the bound symbol values."""
        return self._dispatch(*tensors, **named)  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_check, (self._matchers,))

    def generic(self, *tensors: Any, **named: Any) -> tuple[Any, ...]:
        """The reference path: any DLPack producer, and the error messages."""
        refresh(self._env)
        if named:
            tensors = self._by_name(tensors, named)
        if len(tensors) != len(self._specs):
            raise TypeError(f"TensorCheck: expected {len(self._specs)} tensors ({', '.join(self.names)}), "
                            f"got {len(tensors)}")
        bindings: dict[_Symbol, tuple[Any, str]] = {}
        for name, spec, tensor in zip(self.names, self._specs, tensors, strict=True):
            verify_info(spec, info_of(tensor, repr(name)), repr(name), bindings)
        return self._result._make(bindings[s][0] for s in self.symbols)  # type: ignore[attr-defined,no-any-return]

    def _unusual_call(self, given: tuple[Any, ...], unknown: dict[str, Any]) -> tuple[Any, ...]:
        """A call with too many or too few tensors, or an unknown name: the generic path words the error."""
        if unknown:
            named = {n: t for n, t in zip(self.names, given, strict=False) if t is not _UNBOUND}
            return self.generic(**named, **unknown)
        return self.generic(*(t for t in given if t is not _UNBOUND))

    def _by_name(self, tensors: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, ...]:
        unknown = sorted(set(named) - set(self.names))
        if unknown:
            raise TypeError(f"TensorCheck: no tensor named {', '.join(unknown)} (its tensors: {', '.join(self.names)})")
        both = sorted(set(named) & set(self.names[: len(tensors)]))
        if both:
            raise TypeError(f"TensorCheck: {', '.join(both)} given both by position and by name")
        missing = [n for n in self.names[len(tensors):] if n not in named]
        if missing:
            raise TypeError(f"TensorCheck: expected {len(self._specs)} tensors ({', '.join(self.names)}), "
                            f"missing {', '.join(missing)}")
        return (*tensors, *(named[n] for n in self.names[len(tensors):]))

    def _generate(self) -> dict[str, Any]:
        env = check_env()
        env["_slow"] = self.generic
        env["_by_name"] = self._unusual_call
        env["_Result"] = self._result
        variables = {s: f"_v{i}" for i, s in enumerate(self.symbols)}
        params = ", ".join(self.names)
        src = codegen.Source()
        # Defaults and *more keep a wrong argument count on the generic path, which words the error.
        defaults = ", ".join(f"{n}=_NO" for n in self.names)
        env["_NO"] = _UNBOUND
        # Named `TensorCheck` so that Python's own argument errors read "TensorCheck() got multiple values ...".
        with src.block(f"def TensorCheck({defaults}, *_more, **_unknown)"):
            with src.block(f"if _more or _unknown or {self.names[-1]} is _NO"):
                src(f"return _by_name(({params}, *_more), _unknown)")
            for flavour in ("torch", "cupy"):
                with src.block(f"if {self.names[0]}.__class__ is {'_Tensor' if flavour == 'torch' else '_ndarray'}"):
                    emit = CheckEmitter(src, env, flavour, f"return _slow({params})", variables.__getitem__)
                    for position, (name, spec) in enumerate(zip(self.names, self._specs, strict=True)):
                        emit.tensor(name, spec, known_type=position == 0)
                    values = ", ".join(emit.symbol_value(s) for s in self.symbols)
                    src(f"return _tuple_new(_Result, ({values}{',' if len(self.symbols) == 1 else ''}))")
            src(f"return _slow({params})")
        codegen.build(src, env, kind="TensorCheck", name=f"({', '.join(self.names)})")
        env["dispatch"] = env.pop("TensorCheck")
        refresh(env)
        return env


def _rebuild_check(matchers: dict[str, TensorMatcher]) -> TensorCheck:
    return TensorCheck(**matchers)
