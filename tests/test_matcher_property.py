"""Property tests: TensorCheck's torch fast path against the generic verifier, and DLPack against torch and NumPy.

The generic verifier is the reference ("fast paths for torch and CuPy give exactly the answers
of the generic path"). For random CPU tensors and views, and random matchers, the fast path must either decline
(return None) or return exactly what the generic path returns, and must decline whenever the generic path
rejects. The metadata the generic path reads through DLPack must equal what torch and NumPy report themselves.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cujit
from cujit import SymbolicDevice, SymbolicDType, SymbolicSize, TensorCheck, TensorMatcher, TensorMatchError
from cujit._runtime.dtypes import as_dtype
from cujit._runtime.tensors import Device, dlpack_info, torch_info
from tests.test_matcher import DLPackOnly

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TORCH_DTYPES = [torch.int32, torch.int64, torch.float32, torch.float16, torch.bool]
NUMPY_DTYPES = [
    np.bool_,
    np.int8,
    np.int32,
    np.int64,
    np.uint16,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.complex128,
]
ALIGNMENTS = [1, 1, 1, 1, 2, 4, 8, 16, 32, 64]



# ------------------------------------------------------------------------------------------------ tensors
def _view(draw: st.DrawFn, t: torch.Tensor) -> torch.Tensor:
    """Apply one random view operation."""
    op = draw(st.sampled_from(["transpose", "slice", "narrow", "unsqueeze", "expand", "permute", "select"]))
    rank = t.dim()
    if op == "transpose" and rank >= 2:
        i, j = draw(st.integers(0, rank - 1)), draw(st.integers(0, rank - 1))
        return t.transpose(i, j)
    if op == "slice" and rank >= 1:
        d = draw(st.integers(0, rank - 1))
        size = t.shape[d]
        start = draw(st.integers(0, size))
        stop = draw(st.integers(start, size))
        step = draw(st.integers(1, 3))
        index = (slice(None),) * d + (slice(start, stop, step),)
        return t[index]
    if op == "narrow" and rank >= 1:
        d = draw(st.integers(0, rank - 1))
        size = t.shape[d]
        start = draw(st.integers(0, size))
        length = draw(st.integers(0, size - start))
        return t.narrow(d, start, length)
    if op == "unsqueeze" and rank < 5:
        return t.unsqueeze(draw(st.integers(0, rank)))
    if op == "expand" and rank >= 1:
        sizes = [draw(st.integers(0, 3)) if s == 1 else -1 for s in t.shape]
        return t.expand(*sizes)
    if op == "permute" and rank >= 2:
        return t.permute(*draw(st.permutations(range(rank))))
    if op == "select" and rank >= 1:
        d = draw(st.integers(0, rank - 1))
        if t.shape[d] > 0:
            return t.select(d, draw(st.integers(0, t.shape[d] - 1)))
    return t


@st.composite
def torch_tensors(draw: st.DrawFn) -> torch.Tensor:
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    numel = int(np.prod(shape, dtype=np.int64))
    offset = draw(st.integers(0, 3))  # start inside a larger buffer: data pointers of every alignment
    t = torch.zeros(numel + offset, dtype=dtype)[offset:].view(shape)
    for _ in range(draw(st.integers(0, 4))):
        t = _view(draw, t)
    return t


@st.composite
def tensor_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    t1 = draw(torch_tensors())
    how = draw(st.sampled_from(["same", "clone", "clone", "view", "other"]))
    if how == "same":
        t2 = t1
    elif how == "clone":
        t2 = t1.clone()
    elif how == "view":
        t2 = _view(draw, t1)
    else:
        t2 = draw(torch_tensors())
    return t1, t2


# ------------------------------------------------------------------------------------------------ matchers
class Pools:
    """Symbols shared between the matchers of one example."""

    def __init__(self) -> None:
        self.sizes = [SymbolicSize("N"), SymbolicSize("D"), SymbolicSize("K")]
        self.dtypes = [SymbolicDType("T"), SymbolicDType("U")]
        self.devices = [SymbolicDevice("dev"), SymbolicDevice("dev2")]

    def all(self) -> list[Any]:
        return [*self.sizes, *self.dtypes, *self.devices]


def _entry(draw: st.DrawFn, actual: int | None, pools: Pools, low: int) -> int | SymbolicSize:
    kind = draw(st.sampled_from(["actual"] * 5 + ["int", "any", "symbol", "symbol"]))
    if kind == "actual" and actual is not None:
        return actual
    if kind == "any":
        return -1
    if kind == "symbol":
        return draw(st.sampled_from(pools.sizes))
    return draw(st.integers(low, 6)) if low >= 0 else draw(st.integers(-8, 20).filter(lambda v: v != -1))


def draw_matcher(draw: st.DrawFn, t: torch.Tensor, pools: Pools) -> TensorMatcher:
    rank = t.dim() if draw(st.integers(0, 19)) else draw(st.integers(0, 4))
    shape = [_entry(draw, t.shape[d] if d < t.dim() else None, pools, 0) for d in range(rank)]
    m = TensorMatcher(shape)
    if draw(st.booleans()):
        strides = [_entry(draw, t.stride(d) if d < t.dim() else None, pools, -8) for d in range(rank)]
        m.with_strides(strides)
    dtypes: list[torch.dtype] = []
    if draw(st.booleans()):
        dtypes = draw(st.lists(st.sampled_from(TORCH_DTYPES), min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 3)) and t.dtype not in dtypes:
            dtypes.append(t.dtype)
    dtype_symbol = draw(st.sampled_from([None, *pools.dtypes]))
    if dtypes or dtype_symbol is not None:
        m.with_dtype(*dtypes, symbol=dtype_symbol)
    kinds = draw(st.sampled_from([(), (), ("cpu",), ("cpu",), ("cuda",), ("cuda", "cpu"), ("cpu", "cuda")]))
    device_symbol = draw(st.sampled_from([None, *pools.devices]))
    if kinds or device_symbol is not None:
        m.with_device(*kinds, symbol=device_symbol)
    m.with_alignment(draw(st.sampled_from(ALIGNMENTS)))
    return m


# ------------------------------------------------------------------------------------------------ outcomes
def fast_only(check: TensorCheck, *tensors: Any) -> Any:
    """The check's generated code alone: its values, or None where it declines (hands over to the generic path)."""
    env = {**check._env, "_slow": lambda *args: None}
    dispatch = check._env["dispatch"]
    return types.FunctionType(dispatch.__code__, env, "fast_only", dispatch.__defaults__)(*tensors)


