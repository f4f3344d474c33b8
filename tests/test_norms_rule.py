"""The RMSNorm configuration rule without a GPU: token counts, phased rows, and the launches they give.

- norm_config picks only precompiled instantiations (tests/test_compile_all.py compiles every one of them), that
  hold the row; the phased path loops over LOOP_ROWS rows per group from LOOP_TOKENS tokens on, aligned rows never.
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
    LOOP_ROWS,
    LOOP_TOKENS,
    PATH_PHASED,
    PATH_SCALAR,
    PATH_TILED,
    PATH_VECTOR,
    PHASED_CONFIGS,
    SCALAR_CONFIGS,
    VECTOR_CONFIGS,
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
def test_rule_picks_precompiled_configurations_that_hold_the_row(tokens: int) -> None:
    instances = {name: {_fields(f) for f in fn.op.instances()}
                 for name, fn in (("rms_norm", rms_norm), ("fused", fused_add_rms_norm))}
    assert instances["rms_norm"] == instances["fused"]
    hidden_sizes = sorted({*range(1, 140), *(2**k + d for k in range(8, 17) for d in (-1, 0, 1)), 5120, 5121,
                           40000})
    many = tokens >= LOOP_TOKENS
    for dtype in DTYPES:
        lanes = 16 // cujit.DType.of(dtype).itemsize
        for vector, phased in ((True, False), (False, True), (False, False)):
            for hidden in hidden_sizes:
                if vector and hidden % lanes:
                    continue
                c = norm_config(hidden, dtype, vector, phased, tokens)
                for gemma in (False, True):
                    assert _fields({"dtype": dtype, "gemma": gemma, "config": c}) in instances["rms_norm"], c
                capacity = c.row_threads * c.vecs * lanes
                if vector:
                    lists = [VECTOR_CONFIGS]
                else:
                    lists = [PHASED_CONFIGS if phased else SCALAR_CONFIGS]
                if c.path == PATH_TILED:
                    assert all(rt * v * lanes < hidden for configs in lists for rt, v in configs), (hidden, c)
                    continue
                assert c.path == (PATH_VECTOR if vector else PATH_PHASED if phased else PATH_SCALAR)
                if c.path == PATH_PHASED:  # the body's whole vectors; the head and tail are held besides
                    assert c.row_threads * c.vecs >= hidden // lanes, (hidden, dtype, c)
                    smaller = [(rt, v) for rt, v in PHASED_CONFIGS if rt * v < c.row_threads * c.vecs]
                    assert all(rt * v < hidden // lanes for rt, v in smaller), (hidden, dtype, c)
                else:
                    assert capacity >= hidden, (hidden, dtype, c)
                looped = c.path == PATH_PHASED and many
                assert c.rows == (LOOP_ROWS if looped else 1), (hidden, dtype, tokens, c)
                assert c.rows_per_block == c.block // c.row_threads * c.rows
                if c.path == PATH_PHASED:
                    assert c.row_threads >= 32 and c.vecs <= 2
                if c.rows > 1:
                    assert c.vecs <= 2  # the next row's vectors take registers too


def test_any_row_with_an_aligned_weight_is_split() -> None:
    """Both ops read x at any offset from the tensor whose 16-byte boundaries they follow (out, or residual), so
    only the weight decides between the phased and the scalar path; a row of 4095 to 4103 values takes the
    threads of one of 4096."""
    bf16 = cujit.DType.of(torch.bfloat16)
    weight = torch.empty(4104, dtype=torch.bfloat16)
    assert weight.data_ptr() % 16 == 0
    for hidden in (4095, 4096, 4097, 4103):
        for tokens, rows in ((4097, LOOP_ROWS), (7, 1)):
            c = layout_config(hidden, bf16, False, tokens, weight[:hidden])
            assert (c.path, c.row_threads, c.vecs, c.rows) == (PATH_PHASED, 256, 2, rows), (hidden, c)
    assert layout_config(4104, bf16, False, 1, weight).row_threads == 512  # 513 whole vectors
    assert layout_config(4097, bf16, False, 4097, torch.empty(4098, dtype=torch.bfloat16)[1:]).path == PATH_SCALAR
    assert layout_config(4096, bf16, True, 4097, weight).path == PATH_VECTOR


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
    cases = [(4097, 4096, PATH_VECTOR), (1000, 4096, PATH_VECTOR), (4097, 4097, PATH_PHASED),
             (7, 4097, PATH_PHASED), (2000, 64, PATH_VECTOR), (1100, 5, PATH_PHASED)]
    lanes = 16 // torch.empty(0, dtype=dtype).element_size()
    for tokens, hidden, path in cases:
        x = FakeCudaTensor(torch.randn(tokens, hidden, dtype=dtype), 0, stub)
        residual = FakeCudaTensor(torch.randn(tokens, hidden, dtype=dtype), 0, stub)
        w = FakeCudaTensor(torch.randn(hidden, dtype=dtype), 0, stub)
        expected = norm_config(hidden, dtype, hidden % lanes == 0, hidden % lanes != 0, tokens)
        assert expected.path == path
        for fn, args in ((ops.rms_norm, (x, w)), (ops.fused_add_rms_norm, (x, residual, w))):
            for _ in range(2):  # the generic path, then the generated one
                fn(*args)
                key = _key(stub, fn)
                assert key[2:] == (expected.path, expected.block, expected.row_threads, expected.vecs, expected.rows)
                assert stub.launches[-1].grid == (math.ceil(tokens / expected.rows_per_block), 1, 1)
                assert stub.launches[-1].block == (expected.block, 1, 1)
