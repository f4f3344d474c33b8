"""add_constant on the GPU against torch's `x + c`, on torch tensors and CuPy arrays."""

from __future__ import annotations

import pytest

import cujit
from cujit.add_constant import add_constant

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
SIZES = [0, 1, 3, 4, 5, 255, 4097, 2**20 + 3]


def _random(n: int, device: str = "cuda") -> torch.Tensor:
    return torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, device=device)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("c", [3, -7, 2**31 - 1])
def test_torch_matches_reference(n: int, c: int) -> None:
    x = _random(n)
    y = add_constant(x, c)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.device == x.device
    torch.testing.assert_close(y, x + c, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7), (0, 4), ()])
def test_any_shape(shape: tuple[int, ...]) -> None:
    x = torch.randint(-100, 100, shape, dtype=torch.int32, device="cuda")
    torch.testing.assert_close(add_constant(x, 5), x + 5, rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 255, 4097, 2**20 + 3])
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_unaligned_views(n: int, offset: int) -> None:
    base = _random(n + offset)
    out = torch.full((n + offset,), 7, dtype=torch.int32, device="cuda")
    add_constant(base[offset:], 9, out=out[offset:])
    torch.testing.assert_close(out[offset:], base[offset:] + 9, rtol=0, atol=0)
    assert (out[:offset] == 7).all()  # nothing before the view was written


def test_out_and_in_place() -> None:
    x = _random(10_001)
    expect = x + 4
    y = torch.full_like(x, -5)
    assert add_constant(x, 4, out=y) is y
    torch.testing.assert_close(y, expect, rtol=0, atol=0)
    add_constant(x, 4, out=x)
    torch.testing.assert_close(x, expect, rtol=0, atol=0)


#: GPU clock cycles of torch.cuda._sleep that keep a stream busy for tens of milliseconds.
BUSY_CYCLES = 100_000_000


@pytest.mark.parametrize("path", ["generated", "generic"])
def test_non_default_stream(path: str) -> None:
    """The op runs on the current stream: after the work queued there before it, whatever the default stream does.

    The side stream is kept busy, then the input is written there: a launch on any other stream would read the
    input before that write and give ``old + c``.
    """
    s = torch.cuda.Stream()
    add_constant(_random(5), 11)  # compiled and loaded: the call below is not slowed by a compile
    call = add_constant if path == "generated" else add_constant.op.call_slow  # type: ignore[attr-defined]
    old, new = torch.zeros(2**20 + 3, dtype=torch.int32, device="cuda"), _random(2**20 + 3)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        torch.cuda._sleep(BUSY_CYCLES)
        old.copy_(new)  # runs only after the sleep
        y = call(old, 11)
    torch.cuda.synchronize()
    torch.testing.assert_close(y, new + 11, rtol=0, atol=0)


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    for n in SIZES:
        x = cupy.random.randint(-(2**31), 2**31 - 1, size=n, dtype=cupy.int32)
        y = add_constant(x, 6)
        assert isinstance(y, cupy.ndarray) and y.shape == x.shape and y.dtype == x.dtype
        cupy.testing.assert_array_equal(y, x + cupy.int32(6))


def test_cupy_stream_context() -> None:
    cupy = pytest.importorskip("cupy")
    x = cupy.arange(100_003, dtype=cupy.int32)
    with cupy.cuda.Stream(non_blocking=True) as s:
        y = add_constant(x, 2)
        s.synchronize()
    cupy.testing.assert_array_equal(y, x + 2)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: torch.zeros(8, dtype=torch.int64, device="cuda"), "dtype: expected int32, got int64"),
        (lambda: torch.zeros(8, dtype=torch.int32), "device: expected cuda, got cpu"),
        (lambda: torch.zeros(8, 2, dtype=torch.int32, device="cuda").t(), "layout: expected contiguous"),
    ],
)
def test_bad_inputs_raise_and_launch_nothing(make, fragment: str) -> None:
    x = make()
    before = cujit.cache_stats()["compiles"]
    with pytest.raises(cujit.TensorMatchError, match=fragment):
        add_constant(x, 3)
    assert cujit.cache_stats()["compiles"] == before


def test_out_shape_mismatch() -> None:
    x = _random(10)
    with pytest.raises(cujit.TensorMatchError,
                       match=r"'out': shape: expected shape = \(10,\) \(bound by 'src' shape\), got \(11,\)"):
        add_constant(x, 1, out=_random(11))


def test_constant_validation() -> None:
    x = _random(4)
    with pytest.raises(TypeError, match=r"argument constant: expected int, got 1\.5 of type float"):
        add_constant(x, 1.5)
    with pytest.raises(TypeError, match="argument constant: expected int, got True of type bool"):
        add_constant(x, True)
    with pytest.raises(cujit.CheckError, match=r"constant must fit in int32 \(constant = 2147483648\)"):
        add_constant(x, 2**31)
    with pytest.raises(ValueError, match="constant must fit in int32"):  # a CheckError is a ValueError
        add_constant(x, -(2**31) - 1)


def test_compiles_once_for_many_calls() -> None:
    x = _random(1000)
    before = cujit.cache_stats()["compiles"]
    for _ in range(10):
        add_constant(x, 123)
    assert cujit.cache_stats()["compiles"] == before + 1