def outcome(fn: Any, *tensors: Any) -> tuple[str, Any]:
    """("ok", values) or ("TensorMatchError", message)."""
    try:
        return ("ok", fn(*tensors))
    except TensorMatchError as e:
        return ("TensorMatchError", str(e))


def same_values(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if not isinstance(a, tuple) or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(y, cujit.DType):
            if x is not y:
                return False
        elif isinstance(y, Device):
            if not isinstance(x, Device) or (x.type, x.index) != (y.type, y.index):
                return False
        elif type(x) is not int or type(y) is not int or x != y:
            return False
    return True


def same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    return same_values(a[1], b[1]) if a[0] == "ok" else bool(a[1] == b[1])


def chain(m1: TensorMatcher, m2: TensorMatcher, symbols: tuple[Any, ...], t1: Any, t2: Any) -> tuple[Any, ...]:
    m1.verify(t1, name="a")
    m2.verify(t2, name="b")
    return tuple(s.unwrap() for s in symbols)


# ------------------------------------------------------------------------------------------------ properties
@SETTINGS
@given(st.data())
def test_fast_path_declines_or_agrees_with_generic(data: st.DataObject) -> None:
    t1, t2 = data.draw(tensor_pairs())
    pools = Pools()
    m1 = draw_matcher(data.draw, t1, pools)
    m2 = draw_matcher(data.draw, t2, pools)
    check = TensorCheck(a=m1, b=m2)

    fast = fast_only(check, t1, t2)
    generic = outcome(check.generic, t1, t2)
    failed_on = generic[1].split(": ")[1].split(" ")[0] if generic[0] != "ok" else ""
    event(f"generic: {generic[0]} {failed_on}; fast: {'declined' if fast is None else 'answered'}")
    if generic[0] != "ok":
        assert fast is None, (fast, generic)
    elif fast is not None:
        assert same_values(fast, generic[1]), (fast, generic)

    # the public call and the generic path: same verdict, values and message
    public = outcome(check, t1, t2)
    assert same_outcome(public, generic), (public, generic)

    # the generic path reading the same tensors through DLPack capsules
    through_dlpack = outcome(check.generic, DLPackOnly(t1), DLPackOnly(t2))
    assert same_outcome(through_dlpack, generic), (through_dlpack, generic)

    # the chain of the guide: same verdict and message; on success the symbols hold the same values
    for s in pools.all():
        s.reset()
    try:
        chained = outcome(lambda x, y: chain(m1, m2, check.symbols, x, y), t1, t2)
        assert same_outcome(chained, generic), (chained, generic)
    finally:
        for s in pools.all():
            s.reset()


@SETTINGS
@given(st.data())
def test_fast_path_answers_whenever_generic_accepts(data: st.DataObject) -> None:
    # Not a correctness rule but the point of the fast path: it declines only on a mismatch.
    t1, t2 = data.draw(tensor_pairs())
    pools = Pools()
    check = TensorCheck(a=draw_matcher(data.draw, t1, pools), b=draw_matcher(data.draw, t2, pools))
    generic = outcome(check.generic, t1, t2)
    if generic[0] == "ok":
        fast = fast_only(check, t1, t2)
        assert fast is not None
        assert same_values(fast, generic[1])


@SETTINGS
@given(st.data())
def test_matching_matchers_always_pass_on_both_paths(data: st.DataObject) -> None:
    # Matchers built from the tensors themselves must accept them: the generator above rejects most examples.
    t1, t2 = data.draw(tensor_pairs())
    n = SymbolicSize("N")

    def exact(t: torch.Tensor, use_symbol: bool) -> TensorMatcher:
        shape: list[int | SymbolicSize] = list(t.shape)
        if use_symbol and t.dim() > 0:
            shape[0] = n
        m = TensorMatcher(shape).with_dtype(t.dtype).with_device("cpu")
        if not t.is_contiguous() or data.draw(st.booleans()):
            m.with_strides(list(t.stride()))
        ptr = t.data_ptr()
        return m.with_alignment(min(ptr & -ptr, 64) if ptr else 64)  # the largest that holds

    share = t1.dim() > 0 and t2.dim() > 0 and t1.shape[0] == t2.shape[0]
    check = TensorCheck(a=exact(t1, share), b=exact(t2, share))
    expected = (t1.shape[0],) if share else ()
    assert check.generic(t1, t2) == expected
    assert fast_only(check, t1, t2) == expected
    assert check(t1, t2) == expected


# ------------------------------------------------------------------------------------------------ DLPack
def assert_same_info(got: Any, want: Any) -> None:
    assert got.shape == want.shape
    assert got.strides == want.strides
    assert got.dtype is want.dtype
    assert (got.device.type, got.device.index) == (want.device.type, want.device.index)
    assert got.ptr == want.ptr


@SETTINGS
@given(torch_tensors())
def test_dlpack_info_equals_torch_info(t: torch.Tensor) -> None:
    assert_same_info(dlpack_info(t), torch_info(t))


@SETTINGS
@given(
    st.sampled_from(
        [
            torch.bfloat16,
            torch.float8_e4m3fn,
            torch.float8_e5m2,
            torch.complex64,
            torch.complex128,
            torch.uint8,
            torch.uint16,
            torch.uint32,
            torch.uint64,
            torch.int8,
            torch.int16,
            torch.float64,
        ]
    ),
    st.data(),
)
def test_dlpack_info_equals_torch_info_other_dtypes(dtype: torch.dtype, data: st.DataObject) -> None:
    t = data.draw(torch_tensors()).to(dtype)
    t = _view(data.draw, t)
    try:
        capsule_ok = t.__dlpack__() is not None
    except (BufferError, RuntimeError, TypeError):
        capsule_ok = False  # a dtype torch cannot export
    if capsule_ok:
        assert_same_info(dlpack_info(t), torch_info(t))


def _numpy_view(draw: st.DrawFn, a: np.ndarray) -> np.ndarray:
    op = draw(st.sampled_from(["slice", "transpose", "newaxis", "broadcast", "index"]))
    if op == "slice" and a.ndim >= 1:
        d = draw(st.integers(0, a.ndim - 1))
        step = draw(st.sampled_from([1, 2, 3, -1, -2, -3]))
        size = a.shape[d]
        start = draw(st.one_of(st.none(), st.integers(-size - 1, size + 1)))
        stop = draw(st.one_of(st.none(), st.integers(-size - 1, size + 1)))
        return a[(slice(None),) * d + (slice(start, stop, step),)]
    if op == "transpose" and a.ndim >= 2:
        return a.transpose(draw(st.permutations(range(a.ndim))))
    if op == "newaxis" and a.ndim < 5:
        d = draw(st.integers(0, a.ndim))
        return np.expand_dims(a, d)
    if op == "broadcast" and a.ndim >= 1:
        shape = tuple(draw(st.integers(0, 3)) if s == 1 else s for s in a.shape)
        return np.broadcast_to(a, (draw(st.integers(1, 2)), *shape))
    if op == "index" and a.ndim >= 1 and a.shape[0] > 0:
        return a[draw(st.integers(0, a.shape[0] - 1)), ...]  # `...` keeps a 0-d array, not a scalar
    return a


@st.composite
def numpy_arrays(draw: st.DrawFn) -> np.ndarray:
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank)))
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    numel = int(np.prod(shape, dtype=np.int64))
    offset = draw(st.integers(0, 3))
    a = np.zeros(numel + offset, dtype=dtype)[offset:].reshape(shape)
    for _ in range(draw(st.integers(0, 4))):
        a = _numpy_view(draw, a)
    return a


