"""Symbolic tensor checks: ``TensorMatcher``, the ``Symbolic*`` types and the compiled ``TensorCheck``.

Two ways to use them:

* the chain of the guide, ``TensorMatcher([N]).with_dtype(...).verify(a).verify(b)``, which binds the symbols
  themselves and suits code that builds its symbols per call;
* ``TensorCheck(dst=matcher, src=matcher)``, built once per op, whose call verifies all tensors and returns the
  bound values. For torch and CuPy tensors it runs generated code (a few attribute reads and comparisons); on any
  mismatch, and for every other producer, it runs the generic verifier, which is the reference and the only
  place that words errors. The two therefore give the same verdicts, values and messages.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Union

from .dtypes import DTYPES, DType, as_dtype
from .errors import CujitError, TensorMatchError
from .tensors import (
    DEVICE_CODES,
    Device,
    TensorInfo,
    UnsupportedDTypeError,
    UnsupportedLayoutError,
    cupy_array_type,
    describe,
    device,
    is_contiguous,
    tensor_info,
    torch_tensor_type,
)

__all__ = ["SymbolicDType", "SymbolicDevice", "SymbolicSize", "TensorCheck", "TensorMatcher"]

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


class SymbolicSize(_Symbol):
    """A dimension size or stride, shared between tensors and dimensions."""

    __slots__ = ()
    _kind = "size"

    def unwrap(self) -> int:
        return int(super().unwrap())


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


class _Spec:
    """An immutable snapshot of one matcher's requirements."""

    __slots__ = ("align", "device_kinds", "device_symbol", "dtype_symbol", "dtypes", "shape", "strides")

    def __init__(self, matcher: TensorMatcher) -> None:
        self.shape: tuple[Dim, ...] = tuple(matcher._shape)
        self.strides: tuple[Dim, ...] | None = None if matcher._strides is None else tuple(matcher._strides)
        self.dtypes: tuple[DType, ...] | None = matcher._dtypes
        self.dtype_symbol = matcher._dtype_symbol
        self.device_kinds: tuple[str, ...] | None = matcher._device_kinds
        self.device_symbol = matcher._device_symbol
        self.align = matcher._align

    def symbols(self) -> list[_Symbol]:
        out: list[_Symbol] = [d for d in (*self.shape, *(self.strides or ())) if isinstance(d, SymbolicSize)]
        out += [s for s in (self.dtype_symbol, self.device_symbol) if s is not None]
        return out


def _check_dims(values: Sequence[object], what: str) -> list[Dim]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{what}: expected a list of ints, -1 or SymbolicSize, got {type(values).__name__}")
    out: list[Dim] = []
    for i, v in enumerate(values):
        if isinstance(v, SymbolicSize):
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            if what == "shape" and v < -1:
                raise ValueError(f"{what}[{i}]: expected a size >= 0 or -1 (any), got {v}")
            out.append(v)
        else:
            raise TypeError(f"{what}[{i}]: expected an int, -1 or SymbolicSize, got {v!r} of type {type(v).__name__}")
    return out


class TensorMatcher:
    """What a tensor argument must look like; see ``API.md`` section 4.

    Args:
        shape: one entry per dimension: an int (that size), ``-1`` (any size) or a :class:`SymbolicSize`.
    """

    def __init__(self, shape: Sequence[Dim]) -> None:
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
        values = _check_dims(strides, "strides")
        if len(values) != len(self._shape):
            raise ValueError(
                f"with_strides: expected {len(self._shape)} strides (one per dimension), got {len(values)}")
        self._strides = values
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

    def verify(self, tensor: Any, name: str | None = None) -> TensorMatcher:
        """Check ``tensor``; bind the symbols it meets. Returns the matcher, so calls chain.

        Raises:
            TensorMatchError: the tensor does not match; nothing is bound then.
            TypeError: ``tensor`` is not a tensor.
        """
        self._verified += 1
        label = repr(name) if name is not None else f"tensor #{self._verified}"
        spec = _Spec(self)
        info = _info(tensor, label)
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


def _info(tensor: Any, label: str) -> TensorInfo:
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


def verify_info(spec: _Spec, info: TensorInfo, label: str, bindings: dict[_Symbol, tuple[Any, str]]) -> None:
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

    if len(info.shape) != len(spec.shape):
        rank = len(spec.shape)
        raise fail("rank", f"{rank} dimension{'' if rank == 1 else 's'}", f"{len(info.shape)}")
    for i, (want, got) in enumerate(zip(spec.shape, info.shape, strict=True)):
        if isinstance(want, SymbolicSize):
            match(want, got, f"dimension {i}")
        elif want != -1 and want != got:
            raise fail(f"dimension {i}", str(want), got)
    if spec.strides is None:
        if not is_contiguous(info.shape, info.strides):
            from .tensors import contiguous_strides

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


