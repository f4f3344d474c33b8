"""The RMSNorm kernel paths on the GPU: token counts around LOOP_TOKENS, odd rows read in phase (looped over per row
group for many tokens), and every path value launched directly (including the ones no rule picks, which
benchmarks/tune_norms.py times).

References and tolerances are those of tests/test_norms_gpu.py: float64 torch, one unit in the last place of the storage
dtype (1e-5 for fp32); fused_add_rms_norm's residual compared exactly with torch's own rounded sum.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import cujit
from cujit.fused_add_rms_norm import fused_add_rms_norm
from cujit.rms_norm import (
    LOOP_ROWS,
    LOOP_TOKENS,
    PATH_PHASED,
    PATH_PHASED_DIRECT,
    PATH_SCALAR,
    PATH_TILED,
    PATH_VECTOR,
    PATH_VECTOR_LATE,
    NormConfig,
    fused_layout_config,
    layout_config,
    rms_norm,
)
from tests.test_norms_gpu import DTYPES, assert_matches, reference

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
CPP = {torch.float32: "fp32_t", torch.float16: "fp16_t", torch.bfloat16: "bf16_t"}
KERNELS = Path(cujit.__file__).resolve().parent / "kernels"


def _weight(hidden: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.rand(hidden, device="cuda") * 2 - 0.5).to(dtype)


def _config(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, fused: bool = False) -> NormConfig:
    """The configuration rms_norm (``fused``: fused_add_rms_norm) picks for x and out (or residual)."""
    tokens, hidden = x.shape
    dtype = cujit.DType.of(x.dtype)
    lanes = 16 // x.element_size()
    vector = (hidden % lanes == 0 and x.data_ptr() % 16 == 0 and other.data_ptr() % 16 == 0
              and weight.data_ptr() % 16 == 0 and (tokens <= 1 or (x.stride(0) % lanes == 0
                                                                    and other.stride(0) % lanes == 0)))
    return (fused_layout_config if fused else layout_config)(hidden, dtype, vector, tokens, weight)


def _check_fused(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 gemma: bool = False) -> None:
    """fused_add_rms_norm in place: residual becomes torch's own rounded sum, x its normalised rows."""
    total = x + residual
    expected_x = reference(total, weight, eps, gemma=gemma)
    fused_add_rms_norm(x, residual, weight, eps, gemma=gemma)
    assert torch.equal(residual, total)
    assert_matches(x, expected_x, x.dtype)


def _untouched_outside(wide: torch.Tensor, before: torch.Tensor, column: int, hidden: int) -> None:
    """The columns of ``wide`` outside its view [column, column + hidden) are as ``before``."""
    assert torch.equal(wide[:, :column], before[:, :column])
    assert torch.equal(wide[:, column + hidden:], before[:, column + hidden:])


# ------------------------------------------------------------------------------------------------ odd rows
#: The paths of rows that are not 16-byte aligned, with an aligned weight: the rule takes the phased one where it
#: holds the row in a smaller tile than element loads (4097 values and the like), the scalar one otherwise. Both
#: are also launched directly at these offsets below.
ODD_PATHS = (PATH_PHASED, PATH_SCALAR)
ODD = [(dt, t, h) for dt in DTYPES for t in (1, 7, 4097) for h in (1000, 4097, 5121)]


@pytest.mark.parametrize("case", ODD, ids=lambda c: f"{str(c[0])[6:]}-{c[1]}x{c[2]}")
@pytest.mark.parametrize("column", [1, 3, 7])
def test_rms_norm_odd_rows_at_any_offset(case: tuple[torch.dtype, int, int], column: int) -> None:
    dtype, tokens, hidden = case
    width = hidden + 11
    wide = torch.randn(tokens, width, device="cuda").to(dtype)
    x = wide[:, column:column + hidden]
    weight = _weight(hidden, dtype)
    expected = reference(x, weight)
    # out laid out as x: the same alignment at every row, so the phased path applies where it takes the smaller tile.
    wide_out = torch.full((tokens, width), float("nan"), device="cuda", dtype=dtype)
    out = wide_out[:, column:column + hidden]
    config = _config(x, out, weight)
    assert config.path in ODD_PATHS, config
    assert config.rows == (LOOP_ROWS if tokens >= LOOP_TOKENS and config.path == PATH_PHASED else 1), config
    assert rms_norm(x, weight, out=out) is out
    assert_matches(out, expected, dtype)
    assert wide_out[:, :column].isnan().all() and wide_out[:, column + hidden:].isnan().all()
    # A contiguous out: other alignments than x's (x read with shifted vectors).
    assert_matches(rms_norm(x, weight), expected, dtype)
    # In place.
    before = wide.clone()
    assert rms_norm(x, weight, out=x) is x
    assert_matches(x, expected, dtype)
    _untouched_outside(wide, before, column, hidden)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [5, 9, 17, 33, 1000, 4096, 4097])