@SETTINGS
@given(numpy_arrays())
def test_dlpack_info_equals_numpy_metadata(a: np.ndarray) -> None:
    info = dlpack_info(a)
    assert info.shape == a.shape
    assert info.strides == tuple(s // a.itemsize for s in a.strides)
    assert info.dtype is as_dtype(a.dtype)
    assert (info.device.type, info.device.index) == ("cpu", 0)
    assert info.ptr == a.ctypes.data
    # and the matcher reads the same through its public entry point
    assert cujit._runtime.tensors.tensor_info(a).ptr == a.ctypes.data


@SETTINGS
@given(numpy_arrays(), st.data())
def test_numpy_matchers_agree_with_a_reference(a: np.ndarray, data: st.DataObject) -> None:
    # An independent reference for the verdict on NumPy arrays, negative strides included.
    item = a.itemsize
    strides = tuple(s // item for s in a.strides)
    use_strides = data.draw(st.booleans())
    want_strides = [data.draw(st.sampled_from([s, -1, s + 1])) for s in strides]
    align = data.draw(st.sampled_from(ALIGNMENTS))
    m = TensorMatcher(list(a.shape)).with_alignment(align)
    if use_strides:
        m.with_strides(want_strides)

    contiguous = 0 in a.shape or all(
        size == 1 or stride == int(np.prod(a.shape[d + 1 :], dtype=np.int64))
        for d, (size, stride) in enumerate(zip(a.shape, strides, strict=True))
    )
    ok = all(w in (-1, s) for w, s in zip(want_strides, strides, strict=True)) if use_strides else contiguous
    ok = ok and a.ctypes.data % align == 0
    check = TensorCheck(x=m)
    if ok:
        assert check(a) == ()
    else:
        try:
            check(a)
        except TensorMatchError as e:
            assert str(e).startswith("'x': ")
        else:
            raise AssertionError("accepted an array that does not match")
