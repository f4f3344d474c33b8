"""cujit/rows.cuh on the GPU: every head, tail and alignment of each pointer, for every dtype.

Each launch of a "cases" kernel of tests/kernels/rows_test.cuh walks many rows at once, one per group of
threads: every offset of y, a and b from a 16-byte boundary (0 .. 16 / itemsize - 1 elements, a and b
independently of y), every length from 0 to three vectors and a few more, and the odd lengths 2881, 4095 and 4097.
The output buffer is poisoned first: exactly the elements of each row must change, to exactly the reference values
(compared bit for bit), and every other byte must keep the poison. The values are small integers, so that every
dtype, fp8 included, computes them exactly.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

import cujit
from tests.test_rows_compile import KERNELS, wrappers

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

POISON = 0x5A
BLOCK = 128
#: torch dtype -> the alias of cujit/types.cuh. The unsigned types wider than a byte have the widths of the signed
#: ones (the same code paths) and torch's support for them on CUDA is partial, so they are only compiled.
DTYPES = {
    torch.float32: "fp32_t", torch.float16: "fp16_t", torch.bfloat16: "bf16_t", torch.float64: "fp64_t",
    torch.float8_e4m3fn: "fp8_e4m3_t", torch.float8_e5m2: "fp8_e5m2_t", torch.int8: "int8_t",
    torch.int16: "int16_t", torch.int32: "int32_t", torch.int64: "int64_t", torch.uint8: "uint8_t",
    torch.bool: "bool",
}
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
ODD = (2881, 4095, 4097)


@functools.cache
def _module(alias: str) -> cujit.JitModule:
    return cujit.load_jit(f"rows_test_{alias}", cuda_files=[KERNELS], cuda_wrappers=wrappers(alias))


def _lanes(dtype: torch.dtype) -> int:
    return 16 // dtype.itemsize


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same memory as integers of the same width, which every indexing and comparison supports."""
    return t.view(_BITS[t.element_size()])