def test_rms_norm_reads_x_out_of_phase_with_out(dtype: torch.dtype, hidden: int) -> None:
    """x and out at different offsets (and row strides) relative to 16 bytes: the phased path splits each row at
    out's boundaries and reads x with shifted vectors, falling back to element loads where a covering vector would
    reach outside x's row (short rows: nothing but such vectors)."""
    weight = _weight(hidden, dtype)
    for tokens in (1, 7, LOOP_TOKENS + 3):
        for x_column, out_column in ((1, 0), (3, 0), (0, 5), (2, 7), (7, 1)):
            wide_x = torch.randn(tokens, hidden + 9, device="cuda").to(dtype)
            x = wide_x[:, x_column:x_column + hidden]
            wide_out = torch.full((tokens, hidden + 12), float("nan"), device="cuda", dtype=dtype)
            out = wide_out[:, out_column:out_column + hidden]
            assert _config(x, out, weight).path in ODD_PATHS
            before = wide_x.clone()
            assert rms_norm(x, weight, out=out) is out
            assert_matches(out, reference(x, weight), dtype)
            assert torch.equal(wide_x, before)
            assert wide_out[:, :out_column].isnan().all() and wide_out[:, out_column + hidden:].isnan().all()


@pytest.mark.parametrize("case", ODD, ids=lambda c: f"{str(c[0])[6:]}-{c[1]}x{c[2]}")
@pytest.mark.parametrize("column", [1, 3, 7])
def test_fused_add_rms_norm_odd_rows_at_any_offset(case: tuple[torch.dtype, int, int], column: int) -> None:
    dtype, tokens, hidden = case
    width = hidden + 13
    wide_x = torch.randn(tokens, width, device="cuda").to(dtype)
    wide_residual = torch.randn(tokens, width, device="cuda").to(dtype)
    x, residual = wide_x[:, column:column + hidden], wide_residual[:, column:column + hidden]
    weight = _weight(hidden, dtype)
    before_x, before_residual = wide_x.clone(), wide_residual.clone()
    assert _config(x, residual, weight, fused=True).path in ODD_PATHS
    _check_fused(x, residual, weight, 1e-5, gemma=True)
    for wide, before in ((wide_x, before_x), (wide_residual, before_residual)):
        _untouched_outside(wide, before, column, hidden)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 2, 3, 5, 7, 9, 15, 17, 255, 257])
@pytest.mark.parametrize("tokens", [1, 33, 1100])
def test_short_odd_rows(dtype: torch.dtype, hidden: int, tokens: int) -> None:
    """Rows shorter than a vector or two: the head and the tail are all there is (phased, contiguous)."""
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    weight = _weight(hidden, dtype)
    lanes = 16 // x.element_size()
    if hidden % lanes:
        assert _config(x, x, weight).path in ODD_PATHS
    assert_matches(rms_norm(x, weight, 1e-5), reference(x, weight, 1e-5), dtype)
    residual = torch.randn_like(x)
    _check_fused(x, residual, weight)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [5, 17, 1000, 4096, 4097])
def test_fused_add_rms_norm_x_out_of_phase_with_residual(dtype: torch.dtype, hidden: int) -> None:
    """x at another offset (and row stride) than residual: each row split at residual's boundaries, x read with
    shifted vectors and written element by element in the body."""
    weight = _weight(hidden, dtype)
    for tokens in (1, 7, LOOP_TOKENS + 3):
        for x_column, r_column in ((1, 0), (0, 3), (2, 7), (7, 1)):
            wide_x = torch.randn(tokens, hidden + 9, device="cuda").to(dtype)
            wide_residual = torch.randn(tokens, hidden + 12, device="cuda").to(dtype)
            x = wide_x[:, x_column:x_column + hidden]
            residual = wide_residual[:, r_column:r_column + hidden]
            assert _config(x, residual, weight, fused=True).path in ODD_PATHS
            before_x, before_residual = wide_x.clone(), wide_residual.clone()
            _check_fused(x, residual, weight)
            for wide, before, column in ((wide_x, before_x, x_column), (wide_residual, before_residual, r_column)):
                _untouched_outside(wide, before, column, hidden)


