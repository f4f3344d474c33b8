"""make_cpp_args: every rendering rule, checked on the CPU."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cujit

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1

INCLUDE = Path(cujit.__file__).parent / "include" / "cujit"


def render(value: object) -> str:
    args = cujit.make_cpp_args(value)
    assert len(args) == 1
    return args[0]


# ------------------------------------------------------------------------------------------------ a C++ model
# How a C++ compiler (LP64, as NVRTC targets) types and evaluates the integer renderings cujit produces: a
# decimal literal, with an optional leading minus, an optional LL/ULL suffix, optionally as `(<literal> - 1)`.
_LITERAL = re.compile(r"^(-?)([0-9]+)(ULL|LL)?$")
_RANKS = {"int": 0, "long": 1, "long long": 2, "unsigned long long": 3}


def _literal_type(digits: int, suffix: str | None) -> str:
    # [lex.icon]: an unsuffixed decimal literal is the first of int, long, long long that holds it.
    if suffix is None:
        if digits <= INT32_MAX:
            return "int"
        if digits <= INT64_MAX:
            return "long"
        raise AssertionError(f"{digits} has no signed type")
    if suffix == "LL":
        if digits > INT64_MAX:
            raise AssertionError(f"{digits}LL does not fit in long long")
        return "long long"
    if digits > UINT64_MAX:
        raise AssertionError(f"{digits}ULL does not fit in unsigned long long")
    return "unsigned long long"


def cpp_int(text: str) -> tuple[int, str]:
    """The value and C++ type of an integer rendering."""
    if text.startswith("(") and text.endswith(")") and text.endswith(" - 1)"):
        value, kind = cpp_int(text[1 : -len(" - 1)")])
        return value - 1, kind  # int - int is int; long long - int is long long
    match = _LITERAL.match(text)
    assert match, f"{text!r} is not a C++ integer literal that cujit should produce"
    minus, digits, suffix = match.groups()
    kind = _literal_type(int(digits), suffix)
    if minus and kind.startswith("unsigned"):
        raise AssertionError(f"{text!r}: unary minus on an unsigned literal wraps around")
    return (-int(digits) if minus else int(digits)), kind


def expected_type(value: int) -> str:
    if INT32_MIN <= value <= INT32_MAX:
        return "int"
    if INT64_MIN <= value <= INT64_MAX:
        return "long long"
    return "unsigned long long"


# A C++ floating literal: digits with a point or an exponent (else it would be an integer), no suffix (an `f`
# would make it a float and lose precision).
_FLOAT_LITERAL = re.compile(r"^-?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][+-]?[0-9]+)?$")


def assert_float_round_trips(value: float, text: str) -> None:
    assert _FLOAT_LITERAL.match(text), f"{text!r} is not a C++ double literal"
    back = float(text)
    assert back == value, (value, text)
    assert math.copysign(1.0, back) == math.copysign(1.0, value), (value, text)
    assert struct.pack("<d", back) == struct.pack("<d", value), (value, text)


# ------------------------------------------------------------------------------------------------ the sequence
def test_example_of_the_contract() -> None:
    args = cujit.make_cpp_args(3, True, 1.5, torch.float16)
    assert str(args) == "3, true, 1.5, fp16_t"
    assert f"my_kernel<{args}>" == "my_kernel<3, true, 1.5, fp16_t>"


def test_result_is_a_sequence_of_strings() -> None:
    args = cujit.make_cpp_args(1, False, 2.5, "bfloat16", np.int32(7))
    assert isinstance(args, Sequence)
    assert len(args) == 5
    assert args[0] == "1"
    assert args[1] == "false"
    assert args[2] == "2.5"
    assert args[3] == "bf16_t"
    assert args[-1] == "7"
    assert list(args) == ["1", "false", "2.5", "bf16_t", "7"]
    assert args[1:3] == ("false", "2.5")
    assert all(isinstance(a, str) for a in args)
    assert str(args) == "1, false, 2.5, bf16_t, 7"


def test_star_expansion_gives_the_rendered_strings() -> None:
    args = cujit.make_cpp_args(4, torch.int32)

    def collect(*values: object) -> tuple[object, ...]:
        return values

    assert collect(*args) == ("4", "int32_t")


def test_no_arguments() -> None:
    args = cujit.make_cpp_args()
    assert len(args) == 0
    assert str(args) == ""


def test_single_argument_has_no_separator() -> None:
    assert str(cujit.make_cpp_args(42)) == "42"


def test_results_are_equal_for_equal_inputs() -> None:
    assert cujit.make_cpp_args(1, 2.0, torch.float32) == cujit.make_cpp_args(1, 2.0, "float32")
    assert hash(cujit.make_cpp_args(1, 2)) == hash(cujit.make_cpp_args(1, 2))


# ------------------------------------------------------------------------------------------------ bool
@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false")])
def test_bool_is_rendered_before_int(value: bool, text: str) -> None:
    # bool is a subclass of int: it must not come out as 1 or 0.
    assert render(value) == text


@pytest.mark.parametrize(("value", "text"), [(np.bool_(True), "true"), (np.bool_(False), "false")])
def test_numpy_bool(value: object, text: str) -> None:
    assert render(value) == text


# ------------------------------------------------------------------------------------------------ int
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1, "1"),
        (-1, "-1"),
        (3, "3"),
        (-7, "-7"),
        (1000, "1000"),
        (INT32_MAX, "2147483647"),
        (INT32_MIN + 1, "-2147483647"),
    ],
)
def test_int32_values_are_plain(value: int, text: str) -> None:
    assert render(value) == text
    assert cpp_int(text) == (value, "int")


def test_int32_min_is_an_int_in_cpp() -> None:
    text = render(INT32_MIN)
    # `-2147483648` would be unary minus on 2147483648, a long: the rendering must avoid it.
    assert text != "-2147483648"
    assert "L" not in text and "U" not in text
    assert cpp_int(text) == (INT32_MIN, "int")


@pytest.mark.parametrize(
    "value",
    [
        INT32_MAX + 1,
        INT32_MIN - 1,
        2**32 - 1,
        2**32,
        -(2**32),
        2**40,
        -(2**40) - 3,
        INT64_MAX - 1,
        INT64_MAX,
        INT64_MIN + 1,
    ],
)
def test_int64_values_get_ll(value: int) -> None:
    text = render(value)
    assert text.endswith("LL") and not text.endswith("ULL")
    assert cpp_int(text) == (value, "long long")


def test_int64_values_exact_text() -> None:
    assert render(INT32_MAX + 1) == "2147483648LL"
    assert render(INT32_MIN - 1) == "-2147483649LL"
    assert render(INT64_MAX) == "9223372036854775807LL"


def test_int64_min_is_a_long_long_in_cpp() -> None:
    text = render(INT64_MIN)
    # `-9223372036854775808LL` is unary minus on a literal that fits in no signed type.
    assert text != "-9223372036854775808LL"
    assert cpp_int(text) == (INT64_MIN, "long long")


@pytest.mark.parametrize("value", [INT64_MAX + 1, 2**63 + 12345, UINT64_MAX - 1, UINT64_MAX])
def test_values_above_int64_max_get_ull(value: int) -> None:
    text = render(value)
    assert text == f"{value}ULL"
    assert cpp_int(text) == (value, "unsigned long long")


@pytest.mark.parametrize("value", [UINT64_MAX + 1, 2**64 + 5, 2**100, INT64_MIN - 1, -(2**64), -(2**100)])
def test_values_beyond_64_bits_raise_value_error(value: int) -> None:
    with pytest.raises(ValueError, match=str(value)):
        cujit.make_cpp_args(value)


def test_value_error_is_not_swallowed_among_other_arguments() -> None:
    with pytest.raises(ValueError):
        cujit.make_cpp_args(1, torch.float32, 2**64, True)


@given(st.integers(min_value=INT64_MIN - 2**70, max_value=UINT64_MAX + 2**70))
@settings(max_examples=300, deadline=None)
def test_any_int_renders_to_its_value_and_width(value: int) -> None:
    if value < INT64_MIN or value > UINT64_MAX:
        with pytest.raises(ValueError):
            cujit.make_cpp_args(value)
        return
    assert cpp_int(render(value)) == (value, expected_type(value))


@given(st.integers(min_value=INT32_MIN, max_value=INT32_MAX))
@settings(max_examples=200, deadline=None)
def test_any_int32_renders_as_plain_int(value: int) -> None:
    assert cpp_int(render(value)) == (value, "int")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (np.int8(-5), "-5"),
        (np.int16(300), "300"),
        (np.int32(3), "3"),
        (np.int32(INT32_MIN), None),
        (np.int64(2**40), "1099511627776LL"),
        (np.int64(INT64_MIN), None),
        (np.uint8(255), "255"),
        (np.uint32(2**32 - 1), "4294967295LL"),
        (np.uint64(UINT64_MAX), "18446744073709551615ULL"),
    ],
)
def test_numpy_integers(value: np.integer, text: str | None) -> None:
    rendered = render(value)
    if text is not None:
        assert rendered == text
    assert cpp_int(rendered) == (int(value), expected_type(int(value)))


def test_int_subclass_renders_as_int() -> None:
    import enum

    class Mode(enum.IntEnum):
        FAST = 2

    assert render(Mode.FAST) == "2"


# ------------------------------------------------------------------------------------------------ float
FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    1.5,
    0.1,
    0.2,
    0.3,
    1 / 3,
    2 / 3,
    math.pi,
    -math.e,
    1e-300,
    -1e-300,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,  # smallest normal
    2.225073858507201e-308,  # largest subnormal
    1e308,
    -1e308,
    1.7976931348623157e308,  # DBL_MAX
    -1.7976931348623157e308,
    1e16,
    1e22,
    1e23,
    2.0**53,
    2.0**53 + 2,
    123456789.123456789,
    1e-5,
    0.5e-7,
    3.4028234663852886e38,  # FLT_MAX
    float(2**63),
    float(2**64),
    float(np.float32(0.1)),
]


@pytest.mark.parametrize("value", FLOATS, ids=repr)
def test_float_round_trips_exactly(value: float) -> None:
    assert_float_round_trips(value, render(value))


def test_float_exact_text() -> None:
    assert render(1.5) == "1.5"
    assert render(0.1) == "0.1"
    assert render(-0.0) == "-0.0"
    assert render(1.0) == "1.0"  # not "1": that would be an int in C++


def test_integral_floats_stay_floating_literals() -> None:
    for value in (0.0, 1.0, -3.0, 1e16, 1e300, float(2**70)):
        text = render(value)
        assert "." in text or "e" in text.lower(), text
        assert_float_round_trips(value, text)


@given(st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=300, deadline=None)
def test_any_finite_float_round_trips(value: float) -> None:
    assert_float_round_trips(value, render(value))


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
@settings(max_examples=200, deadline=None)
def test_any_numpy_float32_round_trips(value: float) -> None:
    scalar = np.float32(value)
    assert_float_round_trips(float(scalar), render(scalar))


@pytest.mark.parametrize(
    "value",
    [np.float16(0.1), np.float16(-65504.0), np.float32(1.5), np.float32(0.1), np.float32(1e-45), np.float64(1e-300)],
    ids=repr,
)
def test_numpy_floats(value: np.floating) -> None:
    assert_float_round_trips(float(value), render(value))


def test_numpy_float32_exact_text() -> None:
    assert render(np.float32(1.5)) == "1.5"


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        -math.nan,
        math.inf,
        -math.inf,
        np.float32("nan"),
        np.float16("inf"),
        np.float64("-inf"),
    ],
    ids=repr,
)
def test_nan_and_inf_raise_value_error(value: object) -> None:
    with pytest.raises(ValueError, match=r"nan|inf"):
        cujit.make_cpp_args(value)


@pytest.mark.skipif(
    np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant,
    reason="long double is a double on this platform, so nothing can be lost",
)
def test_numpy_longdouble_is_not_silently_rounded() -> None:
    value = np.longdouble(1) / np.longdouble(3)
    try:
        text = render(value)
    except TypeError:
        return  # refusing is acceptable; rounding silently is not
    assert np.longdouble(text.removesuffix("L")) == value, text


# ------------------------------------------------------------------------------------------------ dtypes
# (torch dtype, NumPy spelling or None, C++ alias of cujit/include)
DTYPE_TABLE = [
    (torch.float32, "float32", "fp32_t"),
    (torch.float16, "float16", "fp16_t"),
    (torch.bfloat16, None, "bf16_t"),
    (torch.float64, "float64", "fp64_t"),
    (torch.float8_e4m3fn, None, "fp8_e4m3_t"),
    (torch.float8_e5m2, None, "fp8_e5m2_t"),
    (torch.int8, "int8", "int8_t"),
    (torch.int16, "int16", "int16_t"),
    (torch.int32, "int32", "int32_t"),
    (torch.int64, "int64", "int64_t"),
    (torch.uint8, "uint8", "uint8_t"),
    (torch.uint16, "uint16", "uint16_t"),
    (torch.uint32, "uint32", "uint32_t"),
    (torch.uint64, "uint64", "uint64_t"),
    (torch.bool, "bool", "bool"),
    (torch.complex64, "complex64", "complex64_t"),
    (torch.complex128, "complex128", "complex128_t"),
]


@pytest.mark.parametrize(("tdtype", "npname", "cpp"), DTYPE_TABLE, ids=lambda v: str(v))
def test_torch_dtype(tdtype: torch.dtype, npname: str | None, cpp: str) -> None:
    assert render(tdtype) == cpp


@pytest.mark.parametrize(("tdtype", "npname", "cpp"), DTYPE_TABLE, ids=lambda v: str(v))
def test_dtype_name_string(tdtype: torch.dtype, npname: str | None, cpp: str) -> None:
    name = str(tdtype).removeprefix("torch.")
    assert render(name) == cpp
    assert render(f"torch.{name}") == cpp


@pytest.mark.parametrize(("tdtype", "npname", "cpp"), [r for r in DTYPE_TABLE if r[1]], ids=lambda v: str(v))
def test_numpy_dtype_and_scalar_type(tdtype: torch.dtype, npname: str, cpp: str) -> None:
    assert render(np.dtype(npname)) == cpp
    assert render(np.dtype(npname).type) == cpp


@pytest.mark.parametrize(
    ("value", "cpp"),
    [
        (np.float16, "fp16_t"),
        (np.float32, "fp32_t"),
        (np.float64, "fp64_t"),
        (np.int32, "int32_t"),
        (np.uint64, "uint64_t"),
        (np.bool_, "bool"),
        (np.complex64, "complex64_t"),
        ("bfloat16", "bf16_t"),
        ("float8_e4m3fn", "fp8_e4m3_t"),
        ("float8_e5m2", "fp8_e5m2_t"),
        ("float16", "fp16_t"),
    ],
    ids=repr,
)
def test_dtype_spellings_of_the_brief(value: object, cpp: str) -> None:
    assert render(value) == cpp


@pytest.mark.parametrize(("tdtype", "npname", "cpp"), DTYPE_TABLE, ids=lambda v: str(v))
def test_symbolic_dtype_unwrap_result(tdtype: torch.dtype, npname: str | None, cpp: str) -> None:
    dtype = cujit.SymbolicDType()
    cujit.TensorMatcher([2]).with_dtype(symbol=dtype).verify(torch.zeros(2, dtype=tdtype))
    assert render(dtype.unwrap()) == cpp
    assert str(cujit.make_cpp_args(dtype.unwrap(), 4)) == f"{cpp}, 4"


def test_symbolic_dtype_unwrap_from_numpy() -> None:
    dtype = cujit.SymbolicDType()
    cujit.TensorMatcher([-1]).with_dtype(symbol=dtype).verify(np.zeros(3, dtype=np.float16))
    assert render(dtype.unwrap()) == "fp16_t"


@pytest.mark.parametrize(("tdtype", "npname", "cpp"), DTYPE_TABLE, ids=lambda v: str(v))
def test_every_alias_is_defined_in_cujit_include(tdtype: torch.dtype, npname: str | None, cpp: str) -> None:
    from cujit._runtime.headers import stand_in_dir

    files = [*INCLUDE.glob("*.cuh"), *stand_in_dir().rglob("*.h")]
    headers = "\n".join(p.read_text() for p in files)
    if cpp == "bool":
        return  # a C++ keyword
    # The fixed-width integers come from cujit's <cstdint> stand-in under NVRTC, the rest from cujit/types.cuh.
    pattern = rf"(using\s+{cpp}\s*=|typedef\s[^;]*\b{cpp}\s*;)"
    assert re.search(pattern, headers), f"{cpp} is not defined under {INCLUDE}"


def test_mixed_arguments() -> None:
    args = cujit.make_cpp_args(torch.bfloat16, 128, 2**40, False, 0.25, np.float32, "int8", np.uint64(2**63))
    assert str(args) == "bf16_t, 128, 1099511627776LL, false, 0.25, fp32_t, int8_t, 9223372036854775808ULL"


# ------------------------------------------------------------------------------------------------ TypeError
class _Thing:
    def __repr__(self) -> str:
        return "<a thing>"


@pytest.mark.parametrize(
    ("value", "shown", "type_name"),
    [
        ([1, 2], "[1, 2]", "list"),
        ((1,), "(1,)", "tuple"),
        (None, "None", "NoneType"),
        (_Thing(), "<a thing>", "_Thing"),
        (int, "<class 'int'>", "type"),
        (float, "<class 'float'>", "type"),
        (bool, "<class 'bool'>", "type"),
        ("not_a_dtype", "'not_a_dtype'", "str"),
        (b"float32", "b'float32'", "bytes"),
        (1 + 2j, "(1+2j)", "complex"),
        (np.complex64(1), None, "complex64"),
        (torch.complex32, "torch.complex32", "dtype"),
        ({"a": 1}, "{'a': 1}", "dict"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_anything_else_raises_type_error_naming_value_and_type(
    value: object, shown: str | None, type_name: str
) -> None:
    with pytest.raises(TypeError) as info:
        cujit.make_cpp_args(value)
    message = str(info.value)
    if shown is not None:
        assert shown in message
    assert f"of type {type_name}" in message


def test_object_type_error_names_the_object() -> None:
    thing = object()
    with pytest.raises(TypeError) as info:
        cujit.make_cpp_args(1, thing)
    assert repr(thing) in str(info.value)
    assert "of type object" in str(info.value)


def test_type_error_exact_message() -> None:
    with pytest.raises(TypeError) as info:
        cujit.make_cpp_args([1, 2])
    assert str(info.value) == (
        "make_cpp_args: cannot render [1, 2] of type list as a C++ template argument; "
        "expected a bool, int, float or dtype"
    )


def test_torch_scalar_tensor_is_not_a_value() -> None:
    with pytest.raises(TypeError, match="of type Tensor"):
        cujit.make_cpp_args(torch.tensor(3))