def _values(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """n small integers of dtype (|v| <= 4, so that any sum of two is exact in every dtype)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), device="cuda", generator=g).bool()
    low = 0 if dtype == torch.uint8 else -4
    return torch.randint(low, 5, (n,), device="cuda", generator=g).to(dtype)


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b as the test kernels compute it (bool: modulo 2)."""
    if a.dtype == torch.bool:
        return a ^ b
    if a.dtype.is_floating_point:
        return (a.double() + b.double()).to(a.dtype)
    return (a.long() + b.long()).to(a.dtype)


def _poisoned(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((n * dtype.itemsize,), POISON, dtype=torch.uint8, device="cuda").view(dtype)


class Cases:
    """Rows at (y offset, a offset, b offset, length) laid out one after the other in three buffers.

    Row c starts at element base[c] + offset of each buffer, where base[c] is a multiple of the vector width (so
    that the offset is the row's distance from a 16-byte boundary), and is followed by at least one vector's
    worth of elements that no row owns: a write past a row's end lands there and is caught.
    """

    def __init__(self, rows: list[tuple[int, int, int, int]], dtype: torch.dtype) -> None:
        lanes = _lanes(dtype)
        self.rows = rows
        table, base = [], 0
        for oy, oa, ob, n in rows:
            table.append((base + oy, base + oa, base + ob, n))
            base += (max(oy, oa, ob) + n + 2 * lanes) // lanes * lanes
        self.size = base + lanes
        self.table = np.array(table, dtype=np.int64).reshape(-1, 4)
        self.device_table = torch.from_numpy(self.table.reshape(-1)).cuda()

    def positions(self, column: int) -> torch.Tensor:
        """The element indices of every row's elements in one buffer (0: y, 1: a, 2: b), rows in order."""
        starts, lengths = self.table[:, column], self.table[:, 3]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return torch.from_numpy(np.repeat(starts, lengths) + within).cuda()

    def row_of_each_element(self) -> torch.Tensor:
        return torch.from_numpy(np.repeat(np.arange(len(self.rows)), self.table[:, 3])).cuda()

    def index_in_row(self) -> torch.Tensor:
        lengths = self.table[:, 3]
        return torch.from_numpy(np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)).cuda()

    def launch(self, kernel: cujit.Kernel, group: int, *pointers: torch.Tensor) -> None:
        per_block = BLOCK // group
        grid = -(-len(self.rows) // per_block)
        cujit.LaunchKernel(grid, BLOCK)(kernel, *pointers, self.device_table, len(self.rows), group)


def _rows(dtype: torch.dtype) -> list[tuple[int, int, int, int]]:
    """Every (y offset, a offset) pair, b at y's offset and at another one, for short and odd lengths."""
    lanes = _lanes(dtype)
    found = []
    for oy, oa in itertools.product(range(lanes), repeat=2):
        for ob in sorted({oy, (oy + oa + 1) % lanes}):
            found += [(oy, oa, ob, n) for n in range(3 * lanes + 4)]
            found += [(oy, oa, ob, n) for n in ODD]
    return found


def _check_output(y: torch.Tensor, expected_rows: torch.Tensor, cases: Cases) -> None:
    expected = _poisoned(cases.size, y.dtype)
    _bits(expected)[cases.positions(0)] = _bits(expected_rows)
    wrong = (_bits(y) != _bits(expected)).nonzero().flatten()
    assert wrong.numel() == 0, (
        f"{wrong.numel()} elements wrong, first at {wrong[:8].tolist()}: got {_bits(y)[wrong[:8]].tolist()}, "
        f"expected {_bits(expected)[wrong[:8]].tolist()}")


@functools.cache
def _setup(dtype: torch.dtype) -> tuple[Cases, torch.Tensor, torch.Tensor]:
    cases = Cases(_rows(dtype), dtype)
    return cases, _values(cases.size, dtype, 1), _values(cases.size, dtype, 2)


@pytest.mark.parametrize("group", [BLOCK, 32, 8])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_map_of_two_inputs_at_every_alignment(dtype: torch.dtype, group: int) -> None:
    cases, a, b = _setup(dtype)
    y = _poisoned(cases.size, dtype)
    cases.launch(_module(DTYPES[dtype]).map2, group, y, a, b)
    a_rows = _bits(a)[cases.positions(1)].view(dtype)
    b_rows = _bits(b)[cases.positions(2)].view(dtype)
    _check_output(y, _add(a_rows, b_rows), cases)


@pytest.mark.parametrize("unroll", [1, 2])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_map_of_one_input_at_every_alignment(dtype: torch.dtype, unroll: int) -> None:
    cases, a, _ = _setup(dtype)
    y = _poisoned(cases.size, dtype)
    module = _module(DTYPES[dtype])
    cases.launch(module.map1 if unroll == 2 else module.map1_u1, 32, y, a)
    a_rows = _bits(a)[cases.positions(1)].view(dtype)
    _check_output(y, _add(a_rows, a_rows), cases)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_map_in_place(dtype: torch.dtype) -> None:
    # y = y + b: the rows whose a offset is y's, so that "a" is exactly the row of y that is written.
    cases = Cases([row for row in _rows(dtype) if row[0] == row[1]], dtype)
    a, b = _values(cases.size, dtype, 1), _values(cases.size, dtype, 2)
    y = a.clone()
    cases.launch(_module(DTYPES[dtype]).map2, BLOCK, y, y, b)
    a_rows = _bits(a)[cases.positions(0)].view(dtype)
    b_rows = _bits(b)[cases.positions(2)].view(dtype)
    expected = a.clone()
    _bits(expected)[cases.positions(0)] = _bits(_add(a_rows, b_rows))
    assert torch.equal(_bits(y), _bits(expected))


@pytest.mark.parametrize("group", [BLOCK, 8])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_write_at_every_alignment(dtype: torch.dtype, group: int) -> None:
    cases, _, _ = _setup(dtype)
    y = _poisoned(cases.size, dtype)
    cases.launch(_module(DTYPES[dtype]).write, group, y)
    v = cases.index_in_row() % 7 - 3
    expected = (v & 1).bool() if dtype == torch.bool else v.to(dtype)
    _check_output(y, expected, cases)


@pytest.mark.parametrize("group", [BLOCK, 32])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_read_visits_every_element_once(dtype: torch.dtype, group: int) -> None:
    cases, a, _ = _setup(dtype)
    out = torch.zeros(2 * len(cases.rows), dtype=torch.float64, device="cuda")
    cases.launch(_module(DTYPES[dtype]).read, group, out, a)
    values = _bits(a)[cases.positions(1)].view(dtype).float().double()
    weighted = (cases.index_in_row() + 1).double() * values
    expected_sums = torch.zeros(len(cases.rows), dtype=torch.float64, device="cuda")
    expected_sums.index_add_(0, cases.row_of_each_element(), weighted)
    lengths = torch.from_numpy(cases.table[:, 3]).cuda().double()
    assert torch.equal(out[0::2], lengths), "a row's visitor was not called exactly once per element"
    assert torch.equal(out[1::2], expected_sums)


@pytest.mark.parametrize("grid", [(3, 64), (4096, 256)])
@pytest.mark.parametrize("n", [*ODD, (1 << 20) + 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float64], ids=str)
def test_flat_range_over_the_whole_grid(dtype: torch.dtype, n: int, grid: tuple[int, int]) -> None:
    lanes = _lanes(dtype)
    pad = 2 * lanes
    a_all, b_all = _values(n + pad, dtype, 3), _values(n + pad, dtype, 4)
    for oy, oa, ob in [(0, 0, 0), (1, 1, 1), (0, 1, lanes - 1), (lanes - 1, 0, 1)]:
        y_all = _poisoned(n + pad, dtype)
        y, a, b = y_all[oy:oy + n], a_all[oa:oa + n], b_all[ob:ob + n]
        cujit.LaunchKernel(*grid)(_module(DTYPES[dtype]).flat_map2, y, a, b, n)
        expected = _poisoned(n + pad, dtype)
        expected[oy:oy + n] = _add(a, b)
        assert torch.equal(_bits(y_all), _bits(expected)), (oy, oa, ob)


def test_empty_row_writes_nothing() -> None:
    y = _poisoned(64, torch.float32)
    a = torch.ones(64, device="cuda")
    cujit.LaunchKernel(1, 32)(_module("fp32_t").flat_map2, y[3:], a[1:], a[2:], 0)
    assert torch.equal(_bits(y), _bits(_poisoned(64, torch.float32)))