def test_a_misaligned_weight_takes_the_scalar_path() -> None:
    dtype = torch.bfloat16
    misaligned_weight = torch.randn(4098, device="cuda").to(dtype)[1:]
    y = torch.randn(4097, 4097, device="cuda").to(dtype)
    assert _config(y, y, misaligned_weight).path == PATH_SCALAR
    assert _config(y, y, misaligned_weight, fused=True).path == PATH_SCALAR
    assert_matches(rms_norm(y, misaligned_weight), reference(y, misaligned_weight), dtype)
    residual = torch.randn_like(y)
    _check_fused(y, residual, misaligned_weight)


# ------------------------------------------------------------------------------------------------ token counts
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [8, 64, 1000, 4096, 8192, 16384])
@pytest.mark.parametrize("tokens", [LOOP_TOKENS - 1, LOOP_TOKENS, LOOP_TOKENS + 1, 1031, 4097])
def test_aligned_rows_around_loop_tokens(dtype: torch.dtype, hidden: int, tokens: int) -> None:
    """Around the token count where phased row groups start looping: aligned rows keep one row per group."""
    lanes = 16 // torch.empty(0, dtype=dtype).element_size()
    if hidden % lanes:
        pytest.skip("not a whole number of vectors")
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    weight = _weight(hidden, dtype)
    config = _config(x, x, weight)
    assert config.path == PATH_VECTOR and config.rows == 1, config
    expected = reference(x, weight, 1e-5, gemma=True)
    out = rms_norm(x, weight, 1e-5, gemma=True)
    assert_matches(out, expected, dtype)
    residual = torch.randn_like(x)
    _check_fused(x, residual, weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aligned_rows_strided_and_in_place(dtype: torch.dtype) -> None:
    tokens, hidden = 4097, 4096
    wide = torch.randn(tokens, hidden + 64, device="cuda").to(dtype)
    x = wide[:, 32:32 + hidden]
    weight = _weight(hidden, dtype)
    expected = reference(x, weight)
    config = _config(x, x, weight)
    assert config.path == PATH_VECTOR and config.rows == 1, config
    before = wide.clone()
    assert rms_norm(x, weight, out=x) is x
    assert_matches(x, expected, dtype)
    assert torch.equal(wide[:, :32], before[:, :32]) and torch.equal(wide[:, 32 + hidden:], before[:, 32 + hidden:])


# ------------------------------------------------------------------------------------------------ every path
def _variants(dtype: torch.dtype, hidden: int) -> list[NormConfig]:
    """For each path that applies to contiguous rows of ``hidden`` values, the smallest of a few configurations
    that holds the row, with 1, 2, 3 and 8 rows per row group where the path loops."""
    lanes = 16 // torch.empty(0, dtype=dtype).element_size()
    sizes = ((8, 1), (32, 2), (128, 4), (256, 2), (512, 2), (1024, 1), (1024, 2))

    def smallest(least_threads: int, most_vecs: int) -> tuple[int, int, int]:
        row_threads, vecs = next((rt, v) for rt, v in sizes
                                 if rt >= least_threads and v <= most_vecs and rt * v * lanes >= hidden)
        return max(row_threads, 128), row_threads, vecs

    found = [NormConfig(PATH_SCALAR, *smallest(32, 2)), NormConfig(PATH_TILED, 1024, 1024, 2),
             NormConfig(PATH_TILED, 256, 256, 1)]
    found += [NormConfig(path, *smallest(32, 2), rows) for rows in (1, 2, 3, 8)
              for path in (PATH_PHASED, PATH_PHASED_DIRECT)]
    if hidden % lanes == 0:
        found.append(NormConfig(PATH_VECTOR_LATE, *smallest(1, 4)))
        found += [NormConfig(PATH_VECTOR, *smallest(1, 4), rows) for rows in (1, 2, 3, 8)]
    return found


def _both_forms(name: str, dtype: torch.dtype, configs: list[NormConfig]) -> Any:
    """A module of both kernels at each of ``configs``: ``rms_norm_{i}`` and ``fused_add_rms_norm_{i}``."""
    wrappers = [(f"{n}_{i}", f"{n}_kernel<{CPP[dtype]}, false, {c.path}, {c.block}, {c.row_threads}, {c.vecs}, "
                 f"{c.rows}>") for i, c in enumerate(configs) for n in ("rms_norm", "fused_add_rms_norm")]
    return cujit.load_jit(name, cuda_files=[KERNELS / "rms_norm.cuh"], cuda_wrappers=wrappers)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000, 4096, 4097])