class TensorCheck:
    """Matchers for an op's tensor arguments, compiled once; a call verifies them all and returns the symbols.

    ``TensorCheck(dst=m1, src=m2)(y, x)`` verifies ``y`` with ``m1`` and ``x`` with ``m2`` (keyword order is
    argument order) and returns the values of :attr:`symbols`, in order of first appearance, as a tuple. The
    symbols themselves are not bound, so one check serves any number of threads at once.
    """

    def __init__(self, **matchers: TensorMatcher) -> None:
        if not matchers:
            raise ValueError("TensorCheck: expected at least one named TensorMatcher")
        for name, m in matchers.items():
            if not isinstance(m, TensorMatcher):
                raise TypeError(f"TensorCheck: {name} must be a TensorMatcher, got {type(m).__name__}")
        self.names = tuple(matchers)
        self._specs = tuple(_Spec(m) for m in matchers.values())
        symbols: list[_Symbol] = []
        for spec in self._specs:
            symbols += [s for s in spec.symbols() if s not in symbols]
        self.symbols: tuple[_Symbol, ...] = tuple(symbols)
        generated = _generate(self)
        self._torch = generated["torch"]
        self._cupy = generated["cupy"]
        self._env: dict[str, Any] = self._torch.__globals__
        # A call goes straight to the generated dispatcher: a class of this instance's own holds it as
        # __call__, which saves a Python frame per call over a method that forwards.
        self.__class__ = type("TensorCheck", (TensorCheck,), {"__call__": staticmethod(generated["dispatch"]),
                                                             "__module__": TensorCheck.__module__})
        self._bind_types()

    def __call__(self, *tensors: Any) -> tuple[Any, ...]:
        """Verify ``tensors`` (one per matcher, in order); return the bound symbol values."""
        return self.generic(*tensors)  # replaced per instance by the generated dispatcher

    def generic(self, *tensors: Any) -> tuple[Any, ...]:
        """The reference path: any DLPack producer, and the error messages."""
        self._bind_types()
        if len(tensors) != len(self._specs):
            raise TypeError(f"TensorCheck: expected {len(self._specs)} tensors ({', '.join(self.names)}), "
                            f"got {len(tensors)}")
        bindings: dict[_Symbol, tuple[Any, str]] = {}
        for name, spec, tensor in zip(self.names, self._specs, tensors, strict=True):
            verify_info(spec, _info(tensor, repr(name)), repr(name), bindings)
        return tuple(bindings[s][0] for s in self.symbols)

    def _bind_types(self) -> None:
        """Point the fast paths at torch.Tensor / cupy.ndarray once those libraries are imported."""
        if self._env["T_torch"] is None:
            self._env["T_torch"] = torch_tensor_type()
        if self._env["T_cupy"] is None:
            self._env["T_cupy"] = cupy_array_type()


