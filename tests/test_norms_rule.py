"""The RMSNorm configuration rule without a GPU: token counts, phased rows, and the launches they give.

- norm_config picks only precompiled instantiations (tests/test_compile_all.py compiles every one of them), the
  smallest that hold the row; odd rows take element loads unless only the phased path holds them in a smaller
  tile; the phased path loops over LOOP_ROWS rows per group from LOOP_TOKENS tokens on, aligned rows never.
- layout_config reads the alignment of a real weight (a CPU tensor here: only its address matters).
- The generated launch code, against the stub driver: the grid covers rows_per_block rows per block.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import cujit
from cujit.fused_add_rms_norm import fused_add_rms_norm
from cujit.rms_norm import (
    FUSED_ELEMENT_THREADS,
    FUSED_FILL,
    FUSED_SCALAR_CONFIGS,
    LOOP_ROWS,
    LOOP_TOKENS,
    PATH_PHASED,
    PATH_SCALAR,
    PATH_TILED,
    PATH_VECTOR,
    PHASED_CONFIGS,
    SCALAR_CONFIGS,
    VECTOR_CONFIGS,
    fused_layout_config,
    layout_config,
    norm_config,
    rms_norm,
)
from tests.stub_cuda import FakeCudaTensor, StubBackend, bind_fakes

torch = pytest.importorskip("torch")

DTYPES = ("float32", "float16", "bfloat16")


def _fields(fields: dict[str, object]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(cujit.DType.of(v).name if k == "dtype" else v)) for k, v in fields.items()))


@pytest.mark.parametrize("tokens", [1, 16, LOOP_TOKENS - 1, LOOP_TOKENS, 4097])
@pytest.mark.parametrize("fused", [False, True])
def test_rule_picks_precompiled_configurations_that_hold_the_row(tokens: int, fused: bool) -> None:
    fn = fused_add_rms_norm if fused else rms_norm
    instances = {_fields(f) for f in fn.op.instances()}
    scalar_configs = FUSED_SCALAR_CONFIGS if fused else SCALAR_CONFIGS
    hidden_sizes = sorted({*range(1, 140), *(2**k + d for k in range(8, 17) for d in (-1, 0, 1)), 2881, 5120,
                           5121, 40000})
    many = tokens >= LOOP_TOKENS
    for dtype in DTYPES:
        lanes = 16 // cujit.DType.of(dtype).itemsize
        for vector, phased in ((True, False), (False, True), (False, False)):
            for hidden in hidden_sizes:
                if vector and hidden % lanes:
                    continue
                c = norm_config(hidden, dtype, vector, phased, tokens, fused=fused)
                for gemma in (False, True):
                    assert _fields({"dtype": dtype, "gemma": gemma, "config": c}) in instances, c
                tile = c.row_threads * c.vecs  # in 16-byte vectors
                scalar = [rt * v for rt, v in scalar_configs if rt * v * lanes >= hidden]
                split = [rt * v for rt, v in PHASED_CONFIGS if rt * v >= hidden // lanes] if phased else []
                scalar_threads = [rt for rt, v in scalar_configs if rt * v * lanes >= hidden]
                # fused: element loads of more than FUSED_ELEMENT_THREADS threads only for a row that fills at least
                # FUSED_FILL of their tile
                fills = bool(scalar) and -(-hidden // lanes) * FUSED_FILL[1] >= FUSED_FILL[0] * scalar[0]
                wide = bool(scalar_threads) and scalar_threads[0] > FUSED_ELEMENT_THREADS and not fills
                if vector:
                    held = [rt * v for rt, v in VECTOR_CONFIGS if rt * v * lanes >= hidden]
                    assert c.path == (PATH_VECTOR if held else PATH_TILED), (hidden, c)
                    assert not held or tile == held[0], (hidden, dtype, c)  # the smallest that holds the row
                elif split and (not scalar or scalar[0] > split[0] or (fused and wide)):
                    # the phased path only where element loads would need a larger tile (or, fused, more than
                    # FUSED_ELEMENT_THREADS threads for a row under FUSED_FILL of their tile); the body's whole
                    # vectors must fit, the head and tail are held besides
                    assert c.path == PATH_PHASED and tile == split[0], (hidden, dtype, c)
                else:
                    assert c.path == (PATH_SCALAR if scalar else PATH_TILED), (hidden, dtype, c)
                    assert not scalar or tile == scalar[0], (hidden, dtype, c)
                    assert c.path == PATH_TILED or (c.row_threads, c.vecs) in scalar_configs
                looped = c.path == PATH_PHASED and many
                assert c.rows == (LOOP_ROWS if looped else 1), (hidden, dtype, tokens, c)
                assert c.rows_per_block == c.block // c.row_threads * c.rows
                if c.path == PATH_PHASED:
                    assert c.row_threads >= 32 and c.vecs <= 2
                if c.rows > 1:
                    assert c.vecs <= 2  # the next row's vectors take registers too


def test_odd_rows_take_element_loads_unless_only_the_split_fits_a_smaller_tile() -> None:
    """Both ops read x at any offset from the tensor whose 16-byte boundaries they follow (out, or residual), so
    an aligned weight allows the phased path at any alignment of x. It is taken where element loads need a larger
    tile: a row of 4097 to 4103 bf16 values takes the phased 256 x 2 of a row of 4096; rows of 4095 and 4096
    (misaligned) fit the element loads of 256 x 2 (rms_norm) or 512 x 1 (fused_add_rms_norm)."""
    bf16 = cujit.DType.of(torch.bfloat16)
    weight = torch.empty(4104, dtype=torch.bfloat16)
    assert weight.data_ptr() % 16 == 0
    for config, scalar in ((layout_config, (256, 2)), (fused_layout_config, (512, 1))):
        for tokens, rows in ((4097, LOOP_ROWS), (7, 1)):
            for hidden in (4097, 4103):
                c = config(hidden, bf16, False, tokens, weight[:hidden])
                assert (c.path, c.row_threads, c.vecs, c.rows) == (PATH_PHASED, 256, 2, rows), (hidden, c)
            for hidden in (2881, 4095, 4096):
                c = config(hidden, bf16, False, tokens, weight[:hidden])
                assert (c.path, c.row_threads, c.vecs, c.rows) == (PATH_SCALAR, *scalar, 1), (hidden, c)
        misaligned = torch.empty(4098, dtype=torch.bfloat16)[1:]
        assert config(4097, bf16, False, 4097, misaligned).path == PATH_SCALAR
        assert config(4096, bf16, True, 4097, weight).path == PATH_VECTOR


# ------------------------------------------------------------------------------------------------ the stub
@pytest.fixture
def ops(stub: StubBackend) -> SimpleNamespace:
    declared = SimpleNamespace(rms_norm=rms_norm.op.variant("cujit_stub_rule"),
                               fused_add_rms_norm=fused_add_rms_norm.op.variant("cujit_stub_rule"))
    for fn in vars(declared).values():
        bind_fakes(fn.op.env, stub)
    return declared


def _key(stub: StubBackend, fn: object) -> tuple[object, ...]:
    launched = stub.launches[-1]
    for key, loaded in fn.op.table.items():  # type: ignore[attr-defined]
        if loaded.function == launched.function:
            return tuple(key[:-1])
    raise AssertionError("the last launch is not one of this op's kernels")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_launches_cover_the_rows(stub: StubBackend, ops: SimpleNamespace, dtype: torch.dtype) -> None:
    # (tokens, hidden, rms_norm's path, fused_add_rms_norm's path)
    cases = [(4097, 4096, PATH_VECTOR, PATH_VECTOR), (1000, 4096, PATH_VECTOR, PATH_VECTOR),
             (4097, 4097, PATH_PHASED, PATH_PHASED), (7, 4097, PATH_PHASED, PATH_PHASED),
             (2000, 64, PATH_VECTOR, PATH_VECTOR), (1100, 5, PATH_PHASED, PATH_SCALAR),
             (3000, 2881, PATH_SCALAR, PATH_SCALAR)]
    lanes = 16 // torch.empty(0, dtype=dtype).element_size()
    if lanes == 4:  # fp32: fused element loads would take 1024 threads for 2881 values (FUSED_ELEMENT_THREADS)
        cases[-1] = (3000, 2881, PATH_SCALAR, PATH_PHASED)
    for tokens, hidden, *paths in cases:
        x = FakeCudaTensor(torch.randn(tokens, hidden, dtype=dtype), 0, stub)
        residual = FakeCudaTensor(torch.randn(tokens, hidden, dtype=dtype), 0, stub)
        w = FakeCudaTensor(torch.randn(hidden, dtype=dtype), 0, stub)
        calls = ((ops.rms_norm, (x, w), False), (ops.fused_add_rms_norm, (x, residual, w), True))
        for (fn, args, fused), path in zip(calls, paths, strict=True):
            expected = norm_config(hidden, dtype, hidden % lanes == 0, hidden % lanes != 0, tokens, fused=fused)
            assert expected.path == path, (hidden, fused)
            for _ in range(2):  # the generic path, then the generated one
                fn(*args)
                key = _key(stub, fn)
                assert key[2:] == (expected.path, expected.block, expected.row_threads, expected.vecs, expected.rows)
                assert stub.launches[-1].grid == (math.ceil(tokens / expected.rows_per_block), 1, 1)
                assert stub.launches[-1].block == (expected.block, 1, 1)