@pytest.mark.parametrize("tokens", [1, 37, 1100])
def test_every_path_launched_directly(dtype: torch.dtype, hidden: int, tokens: int) -> None:
    """Each path value and a few row counts per group, as the tuning script launches them."""
    configs = _variants(dtype, hidden)
    module = _both_forms(f"norm_paths_{str(dtype)[6:]}_{hidden}", dtype, configs)
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    residual = torch.randn_like(x)
    weight = _weight(hidden, dtype)
    expected = reference(x, weight)
    total = x + residual
    expected_fused = reference(total, weight)
    for i, c in enumerate(configs):
        launch = cujit.LaunchKernel(math.ceil(tokens / c.rows_per_block), c.block)
        out = torch.full_like(x, float("nan"))
        launch(getattr(module, f"rms_norm_{i}"), out, x, weight, tokens, hidden, hidden, hidden, 1e-6)
        assert_matches(out, expected, dtype)
        xs, rs = x.clone(), residual.clone()
        launch(getattr(module, f"fused_add_rms_norm_{i}"), xs, rs, weight, tokens, hidden, hidden, hidden, 1e-6)
        assert torch.equal(rs, total), c
        assert_matches(xs, expected_fused, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [5, 33, 1000, 4096, 4097, 5121])
@pytest.mark.parametrize("tokens", [1, 1100])
def test_both_phased_weight_sources_at_any_offset(dtype: torch.dtype, hidden: int, tokens: int) -> None:
    """The phased path with the weight staged (PATH_PHASED) and read directly (PATH_PHASED_DIRECT), launched
    whatever the rule picks: x and out (residual) at several offsets into wider rows, in phase and not. Each row is
    split at out's (residual's) 16-byte boundaries, x read with shifted vectors and, in the fused form, written
    element by element where out of phase."""
    lanes = 16 // torch.empty(0, dtype=dtype).element_size()
    row_threads = max(32, 1 << max(0, math.ceil(math.log2(max(1, hidden // lanes) / 2))))
    configs = [NormConfig(path, max(row_threads, 128), row_threads, 2, rows)
               for path in (PATH_PHASED, PATH_PHASED_DIRECT) for rows in (1, 4)]
    module = _both_forms(f"norm_phased_offset_{str(dtype)[6:]}_{hidden}", dtype, configs)
    weight = _weight(hidden, dtype)
    for x_column, out_column in ((1, 0), (3, 3), (0, 5), (7, 2)):
        wide_x = torch.randn(tokens, hidden + 9, device="cuda").to(dtype)
        x = wide_x[:, x_column:x_column + hidden]
        wide_other = torch.randn(tokens, hidden + 11, device="cuda").to(dtype)
        residual = wide_other[:, out_column:out_column + hidden]
        expected = reference(x, weight)
        total = x + residual
        expected_fused = reference(total, weight)
        strides = (wide_x.stride(0), wide_other.stride(0))
        for i, c in enumerate(configs):
            launch = cujit.LaunchKernel(math.ceil(tokens / c.rows_per_block), c.block)
            wide_out = torch.full_like(wide_other, float("nan"))
            out = wide_out[:, out_column:out_column + hidden]
            launch(getattr(module, f"rms_norm_{i}"), out, x, weight, tokens, hidden, *strides, 1e-6)
            assert_matches(out, expected, dtype)
            assert wide_out[:, :out_column].isnan().all() and wide_out[:, out_column + hidden:].isnan().all()
            xs_wide, rs_wide = wide_x.clone(), wide_other.clone()
            xs = xs_wide[:, x_column:x_column + hidden]
            rs = rs_wide[:, out_column:out_column + hidden]
            launch(getattr(module, f"fused_add_rms_norm_{i}"), xs, rs, weight, tokens, hidden, *strides, 1e-6)
            assert torch.equal(rs, total), (c, x_column, out_column)
            assert_matches(xs, expected_fused, dtype)
            _untouched_outside(xs_wide, wide_x, x_column, hidden)
            _untouched_outside(rs_wide, wide_other, out_column, hidden)