def _fast_body(check: TensorCheck, flavour: str, env: dict[str, Any], miss: str) -> list[str]:
    """Lines that verify ``check``'s tensors of one flavour, running ``miss`` on anything unexpected.

    The lines answer only "matches, with these values" (they end in a ``return``) or "don't know" (``miss``);
    the generic verifier then produces the verdict and the message. They must never accept what the generic
    path rejects.
    """
    f = flavour
    args = [f"t{i}" for i in range(len(check._specs))]
    body: list[str] = [f"if type({a}) is not T_{f}: {miss}" for a in args]
    sym_var: dict[_Symbol, str] = {}
    for i, spec in enumerate(check._specs):
        t = f"t{i}"
        # The dtype is always read: one that cujit does not support fails on the generic path.
        body.append(f"dt{i} = {t}.dtype")
        allowed = spec.dtypes if spec.dtypes is not None else DTYPES
        env[f"_allowed_{f}{i}"] = _native_dtypes(allowed, flavour)
        body.append(f"if dt{i} not in _allowed_{f}{i}: {miss}")
        if flavour == "torch":
            # Lazy conjugate views exist for complex tensors, lazy negations also for their float `.imag`
            # views; the generic path refuses both, so the fast path must not accept them.
            if any(d.code == _DL_COMPLEX for d in allowed):
                body.append(f"if {t}.is_conj(): {miss}")
            if any(d.code in _FLOAT_CODES for d in allowed):
                body.append(f"if {t}.is_neg(): {miss}")
        dtype_symbol = spec.dtype_symbol
        if dtype_symbol is not None:
            if dtype_symbol in sym_var:
                body.append(f"if dt{i} != {sym_var[dtype_symbol]}: {miss}")
            else:
                sym_var[dtype_symbol] = f"dt{i}"
        if spec.device_kinds is not None or spec.device_symbol is not None:
            if flavour == "cupy":
                body += [f"dk{i} = 'cuda'", f"di{i} = {t}.device.id"]
            elif spec.device_kinds == ("cuda",):
                body += [f"if not {t}.is_cuda: {miss}", f"dk{i} = 'cuda'", f"di{i} = {t}.get_device()"]
            elif spec.device_kinds == ("cpu",):
                body += [f"if not {t}.is_cpu: {miss}", f"dk{i} = 'cpu'", f"di{i} = 0"]
            else:
                body += [f"dv{i} = {t}.device", f"dk{i} = dv{i}.type", f"di{i} = dv{i}.index or 0"]
            if spec.device_kinds is not None:
                body.append(f"if dk{i} not in {spec.device_kinds!r}: {miss}")
            sym = spec.device_symbol
            if sym is not None:
                if sym in sym_var:
                    body.append(f"if dk{i} != {sym_var[sym]}[0] or di{i} != {sym_var[sym]}[1]: {miss}")
                else:
                    body.append(f"dev{i} = (dk{i}, di{i})")
                    sym_var[sym] = f"dev{i}"
        body.append(f"s{i} = {t}.shape")
        body.append(f"if len(s{i}) != {len(spec.shape)}: {miss}")
        for d, want in enumerate(spec.shape):
            _emit_dim(body, sym_var, want, f"s{i}[{d}]", f"sz{i}_{d}", miss)
        if spec.strides is None:
            if flavour == "torch":
                body.append(f"if not {t}.is_contiguous(): {miss}")
            else:
                env["_is_contiguous"] = is_contiguous
                env["_strides"] = _whole_element_strides
                body.append(f"st{i} = _strides({t}.strides, {t}.itemsize)")
                body.append(f"if st{i} is None or not _is_contiguous(s{i}, st{i}): {miss}")
        else:
            if flavour == "torch":
                body.append(f"st{i} = {t}.stride()")
            else:
                env["_strides"] = _whole_element_strides
                body.append(f"st{i} = _strides({t}.strides, {t}.itemsize)")
                body.append(f"if st{i} is None: {miss}")
            for d, want in enumerate(spec.strides):
                _emit_dim(body, sym_var, want, f"st{i}[{d}]", f"sd{i}_{d}", miss)
        if spec.align > 1:
            ptr = f"{t}.data_ptr()" if flavour == "torch" else f"{t}.data.ptr"
            body.append(f"if {ptr} % {spec.align}: {miss}")
    outs = []
    for symbol in check.symbols:
        var = sym_var[symbol]
        if isinstance(symbol, SymbolicDType):
            outs.append(f"_DT[{var}]")
        elif isinstance(symbol, SymbolicDevice):
            outs.append(f"_DEV[{var}]")
        else:
            outs.append(var)
    body.append(f"return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
    return body


def _generate(check: TensorCheck) -> dict[str, Any]:
    """Generate a check's functions in one namespace.

    ``torch`` and ``cupy`` are one flavour's fast path (``None`` on a miss); ``dispatch`` has both inline and
    falls back to the generic verifier.
    """
    env: dict[str, Any] = {"_DEV": _DeviceMemo(), "_DT": _DTypeMemo(), "T_torch": None, "T_cupy": None,
                           "_generic": check.generic, "_NO": _UNBOUND}
    params = ", ".join(f"t{i}" for i in range(len(check._specs)))
    fallback = f"return _generic({params})"
    torch_none = _fast_body(check, "torch", env, "return None")
    cupy_none = _fast_body(check, "cupy", env, "return None")
    torch_fall = _fast_body(check, "torch", env, fallback)
    cupy_fall = _fast_body(check, "cupy", env, fallback)
    lines = [f"def torch({params}):", *("    " + b for b in torch_none)]
    lines += [f"def cupy({params}):", *("    " + b for b in cupy_none)]
    # Defaults and *more keep a wrong argument count on the generic path, which words the error.
    last = f"t{len(check._specs) - 1}"
    defaults = ", ".join(f"t{i}=_NO" for i in range(len(check._specs)))
    lines += [f"def dispatch({defaults}, *more):",
              f"    if more or {last} is _NO: return _generic(*(t for t in ({params}, *more) if t is not _NO))",
              "    first = type(t0)", "    if first is T_torch:"]
    lines += ["        " + b for b in torch_fall[1:]]  # the first line re-checks t0's type
    lines += ["    if first is T_cupy:"]
    lines += ["        " + b for b in cupy_fall[1:]]
    lines += [f"    {fallback}"]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<cujit TensorCheck>", "exec"), env, namespace)
    return namespace


def _emit_dim(body: list[str], sym_var: dict[_Symbol, str], want: Dim, expr: str, var: str, miss: str) -> None:
    if isinstance(want, SymbolicSize):
        if want in sym_var:
            body.append(f"if {expr} != {sym_var[want]}: {miss}")
        else:
            body.append(f"{var} = {expr}")
            sym_var[want] = var
    elif want != -1:
        body.append(f"if {expr} != {want}: {miss}")


def _whole_element_strides(byte_strides: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    if any(s % itemsize for s in byte_strides):
        return None
    return tuple(s // itemsize for s in byte_strides)


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


def _native_dtypes(dtypes: tuple[DType, ...], flavour: str) -> frozenset[Any]:
    if flavour == "torch":
        out = set()
        for d in dtypes:
            try:
                out.add(d.torch)
            except (ImportError, AttributeError):
                pass
        return frozenset(out)
    import numpy

    found = set()
    for d in dtypes:
        if d.numpy_name is not None:
            found.add(numpy.dtype(d.numpy_name))
    return frozenset(found)

