"""TensorMatcher, the Symbolic* types and TensorCheck on CPU torch tensors and NumPy arrays."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch

import cujit
from cujit import SymbolicDevice, SymbolicDType, SymbolicSize, TensorCheck, TensorMatcher, TensorMatchError


def fails(matcher: TensorMatcher, tensor: Any, name: str | None = None) -> str:
    """Verify, expect a TensorMatchError, return its message."""
    with pytest.raises(TensorMatchError) as info:
        matcher.verify(tensor, name=name)
    return str(info.value)


class DLPackOnly:
    """A producer that only speaks DLPack, so the matcher must take the generic path."""

    def __init__(self, tensor: Any) -> None:
        self._tensor = tensor

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._tensor.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._tensor.__dlpack_device__()


# ------------------------------------------------------------------------------------------------ errors
def test_tensor_match_error_is_a_cujit_error_and_a_value_error() -> None:
    assert issubclass(TensorMatchError, cujit.CujitError)
    assert issubclass(TensorMatchError, ValueError)
    with pytest.raises(cujit.CujitError):
        TensorMatcher([3]).verify(torch.zeros(4))
    with pytest.raises(ValueError):
        TensorMatcher([3]).verify(torch.zeros(4))


# ------------------------------------------------------------------------------------------------ shapes
def test_shape_with_ints_and_any() -> None:
    x = torch.zeros(3, 5, 7)
    m = TensorMatcher([3, -1, 7])
    assert m.verify(x) is m
    TensorMatcher([-1, -1, -1]).verify(x)
    TensorMatcher([3, 5, 7]).verify(x)
    fails(TensorMatcher([3, 5, 8]), x)
    fails(TensorMatcher([4, -1, 7]), x)


def test_shape_with_symbols_binds_them() -> None:
    n, d = SymbolicSize("N"), SymbolicSize("D")
    TensorMatcher([n, d]).verify(torch.zeros(4, 9))
    assert n.unwrap() == 4 and d.unwrap() == 9
    assert isinstance(n.unwrap(), int)


def test_symbol_repeated_in_one_shape() -> None:
    n = SymbolicSize("N")
    TensorMatcher([n, n]).verify(torch.zeros(5, 5))
    assert n.unwrap() == 5
    n2 = SymbolicSize("N")
    fails(TensorMatcher([n2, n2]), torch.zeros(5, 6))
    assert not n2.is_bound


def test_scalar_tensor_rank_zero() -> None:
    TensorMatcher([]).verify(torch.tensor(3.0))
    TensorMatcher([]).verify(np.zeros((), np.float32))
    fails(TensorMatcher([1]), torch.tensor(3.0))
    fails(TensorMatcher([]), torch.zeros(1))


@pytest.mark.parametrize(
    ("shape", "tensor_shape"), [([2, 3], (2, 3, 1)), ([2, 3, 1], (2, 3)), ([-1], (2, 3)), ([-1, -1], (6,))]
)
def test_rank_mismatch(shape: list[int], tensor_shape: tuple[int, ...]) -> None:
    message = fails(TensorMatcher(shape), torch.zeros(tensor_shape))
    assert re.search(rf"rank: expected {len(shape)} dimensions?, got {len(tensor_shape)};", message), message


def test_zero_size_dims() -> None:
    n = SymbolicSize("N")
    TensorMatcher([0, n]).verify(torch.zeros(0, 5))
    assert n.unwrap() == 5
    m = SymbolicSize("M")
    TensorMatcher([m, 5]).verify(np.zeros((0, 5), np.float32))
    assert m.unwrap() == 0
    fails(TensorMatcher([1, 5]), torch.zeros(0, 5))
    TensorMatcher([-1, -1, -1]).verify(torch.zeros(2, 0, 3))


def test_bad_matcher_arguments() -> None:
    with pytest.raises(ValueError):
        TensorMatcher([-2])
    with pytest.raises(TypeError):
        TensorMatcher([1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        TensorMatcher([True])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        TensorMatcher("ab")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TensorMatcher([1, 2]).with_strides([1])
    with pytest.raises(ValueError):
        TensorMatcher([1]).with_alignment(12)
    with pytest.raises(ValueError):
        TensorMatcher([1]).with_device("gpu")
    with pytest.raises(TypeError):
        TensorMatcher([1]).with_dtype("not_a_dtype")
    with pytest.raises(TypeError):
        TensorMatcher([1]).with_dtype(symbol=SymbolicSize("N"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TensorMatcher([1]).with_device(symbol=SymbolicDType())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ contiguity
def test_contiguous_required_without_with_strides() -> None:
    x = torch.zeros(4, 6)
    TensorMatcher([4, 6]).verify(x)
    fails(TensorMatcher([6, 4]), x.t())
    fails(TensorMatcher([4, 3]), x[:, ::2])
    fails(TensorMatcher([4, 3]), x[:, :3])
    fails(TensorMatcher([2, 3]), torch.zeros(3).expand(2, 3))


def test_contiguous_slices_pass() -> None:
    x = torch.zeros(4, 6)
    TensorMatcher([2, 6]).verify(x[1:3])
    TensorMatcher([6]).verify(x[2])
    TensorMatcher([4, 1]).verify(x[:, 2:3].contiguous())


def test_size_one_dims_may_have_any_stride() -> None:
    base = torch.zeros(64)
    TensorMatcher([1, 3]).verify(torch.as_strided(base, (1, 3), (7, 1)))
    TensorMatcher([3, 1]).verify(torch.as_strided(base, (3, 1), (1, 99)))
    TensorMatcher([1, 3]).verify(torch.zeros(3, 1).t())  # strides (1, 1)
    TensorMatcher([2, 1, 3]).verify(torch.zeros(2, 3).unsqueeze(1))
    TensorMatcher([1, 1]).verify(torch.as_strided(base, (1, 1), (13, 5)))
    TensorMatcher([2, 1]).verify(torch.as_strided(base, (2, 1), (1, 0)))
    fails(TensorMatcher([2, 1]), torch.zeros(2, 5)[:, 1:2])  # strides (5, 1): dim 0 (size 2) must have stride 1
    # expand to size 1 is no expansion; stride 0 on a size-1 dim is fine
    TensorMatcher([1, 4]).verify(torch.as_strided(base, (1, 4), (0, 1)))


def test_zero_size_tensors_count_as_contiguous() -> None:
    base = torch.zeros(16)
    TensorMatcher([3, 0]).verify(torch.zeros(0, 3).t())
    TensorMatcher([2, 0]).verify(torch.as_strided(base, (2, 0), (1, 5)))
    TensorMatcher([0, 4]).verify(torch.as_strided(base, (0, 4), (0, 3)))
    TensorMatcher([0, 3]).verify(np.zeros((3, 0), np.float32).T)


def test_numpy_negative_strides_are_not_contiguous() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    fails(TensorMatcher([4, 6]), a[::-1])
    fails(TensorMatcher([4, 3]), a[:, ::-2])
    fails(TensorMatcher([6]), a[0, ::-1])
    TensorMatcher([1, 6]).verify(a[::-1][:1])  # one row: the negative stride is on a size-1 dim


def test_numpy_offset_views() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    TensorMatcher([3, 6]).verify(a[1:])
    TensorMatcher([5]).verify(a.reshape(-1)[3:8])
    fails(TensorMatcher([3, 5]), a[1:, 1:])


# ------------------------------------------------------------------------------------------------ strides
def test_with_strides_literals_and_any() -> None:
    x = torch.zeros(4, 6)
    TensorMatcher([4, 6]).with_strides([6, 1]).verify(x)
    TensorMatcher([6, 4]).with_strides([1, 6]).verify(x.t())
    TensorMatcher([4, 3]).with_strides([6, 2]).verify(x[:, ::2])
    TensorMatcher([-1, -1]).with_strides([-1, 1]).verify(x[:, 1:4])
    TensorMatcher([2, 3]).with_strides([0, 1]).verify(torch.zeros(3).expand(2, 3))
    fails(TensorMatcher([4, 6]).with_strides([6, 2]), x)
    fails(TensorMatcher([4, 6]).with_strides([7, -1]), x)


def test_with_strides_symbols() -> None:
    n, s = SymbolicSize("N"), SymbolicSize("S")
    x = torch.zeros(5, 8)
    m = TensorMatcher([-1, n]).with_strides([s, 1])
    m.verify(x[:, :3], name="a")
    assert n.unwrap() == 3 and s.unwrap() == 8
    m.verify(torch.zeros(2, 8)[:, 2:5], name="b")
    message = fails(m, torch.zeros(2, 9)[:, :3], name="c")
    assert message.startswith("'c': stride 0: expected S = 8 (bound by 'a' stride 0), got 9;")


def test_shape_symbol_reused_as_stride() -> None:
    d = SymbolicSize("D")
    m = TensorMatcher([-1, d]).with_strides([d, 1])
    m.verify(torch.zeros(3, 4))
    assert d.unwrap() == 4
    d2 = SymbolicSize("D")
    message = fails(TensorMatcher([-1, d2]).with_strides([d2, 1]), torch.zeros(3, 8)[:, :4], name="x")
    assert message.startswith("'x': stride 0: expected D = 4 (bound by 'x' dimension 1), got 8;")
    assert not d2.is_bound


def test_with_strides_on_numpy_negative_strides() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    TensorMatcher([4, 6]).with_strides([-6, 1]).verify(a[::-1])
    TensorMatcher([4, 3]).with_strides([6, -2]).verify(a[:, ::-2])
    s, t = SymbolicSize("S"), SymbolicSize("T")
    TensorMatcher([4, 6]).with_strides([s, t]).verify(a[::-1, ::-1])
    assert (s.unwrap(), t.unwrap()) == (-6, -1)
    TensorMatcher([-1, -1]).with_strides([-1, -1]).verify(a[::-2, ::-3])


# ------------------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.bool,
        torch.int8,
        torch.uint8,
        torch.int32,
        torch.int64,
        torch.complex64,
        torch.complex128,
        torch.float64,
    ],
    ids=str,
)
def test_torch_dtypes(dtype: torch.dtype) -> None:
    x = torch.zeros(3, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    TensorMatcher([3]).with_dtype(dtype).verify(x)
    TensorMatcher([3]).with_dtype(name).verify(x)
    TensorMatcher([3]).with_dtype(torch.int16, dtype).verify(x)
    other = torch.int16
    message = fails(TensorMatcher([3]).with_dtype(other), x, name="x")
    assert message == f"'x': dtype: expected int16, got {name}; Tensor<3>[strides=<1>, dtype={name}, device=cpu:0]"
    sym = SymbolicDType()
    TensorMatcher([3]).with_dtype(symbol=sym).verify(x)
    assert sym.unwrap() == dtype
    assert sym.unwrap() == name


@pytest.mark.parametrize(
    "npdtype",
    [np.bool_, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.complex64, np.complex128],
)
def test_numpy_dtypes(npdtype: type) -> None:
    a = np.zeros((2, 3), dtype=npdtype)
    TensorMatcher([2, 3]).with_dtype(npdtype).verify(a)
    TensorMatcher([2, 3]).with_dtype(np.dtype(npdtype)).verify(a)
    sym = SymbolicDType()
    TensorMatcher([2, 3]).with_dtype(symbol=sym).verify(a)
    assert sym.unwrap() == np.dtype(npdtype)
    assert np.dtype(npdtype) == sym.unwrap()
    assert sym.unwrap() == np.dtype(npdtype).name
    fails(TensorMatcher([2, 3]).with_dtype(np.uint8 if npdtype is not np.uint8 else np.int8), a)


def test_dtype_spellings_are_interchangeable() -> None:
    x = torch.zeros(2, dtype=torch.float16)
    for spelling in (torch.float16, np.float16, np.dtype("float16"), "float16", "half", "fp16_t", "torch.float16"):
        TensorMatcher([2]).with_dtype(spelling).verify(x)
        TensorMatcher([2]).with_dtype(spelling).verify(np.zeros(2, np.float16))


def test_dtype_symbol_across_chain() -> None:
    dtype = SymbolicDType("T")
    m = TensorMatcher([-1]).with_dtype(torch.float16, torch.bfloat16, symbol=dtype)
    m.verify(torch.zeros(2, dtype=torch.bfloat16)).verify(torch.zeros(5, dtype=torch.bfloat16))
    assert dtype.unwrap() == torch.bfloat16
    assert dtype.unwrap() == "bfloat16"
    assert dtype.unwrap() != torch.float16
    assert dtype.unwrap() != np.dtype("float16")
    message = fails(m, torch.zeros(2, dtype=torch.float16))
    assert "expected T = bfloat16 (bound by tensor #1 dtype), got float16" in message


def test_symbolic_dtype_unwrap_equalities() -> None:
    dtype = SymbolicDType()
    TensorMatcher([-1]).with_dtype(symbol=dtype).verify(torch.zeros(2, dtype=torch.float32))
    d = dtype.unwrap()
    assert d == torch.float32 and torch.float32 == d
    assert d == np.dtype("float32") and np.dtype("float32") == d
    assert d == np.float32
    assert d == "float32" and "float32" == d
    assert d != torch.float64 and d != np.dtype("float64") and d != "float64" and d != 3
    assert str(d) == "float32"
    assert np.dtype(d) == np.float32
    assert cujit.make_cpp_args(d)[0] == "fp32_t"
    assert str(cujit.make_cpp_args(d, 8)) == "fp32_t, 8"
    assert isinstance(d, cujit.DType)


def test_symbolic_dtype_unwrap_without_numpy_twin() -> None:
    dtype = SymbolicDType()
    TensorMatcher([-1]).with_dtype(symbol=dtype).verify(torch.zeros(2, dtype=torch.bfloat16))
    d = dtype.unwrap()
    assert d == torch.bfloat16 and d == "bfloat16"
    assert d != np.dtype("float16") and np.dtype("float32") != d
    assert cujit.make_cpp_args(d)[0] == "bf16_t"


# ------------------------------------------------------------------------------------------------ devices
def test_with_device_kinds() -> None:
    x = torch.zeros(3)
    TensorMatcher([3]).with_device("cpu").verify(x)
    TensorMatcher([3]).with_device("cuda", "cpu").verify(x)
    TensorMatcher([3]).with_device().verify(x)
    TensorMatcher([3]).with_device("cpu").verify(np.zeros(3))
    fails(TensorMatcher([3]).with_device("cuda"), x)
    fails(TensorMatcher([3]).with_device("cuda"), np.zeros(3))


def test_device_symbol() -> None:
    device = SymbolicDevice()
    TensorMatcher([3]).with_device("cuda", "cpu", symbol=device).verify(torch.zeros(3)).verify(np.zeros(3))
    d = device.unwrap()
    assert d.type == "cpu"
    assert d.index == 0
    assert d == torch.device("cpu")
    assert d == "cpu" and d == "cpu:0"


def test_device_symbol_without_kinds() -> None:
    device = SymbolicDevice("dev")
    TensorMatcher([3]).with_device(symbol=device).verify(np.zeros(3))
    assert (device.unwrap().type, device.unwrap().index) == ("cpu", 0)


def test_device_symbol_conflict_on_meta_device() -> None:
    device = SymbolicDevice("dev")
    m = TensorMatcher([3]).with_device(symbol=device)
    m.verify(torch.zeros(3), name="a")
    message = fails(m, torch.empty(3, device="meta"), name="b")
    assert message == (
        "'b': device: expected dev = cpu:0 (bound by 'a' device), got meta:0; "
        "Tensor<3>[strides=<1>, dtype=float32, device=meta:0]"
    )


# ------------------------------------------------------------------------------------------------ symbols
def test_symbols_bind_across_a_chain() -> None:
    n, d = SymbolicSize("N"), SymbolicSize("D")
    m = TensorMatcher([n, d])
    m.verify(torch.zeros(2, 3)).verify(torch.zeros(2, 3)).verify(np.zeros((2, 3), np.float32))
    assert (n.unwrap(), d.unwrap()) == (2, 3)
    fails(m, torch.zeros(2, 4))
    fails(m, torch.zeros(3, 3))
    assert (n.unwrap(), d.unwrap()) == (2, 3)


def test_symbols_bind_across_two_matchers() -> None:
    n, d, k = SymbolicSize("N"), SymbolicSize("D"), SymbolicSize("K")
    TensorMatcher([n, d]).verify(torch.zeros(4, 8), name="q")
    TensorMatcher([k, d]).verify(torch.zeros(6, 8), name="k")
    assert (n.unwrap(), d.unwrap(), k.unwrap()) == (4, 8, 6)
    message = fails(TensorMatcher([n, -1]), torch.zeros(5, 8), name="out")
    assert message == (
        "'out': dimension 0: expected N = 4 (bound by 'q' dimension 0), got 5; "
        "Tensor<5, 8>[strides=<8, 1>, dtype=float32, device=cpu:0]"
    )


def test_symbol_reused_with_conflicting_value() -> None:
    n = SymbolicSize("N")
    TensorMatcher([n]).verify(torch.zeros(3))
    with pytest.raises(TensorMatchError, match=r"expected N = 3 .*got 4"):
        TensorMatcher([n]).verify(torch.zeros(4))
    assert n.unwrap() == 3


def test_unwrap_unbound_raises_cujit_error() -> None:
    for sym, text in [
        (SymbolicSize("N"), "size 'N' is not bound: verify a tensor that matches it first"),
        (SymbolicDType("T"), "dtype 'T' is not bound: verify a tensor that matches it first"),
        (SymbolicDevice(), "device 'device' is not bound: verify a tensor that matches it first"),
    ]:
        with pytest.raises(cujit.CujitError) as info:
            sym.unwrap()
        assert str(info.value) == text
        assert not sym.is_bound


def test_reset_unbinds() -> None:
    n = SymbolicSize("N")
    TensorMatcher([n]).verify(torch.zeros(3))
    n.reset()
    assert not n.is_bound
    TensorMatcher([n]).verify(torch.zeros(4))
    assert n.unwrap() == 4


def test_a_failure_binds_nothing() -> None:
    n, d = SymbolicSize("N"), SymbolicSize("D")
    dtype, device = SymbolicDType(), SymbolicDevice()
    m = TensorMatcher([n, d, 5]).with_dtype(symbol=dtype).with_device(symbol=device)
    # N, D, the dtype and the device all match before dimension 2 fails
    fails(m, torch.zeros(2, 3, 4))
    for sym in (n, d, dtype, device):
        assert not sym.is_bound
        with pytest.raises(cujit.CujitError):
            sym.unwrap()
    # a late failure (alignment) after everything else matched
    m2 = TensorMatcher([n, d]).with_dtype(symbol=dtype).with_device(symbol=device).with_alignment(64)
    base = torch.zeros(100)
    assert base.data_ptr() % 64 == 0
    fails(m2, base[1:13].view(3, 4))
    assert not any(s.is_bound for s in (n, d, dtype, device))
    m2.verify(base[:12].view(3, 4))
    assert (n.unwrap(), d.unwrap(), dtype.unwrap(), device.unwrap()) == (3, 4, torch.float32, "cpu:0")


def test_a_failure_keeps_earlier_bindings() -> None:
    n, d = SymbolicSize("N"), SymbolicSize("D")
    m = TensorMatcher([n, d])
    m.verify(torch.zeros(2, 3))
    fails(TensorMatcher([n, 7]), torch.zeros(2, 3))
    assert (n.unwrap(), d.unwrap()) == (2, 3)


def test_symbol_repr_and_names() -> None:
    n = SymbolicSize("N")
    assert "unbound" in repr(n)
    TensorMatcher([n]).verify(torch.zeros(7))
    assert "7" in repr(n)
    assert SymbolicSize().name == "size"
    assert SymbolicDType().name == "dtype"
    assert SymbolicDevice().name == "device"


# ------------------------------------------------------------------------------------------------ alignment
def test_alignment_fails_on_offset_view_and_passes_on_aligned_one() -> None:
    base = torch.zeros(64)
    assert base.data_ptr() % 64 == 0  # torch's CPU allocator aligns to 64 bytes
    m = TensorMatcher([-1]).with_alignment(16)
    m.verify(base)
    m.verify(base[4:])  # 16 bytes in
    m.verify(base[8:20])
    for offset in (1, 2, 3, 5):
        view = base[offset:]
        with pytest.raises(TensorMatchError) as info:
            TensorMatcher([-1]).with_alignment(16).verify(view, name="v")
        assert "alignment" in str(info.value)
    TensorMatcher([-1]).with_alignment(8).verify(base[2:])
    fails(TensorMatcher([-1]).with_alignment(8), base[1:])


def test_alignment_on_numpy_offset_view() -> None:
    a = np.zeros(64, np.float32)
    ptr = a.ctypes.data
    view = a[1:]
    m = TensorMatcher([-1]).with_alignment(4)
    m.verify(view)
    misaligned = (ptr + 4) % 16 != 0
    if misaligned:
        fails(TensorMatcher([-1]).with_alignment(16), view)
    else:
        TensorMatcher([-1]).with_alignment(16).verify(view)
    k = next(i for i in range(4) if (ptr + 4 * i) % 16 == 0)
    TensorMatcher([-1]).with_alignment(16).verify(a[k:])


# ------------------------------------------------------------------------------------------------ not a tensor
@pytest.mark.parametrize(
    ("value", "type_name"),
    [([1, 2, 3], "list"), (None, "NoneType"), (3, "int"), (object(), "object"), ("tensor", "str")],
    ids=lambda v: type(v).__name__,
)
def test_not_a_tensor_raises_type_error_naming_its_type(value: object, type_name: str) -> None:
    with pytest.raises(TypeError) as info:
        TensorMatcher([-1]).verify(value)
    assert type_name in str(info.value)
    assert not isinstance(info.value, TensorMatchError)


def test_not_a_tensor_exact_message() -> None:
    with pytest.raises(TypeError) as info:
        TensorMatcher([-1]).verify([1, 2])
    assert str(info.value) == (
        "tensor #1: expected a tensor (torch, CuPy, NumPy or any object with __dlpack__ or "
        "__cuda_array_interface__), got builtins.list"
    )


def test_not_a_tensor_message_names_the_argument() -> None:
    with pytest.raises(TypeError) as info:
        TensorMatcher([-1]).verify(None, name="x")
    assert "'x'" in str(info.value)
    check = TensorCheck(a=TensorMatcher([-1]), b=TensorMatcher([-1]))
    with pytest.raises(TypeError) as info:
        check(torch.zeros(3), None)
    assert "'b'" in str(info.value)


# ------------------------------------------------------------------------------------------------ generic path
def test_dlpack_only_producer_takes_the_generic_path() -> None:
    n = SymbolicSize("N")
    dtype = SymbolicDType()
    TensorMatcher([n, 3]).with_dtype(symbol=dtype).verify(DLPackOnly(torch.zeros(4, 3, dtype=torch.int32)))
    assert n.unwrap() == 4 and dtype.unwrap() == torch.int32


@pytest.mark.parametrize(
    ("matcher", "tensor"),
    [
        (lambda: TensorMatcher([4, 4]), lambda: torch.zeros(4, 5)),
        (lambda: TensorMatcher([-1, -1]), lambda: torch.zeros(4, 6).t()),
        (lambda: TensorMatcher([-1]).with_dtype(torch.int64), lambda: torch.zeros(3, dtype=torch.bool)),
        (lambda: TensorMatcher([-1, -1]).with_strides([-1, 2]), lambda: torch.zeros(4, 6)[:, ::3]),
        (lambda: TensorMatcher([-1]).with_alignment(8), lambda: torch.zeros(8)[1:]),
    ],
)
def test_generic_and_torch_give_the_same_message(matcher: Any, tensor: Any) -> None:
    t = tensor()
    assert fails(matcher(), t, name="x") == fails(matcher(), DLPackOnly(t), name="x")


# ------------------------------------------------------------------------------------------------ messages
LINE_100_256 = "Tensor<100, 256>[strides=<256, 1>, dtype=float32, device=cpu:0]"


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_rank(name: str | None, label: str) -> None:
    message = fails(TensorMatcher([4, 4]), torch.zeros(2, 3, 4), name=name)
    assert message == (
        f"{label}: rank: expected 2 dimensions, got 3; Tensor<2, 3, 4>[strides=<12, 4, 1>, dtype=float32, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_dimension_literal(name: str | None, label: str) -> None:
    message = fails(TensorMatcher([100, 255]), torch.zeros(100, 256), name=name)
    assert message == f"{label}: dimension 1: expected 255, got 256; {LINE_100_256}"


@pytest.mark.parametrize(
    ("names", "labels"), [(("a", "b"), ("'a'", "'b'")), ((None, None), ("tensor #1", "tensor #2"))]
)
def test_message_dimension_symbol_bound_by_earlier_tensor(
    names: tuple[str | None, str | None], labels: tuple[str, str]
) -> None:
    n = SymbolicSize("N")
    m = TensorMatcher([n, 256]).verify(torch.zeros(100, 256), name=names[0])
    message = fails(m, torch.zeros(50, 256), name=names[1])
    assert message == (
        f"{labels[1]}: dimension 0: expected N = 100 (bound by {labels[0]} dimension 0), got 50; "
        "Tensor<50, 256>[strides=<256, 1>, dtype=float32, device=cpu:0]"
    )


def test_message_position_in_chain() -> None:
    n = SymbolicSize("N")
    m = TensorMatcher([n]).verify(torch.zeros(3), name="first").verify(torch.zeros(3))
    message = fails(m, torch.zeros(4))
    assert message == (
        "tensor #3: dimension 0: expected N = 3 (bound by 'first' dimension 0), got 4; "
        "Tensor<4>[strides=<1>, dtype=float32, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_dimension_symbol_bound_in_same_tensor(name: str | None, label: str) -> None:
    n = SymbolicSize("N")
    message = fails(TensorMatcher([n, n]), torch.zeros(3, 4), name=name)
    assert message == (
        f"{label}: dimension 1: expected N = 3 (bound by {label} dimension 0), got 4; "
        "Tensor<3, 4>[strides=<4, 1>, dtype=float32, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_stride(name: str | None, label: str) -> None:
    message = fails(TensorMatcher([-1, -1]).with_strides([-1, 1]), torch.zeros(100, 512)[:, ::2], name=name)
    assert message == (
        f"{label}: stride 1: expected 1, got 2; Tensor<100, 256>[strides=<512, 2>, dtype=float32, device=cpu:0]"
    )


@pytest.mark.parametrize(
    ("names", "labels"), [(("a", "b"), ("'a'", "'b'")), ((None, None), ("tensor #1", "tensor #2"))]
)
def test_message_stride_symbol(names: tuple[str | None, str | None], labels: tuple[str, str]) -> None:
    s = SymbolicSize("S")
    m = TensorMatcher([-1, -1]).with_strides([s, 1]).verify(torch.zeros(100, 256), name=names[0])
    message = fails(m, torch.zeros(10, 300)[:, :256], name=names[1])
    assert message == (
        f"{labels[1]}: stride 0: expected S = 256 (bound by {labels[0]} stride 0), got 300; "
        "Tensor<10, 256>[strides=<300, 1>, dtype=float32, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_layout(name: str | None, label: str) -> None:
    message = fails(TensorMatcher([-1, -1]), torch.zeros(256, 100).t(), name=name)
    assert message == (
        f"{label}: layout: expected contiguous strides <256, 1>, got <1, 100>; "
        "Tensor<100, 256>[strides=<1, 100>, dtype=float32, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("a", "'a'"), (None, "tensor #1")])
def test_message_layout_numpy_negative_strides(name: str | None, label: str) -> None:
    a = np.zeros((4, 6), np.float64)
    message = fails(TensorMatcher([4, 6]), a[::-1], name=name)
    assert message == (
        f"{label}: layout: expected contiguous strides <6, 1>, got <-6, 1>; "
        "Tensor<4, 6>[strides=<-6, 1>, dtype=float64, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_dtype(name: str | None, label: str) -> None:
    message = fails(TensorMatcher([100, 256]).with_dtype(torch.float16, "bfloat16"), torch.zeros(100, 256), name=name)
    assert message == f"{label}: dtype: expected float16 or bfloat16, got float32; {LINE_100_256}"


@pytest.mark.parametrize(
    ("names", "labels"), [(("a", "b"), ("'a'", "'b'")), ((None, None), ("tensor #1", "tensor #2"))]
)
def test_message_dtype_symbol(names: tuple[str | None, str | None], labels: tuple[str, str]) -> None:
    dtype = SymbolicDType("T")
    m = TensorMatcher([-1, -1]).with_dtype(symbol=dtype).verify(torch.zeros(100, 256), name=names[0])
    message = fails(m, torch.zeros(100, 256, dtype=torch.float16), name=names[1])
    assert message == (
        f"{labels[1]}: dtype: expected T = float32 (bound by {labels[0]} dtype), got float16; "
        "Tensor<100, 256>[strides=<256, 1>, dtype=float16, device=cpu:0]"
    )


def test_message_unnamed_dtype_symbol() -> None:
    dtype = SymbolicDType()
    m = TensorMatcher([2]).with_dtype(symbol=dtype).verify(torch.zeros(2, dtype=torch.int32), name="a")
    message = fails(m, torch.zeros(2, dtype=torch.int64), name="b")
    assert message == (
        "'b': dtype: expected dtype = int32 (bound by 'a' dtype), got int64; "
        "Tensor<2>[strides=<1>, dtype=int64, device=cpu:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_device_kind(name: str | None, label: str) -> None:
    message = fails(TensorMatcher([100, 256]).with_device("cuda"), torch.zeros(100, 256), name=name)
    assert message == f"{label}: device: expected cuda, got cpu:0; {LINE_100_256}"


@pytest.mark.parametrize(
    ("names", "labels"), [(("a", "b"), ("'a'", "'b'")), ((None, None), ("tensor #1", "tensor #2"))]
)
def test_message_device_symbol(names: tuple[str | None, str | None], labels: tuple[str, str]) -> None:
    device = SymbolicDevice("dev")
    m = TensorMatcher([100, 256]).with_device(symbol=device).verify(torch.zeros(100, 256), name=names[0])
    message = fails(m, torch.empty(100, 256, device="meta"), name=names[1])
    assert message == (
        f"{labels[1]}: device: expected dev = cpu:0 (bound by {labels[0]} device), got meta:0; "
        "Tensor<100, 256>[strides=<256, 1>, dtype=float32, device=meta:0]"
    )


@pytest.mark.parametrize(("name", "label"), [("x", "'x'"), (None, "tensor #1")])
def test_message_alignment(name: str | None, label: str) -> None:
    base = torch.zeros(100 * 256 + 1)
    view = base[1:].view(100, 256)
    ptr = view.data_ptr()
    assert ptr % 16 == 4
    message = fails(TensorMatcher([100, 256]).with_alignment(16), view, name=name)
    assert message == (
        f"{label}: alignment: expected a data pointer aligned to 16 bytes, got {ptr:#x} "
        f"(4 bytes past a multiple of 16); {LINE_100_256}"
    )


@pytest.mark.parametrize("kind", ["rank", "dimension", "stride", "layout", "dtype", "device", "alignment"])
def test_every_message_ends_with_the_tensor_line(kind: str) -> None:
    x = torch.zeros(100, 257)[:, 1:]
    line = "Tensor<100, 256>[strides=<257, 1>, dtype=float32, device=cpu:0]"
    matcher = {
        "rank": TensorMatcher([-1]),
        "dimension": TensorMatcher([100, 3]),
        "stride": TensorMatcher([-1, -1]).with_strides([256, 1]),
        "layout": TensorMatcher([-1, -1]),
        "dtype": TensorMatcher([-1, -1]).with_strides([-1, -1]).with_dtype(torch.int8),
        "device": TensorMatcher([-1, -1]).with_strides([-1, -1]).with_device("cuda"),
        "alignment": TensorMatcher([-1, -1]).with_strides([-1, -1]).with_alignment(64),
    }[kind]
    message = fails(matcher, x, name="q")
    assert message.startswith(f"'q': {kind}")
    assert message.endswith(f"; {line}")


def test_message_distinguishes_tensors_of_two_unnamed_matchers() -> None:
    n = SymbolicSize("N")
    TensorMatcher([n]).verify(torch.zeros(3))
    message = fails(TensorMatcher([n, -1]), torch.zeros(4, 2))
    failing = message.split(":", 1)[0]  # "tensor #1"
    bound_by = re.search(r"\(bound by (.*) dimension 0\)", message)
    assert bound_by is not None, message
    assert bound_by.group(1) != failing, message


# ------------------------------------------------------------------------------------------------ TensorCheck
def test_tensor_check_returns_symbol_values_in_order() -> None:
    n, d = SymbolicSize("N"), SymbolicSize("D")
    dtype, device = SymbolicDType(), SymbolicDevice()
    check = TensorCheck(
        dst=TensorMatcher([n, d]).with_dtype(torch.float16, torch.float32, symbol=dtype).with_device(symbol=device),
        src=TensorMatcher([n, d]).with_dtype(symbol=dtype),
    )
    assert check.names == ("dst", "src")
    assert check.symbols == (n, d, dtype, device)
    x = torch.zeros(3, 4, dtype=torch.float16)
    values = check(x, x.clone())
    assert values == (3, 4, torch.float16, "cpu:0")
    assert values == check.generic(x, x.clone())
    # the symbols themselves stay unbound
    assert not any(s.is_bound for s in (n, d, dtype, device))
    # numpy arrays go through the generic path
    a = np.zeros((3, 4), np.float32)
    assert check(a, a) == (3, 4, np.float32, "cpu:0")


def test_tensor_check_messages_use_keyword_names() -> None:
    n = SymbolicSize("N")
    check = TensorCheck(a=TensorMatcher([n]), b=TensorMatcher([n]))
    with pytest.raises(TensorMatchError) as info:
        check(torch.zeros(3), torch.zeros(4))
    assert str(info.value) == (
        "'b': dimension 0: expected N = 3 (bound by 'a' dimension 0), got 4; "
        "Tensor<4>[strides=<1>, dtype=float32, device=cpu:0]"
    )
    with pytest.raises(TypeError, match=r"expected 2 tensors \(a, b\), got 1"):
        check(torch.zeros(3))


def test_tensor_check_construction_errors() -> None:
    with pytest.raises(ValueError):
        TensorCheck()
    with pytest.raises(TypeError):
        TensorCheck(a=[3])  # type: ignore[arg-type]


# dtypes torch has and cujit does not support
UNSUPPORTED = [getattr(torch, n) for n in ("complex32", "float8_e4m3fnuz", "uint1") if hasattr(torch, n)]


@pytest.mark.parametrize("dtype", UNSUPPORTED, ids=str)
def test_fast_path_agrees_with_generic_on_unsupported_dtype(dtype: torch.dtype) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.zeros(4, dtype=dtype)
    check = TensorCheck(a=TensorMatcher([-1]))

    def outcome(fn: Any) -> tuple[str, str]:
        try:
            return ("ok", repr(fn(t)))
        except Exception as e:  # the outcome is what is compared
            return (type(e).__name__, str(e))

    assert outcome(check) == outcome(check.generic)


def test_unsupported_dtype_message_names_the_tensor() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.zeros(4, dtype=torch.complex32)
    with pytest.raises((TypeError, TensorMatchError)) as info:
        TensorMatcher([-1]).with_dtype(torch.float32).verify(t, name="x")
    assert "'x'" in str(info.value)
    assert "complex32" in str(info.value)


@pytest.mark.parametrize(
    "make",
    [lambda: torch.randn(4, dtype=torch.complex64).conj(), lambda: torch.randn(4, dtype=torch.complex64).conj().imag],
    ids=["conjugate-bit", "negative-bit"],
)
def test_lazy_conjugate_and_negative_views_are_refused_on_both_paths(make: Any) -> None:
    t = make()
    check = TensorCheck(z=TensorMatcher([-1]))
    for verify in (check, check.generic):
        with pytest.raises(TensorMatchError, match=r"'z': layout: .* conjugate or negative bit set; call "):
            verify(t)
    assert check(t.resolve_conj().resolve_neg()) == ()


# ------------------------------------------------------------------------------------------------ names, pickling
def test_tensor_check_takes_keywords_and_returns_names() -> None:
    n, dtype = SymbolicSize("n"), SymbolicDType("dtype")
    check = TensorCheck(out=TensorMatcher([n]).with_dtype(symbol=dtype), x=TensorMatcher([n]).with_dtype(symbol=dtype))
    x = torch.zeros(5)
    for result in (check(x, x), check(out=x, x=x), check(x, x=x)):
        assert result == (5, "float32") and result.n == 5 and result.dtype == torch.float32
    with pytest.raises(TypeError, match=r"TensorCheck: no tensor named y \(its tensors: out, x\)"):
        check(out=x, y=x)
    with pytest.raises(TypeError, match=r"TensorCheck\(\) got multiple values for argument 'out'"):
        check(x, out=x)
    with pytest.raises(TypeError, match=r"TensorCheck: expected 2 tensors \(out, x\), got 1"):
        check(out=x)


def test_tensor_check_pickles() -> None:
    import pickle

    n = SymbolicSize("n")
    check = TensorCheck(a=TensorMatcher([n, 2]).with_dtype("float32"), b=TensorMatcher([n]))
    again = pickle.loads(pickle.dumps(check))
    assert again(torch.zeros(3, 2), torch.zeros(3)) == (3,)
    with pytest.raises(TensorMatchError, match=r"'b': dimension 0: expected n = 3"):
        again(torch.zeros(3, 2), torch.zeros(4))


def test_building_a_check_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, cujit\n"
            "n = cujit.SymbolicSize('n')\n"
            "c = cujit.TensorCheck(a=cujit.TensorMatcher([n]).with_dtype('float32'))\n"
            "import numpy\n"
            "assert c(numpy.zeros(3, numpy.float32)) == (3,)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import torch\n"
            "assert c(torch.zeros(4)) == (4,)\n"  # the generic path binds torch for the next call
            "from types import FunctionType\n"
            "assert c._env['_Tensor'] is torch.Tensor\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_generated_check_source_is_in_linecache() -> None:
    import inspect

    check = TensorCheck(a=TensorMatcher([SymbolicSize("n")]))
    source = inspect.getsource(check._dispatch)
    assert source.startswith("def TensorCheck(a=_NO, *_more, **_unknown):") and "return _slow(a)" in source


# ------------------------------------------------------------------------------------------------ SymbolicShape
def test_symbolic_shape_matches_any_leading_dimensions() -> None:
    batch, d = cujit.SymbolicShape("batch"), SymbolicSize("D")
    check = TensorCheck(x=TensorMatcher([batch, d]), y=TensorMatcher([batch, 4]))
    assert check(torch.zeros(2, 3, 8), torch.zeros(2, 3, 4)) == ((2, 3), 8)
    assert check(torch.zeros(8), torch.zeros(4)) == ((), 8)
    assert check.generic(torch.zeros(5, 8), torch.zeros(5, 4)) == ((5,), 8)
    with pytest.raises(TensorMatchError, match=r"'y': leading dimensions: expected batch = \(2, 3\) \(bound by 'x' "
                                               r"leading dimensions\), got \(2, 4\)"):
        check(torch.zeros(2, 3, 8), torch.zeros(2, 4, 4))
    with pytest.raises(TensorMatchError, match="'x': rank: expected at least 1 dimension, got 0"):
        check(torch.zeros(()), torch.zeros(4))
    whole = TensorCheck(a=TensorMatcher([batch]), b=TensorMatcher([batch]))
    assert whole(torch.zeros(2, 2), torch.zeros(2, 2)).batch == (2, 2)
    with pytest.raises(TensorMatchError, match=r"'b': shape: expected batch = \(2, 2\)"):
        whole(torch.zeros(2, 2), torch.zeros(4))
    with pytest.raises(TensorMatchError, match="'a': layout: expected contiguous strides"):
        whole(torch.zeros(4, 2).t(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="a SymbolicShape may only be the first entry of a shape"):
        TensorMatcher([d, batch])
    with pytest.raises(ValueError, match="with_strides: a shape that starts with a SymbolicShape is for contiguous"):
        TensorMatcher([batch, d]).with_strides([-1, 1])


def test_parameters_take_the_fast_path() -> None:
    n = SymbolicSize("n")
    check = TensorCheck(w=TensorMatcher([n]), x=TensorMatcher([n]))
    weight = torch.nn.Parameter(torch.zeros(3))
    env = {**check._env, "_slow": lambda *args: None}
    from types import FunctionType

    fast = FunctionType(check._dispatch.__code__, env, "fast", check._dispatch.__defaults__)
    assert fast(torch.zeros(3), weight) == (3,)
