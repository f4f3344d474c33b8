"""FP8 quantization ops on the GPU, byte for byte against the torch rule stated in cujit/fp8_quant.py.

The references divide by CUDA tensors only: torch computes ``a / b`` for a Python number ``b`` as ``a * (1 / b)``,
which is not the IEEE division the rule (and the kernels) use.

Layouts that are not whole 16-byte vectors at aligned addresses take the kernels' row path (odd widths of a strided
x, views such as x[:, 1:], an out that starts mid-vector); the "row path" section runs it at every alignment of x
and of q against the same rule, for all three ops.
"""

from __future__ import annotations

import pytest

import cujit

torch = pytest.importorskip("torch")

from cujit.fp8_quant import (  # noqa: E402
    per_tensor_quant_fp8,
    per_token_group_quant_fp8,
    per_token_quant_fp8,
)

pytestmark = pytest.mark.gpu
FP8 = torch.float8_e4m3fn
MIN_SCALE = 1 / (448 * 512)
MIN_SCALE_F32 = float(torch.tensor(MIN_SCALE, dtype=torch.float32))  # what a float32 scale holds


def fp8_bytes(q: torch.Tensor) -> torch.Tensor:
    """The bytes of an fp8 tensor, both NaN encodings (0x7F, 0xFF) as 0x7F."""
    raw = q.contiguous().view(torch.uint8)
    return torch.where((raw & 0x7F) == 0x7F, torch.full_like(raw, 0x7F), raw)


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-448, 448).to(FP8)


def dynamic_scale(amax: torch.Tensor) -> torch.Tensor:
    return (amax / torch.full_like(amax, 448.0)).clamp(min=MIN_SCALE)


def ref_per_token(x: torch.Tensor, scale_ub: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    if scale_ub is not None:
        amax = torch.minimum(amax, scale_ub)  # clamp(max=ub); NaN stays NaN
    scale = dynamic_scale(amax)
    return quantize(x, scale), scale


def ref_per_tensor(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if scale is None:
        amax = x.abs().amax().float().reshape(1) if x.numel() else torch.zeros(1, device="cuda")
        scale = dynamic_scale(amax)
    return quantize(x, scale), scale


def ref_per_group(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, hidden = x.shape
    groups = x.float().reshape(tokens, hidden // group_size, group_size)
    scale = dynamic_scale(groups.abs().amax(dim=-1, keepdim=True))
    return quantize(groups, scale).reshape(tokens, hidden), scale.reshape(tokens, hidden // group_size)


def assert_same(q: torch.Tensor, scales: torch.Tensor, expect_q: torch.Tensor, expect_scales: torch.Tensor) -> None:
    assert q.dtype == FP8 and q.shape == expect_q.shape and q.is_contiguous()
    assert torch.equal(fp8_bytes(q), fp8_bytes(expect_q))
    assert scales.dtype == torch.float32 and scales.shape == expect_scales.shape
    torch.testing.assert_close(scales, expect_scales, rtol=0, atol=0, equal_nan=True)


def rows(tokens: int, hidden: int, dtype: torch.dtype, pad: int = 0, scale: float = 3.0) -> torch.Tensor:
    """[tokens, hidden], rows ``hidden + pad`` apart."""
    return (torch.randn(tokens, hidden + pad, device="cuda") * scale).to(dtype)[:, :hidden]


DTYPES = [torch.bfloat16, torch.float16, torch.float32]
ID = str


# ---------------------------------------------------------------------------------------------------- per token
@pytest.mark.parametrize("tokens", [0, 1, 7, 4097])
@pytest.mark.parametrize("hidden", [128, 1000, 4096, 7168])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_token(tokens: int, hidden: int, dtype: torch.dtype) -> None:
    x = rows(tokens, hidden, dtype)
    assert_same(*per_token_quant_fp8(x), *ref_per_token(x))


@pytest.mark.parametrize(("hidden", "pad"), [(4096, 8), (4096, 1), (1001, 0), (65536, 0), (20000, 3)])
def test_per_token_strided_unaligned_and_long_rows(hidden: int, pad: int) -> None:
    x = rows(9, hidden, torch.bfloat16, pad)
    assert_same(*per_token_quant_fp8(x), *ref_per_token(x))


def test_per_token_scale_upper_bound() -> None:
    x = rows(300, 2048, torch.bfloat16, scale=20.0)
    ub = torch.tensor([5.0], device="cuda")
    assert_same(*per_token_quant_fp8(x, scale_ub=ub), *ref_per_token(x, ub))


def test_per_token_zero_inf_and_nan_rows() -> None:
    x = rows(6, 256, torch.float32)
    x[1] = 0.0
    x[2, 7] = float("inf")
    x[3, 9] = float("-inf")
    x[4, 100] = float("nan")
    x[5] = 1e-30  # below the floor: scale is the floor, q is 0
    q, scales = per_token_quant_fp8(x)
    assert_same(q, scales, *ref_per_token(x))
    assert scales[1, 0].item() == MIN_SCALE_F32 and (fp8_bytes(q[1]) == 0).all()
    assert scales[2, 0].item() == float("inf")
    assert fp8_bytes(q[2])[7].item() == 0x7F and fp8_bytes(q[2])[0].item() in (0, 0x80)  # inf / inf, x / inf
    assert torch.isnan(scales[4, 0]) and (fp8_bytes(q[4]) == 0x7F).all()
    assert scales[5, 0].item() == MIN_SCALE_F32


# ---------------------------------------------------------------------------------------------------- per tensor
@pytest.mark.parametrize("tokens", [0, 1, 7, 4097])
@pytest.mark.parametrize("hidden", [128, 4096, 7168])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_per_tensor(tokens: int, hidden: int, dtype: torch.dtype, static: bool) -> None:
    x = rows(tokens, hidden, dtype)
    scale = torch.tensor([0.0123], device="cuda") if static else None
    assert_same(*per_tensor_quant_fp8(x, scale), *ref_per_tensor(x, scale))


@pytest.mark.parametrize(("tokens", "hidden", "pad"), [(333, 4096, 8), (333, 4096, 1), (5, 999, 0),
                                                       (1, 3, 0), (4097, 5120, 16)])
def test_per_tensor_strided_and_odd_shapes(tokens: int, hidden: int, pad: int) -> None:
    x = rows(tokens, hidden, torch.float16, pad)
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))


def test_per_tensor_static_scale_saturates() -> None:
    x = torch.tensor([[1.0, -1.0, 100.0, -100.0, 0.5, 1e-6, float("inf"), 0.0]], device="cuda")
    scale = torch.tensor([1 / 448], device="cuda")
    q, scale_out = per_tensor_quant_fp8(x, scale)
    assert_same(q, scale_out, *ref_per_tensor(x, scale))
    assert fp8_bytes(q)[0, :4].tolist() == [0x7E, 0xFE, 0x7E, 0xFE]  # +-448
    assert scale_out.data_ptr() != scale.data_ptr()  # the returned scale is a copy


def test_per_tensor_the_maximum_lies_in_the_last_chunk() -> None:
    x = rows(4097, 4096, torch.bfloat16, scale=1.0)
    x[-1, -1] = -300.0  # read last by the first kernel, first by the second
    q, scale = per_tensor_quant_fp8(x)
    assert_same(q, scale, *ref_per_tensor(x))
    assert scale.item() == pytest.approx(300 / 448)


def test_per_tensor_nan_and_zeros() -> None:
    zeros = torch.zeros(50, 512, dtype=torch.bfloat16, device="cuda")
    q, scale = per_tensor_quant_fp8(zeros)
    assert scale.item() == MIN_SCALE_F32 and (fp8_bytes(q) == 0).all()
    x = rows(50, 512, torch.bfloat16)
    x[31, 5] = float("nan")
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))


# ---------------------------------------------------------------------------------------------------- per group
@pytest.mark.parametrize("tokens", [0, 1, 7, 4097])
@pytest.mark.parametrize("hidden", [128, 4096, 7168])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("column_major", [False, True], ids=["row_major", "column_major"])
def test_per_group(tokens: int, hidden: int, dtype: torch.dtype, column_major: bool) -> None:
    x = rows(tokens, hidden, dtype)
    q, scales = per_token_group_quant_fp8(x, 128, column_major_scales=column_major)
    assert_same(q, scales.contiguous(), *ref_per_group(x, 128))
    if tokens > 1:
        assert scales.stride() == ((1, tokens) if column_major else (hidden // 128, 1))


@pytest.mark.parametrize("group_size", [16, 32, 64, 256, 512, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=ID)
def test_per_group_sizes(group_size: int, dtype: torch.dtype) -> None:
    x = rows(37, 2048, dtype)
    assert_same(*(t.contiguous() for t in per_token_group_quant_fp8(x, group_size)), *ref_per_group(x, group_size))


@pytest.mark.parametrize("pad", [8, 1])
def test_per_group_strided_and_unaligned(pad: int) -> None:
    x = rows(257, 1024, torch.bfloat16, pad)
    q, scales = per_token_group_quant_fp8(x, 128, column_major_scales=True)
    assert_same(q, scales.contiguous(), *ref_per_group(x, 128))


def test_per_group_zero_inf_and_nan_groups() -> None:
    x = rows(3, 512, torch.float16)
    x[0, :128] = 0.0
    x[1, 130] = float("inf")
    x[2, 300] = float("nan")
    q, scales = per_token_group_quant_fp8(x, 128)
    assert_same(q, scales, *ref_per_group(x, 128))
    assert scales[0, 0].item() == MIN_SCALE_F32 and scales[1, 1].item() == float("inf") and torch.isnan(scales[2, 2])
    assert (fp8_bytes(q[2, 256:384]) == 0x7F).all() and not (fp8_bytes(q[2, 384:]) == 0x7F).any()


def test_out_arguments() -> None:
    x = rows(64, 1024, torch.bfloat16)
    out = torch.empty(64, 1024, dtype=FP8, device="cuda")
    scales = torch.empty(8, 64, device="cuda").t()  # column-major, given by the caller
    got = per_token_group_quant_fp8(x, 128, column_major_scales=True, out=out, scales=scales)
    assert got[0] is out and got[1] is scales
    assert_same(out, scales.contiguous(), *ref_per_group(x, 128))
    with pytest.raises(cujit.TensorMatchError, match="'scales'"):
        per_token_group_quant_fp8(x, 128, out=out, scales=scales)  # row-major expected


# ---------------------------------------------------------------------------------------------------- all three
def test_cuda_graph_replays_with_new_data() -> None:
    x = rows(16, 4096, torch.bfloat16)
    static_scale = torch.tensor([0.02], device="cuda")
    calls = (lambda: per_token_quant_fp8(x), lambda: per_tensor_quant_fp8(x), lambda: per_tensor_quant_fp8(
        x, static_scale), lambda: per_token_group_quant_fp8(x, 128, column_major_scales=True))
    refs = (lambda: ref_per_token(x), lambda: ref_per_tensor(x), lambda: ref_per_tensor(x, static_scale),
            lambda: ref_per_group(x, 128))
    for call in calls:
        call()  # compile and load outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = [call() for call in calls]
    for _ in range(3):
        x.copy_(rows(16, 4096, torch.bfloat16, scale=float(torch.rand(1)) * 10))
        static_scale.fill_(float(torch.rand(1)) + 0.01)
        graph.replay()
        torch.cuda.synchronize()
        for (q, s), ref in zip(outputs, refs, strict=True):
            assert_same(q, s.contiguous(), *ref())


def test_torch_compile_fullgraph_matches_eager() -> None:
    def step(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x * 2
        q1, s1 = per_token_quant_fp8(y)
        q2, s2 = per_tensor_quant_fp8(y)
        q3, s3 = per_tensor_quant_fp8(y, scale)
        q4, s4 = per_token_group_quant_fp8(y, 128, column_major_scales=True)
        return q1, s1, q2, s2, q3, s3, q4, s4.contiguous()

    compiled = torch.compile(step, fullgraph=True)
    for tokens in (3, 200):
        x = rows(tokens, 1024, torch.bfloat16)
        scale = torch.tensor([0.01], device="cuda")
        for got, expect in zip(compiled(x, scale), step(x, scale), strict=True):
            if got.dtype == FP8:
                assert torch.equal(fp8_bytes(got), fp8_bytes(expect))
            else:
                torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_opcheck() -> None:
    x = rows(9, 512, torch.bfloat16)
    torch.library.opcheck(per_token_quant_fp8.op.torch_op.default, (x,))
    torch.library.opcheck(per_tensor_quant_fp8.op.torch_op.default, (x,))
    torch.library.opcheck(per_tensor_quant_fp8.op.torch_op.default, (x, torch.tensor([0.1], device="cuda")))
    torch.library.opcheck(per_token_group_quant_fp8.op.torch_op.default, (x, 128), {"column_major_scales": True})


def test_importable_from_their_own_modules() -> None:
    from cujit.per_tensor_quant_fp8 import per_tensor_quant_fp8 as a
    from cujit.per_token_group_quant_fp8 import per_token_group_quant_fp8 as b
    from cujit.per_token_quant_fp8 import per_token_quant_fp8 as c

    assert (a, b, c) == (per_tensor_quant_fp8, per_token_group_quant_fp8, per_token_quant_fp8)
    assert cujit.per_token_quant_fp8.per_token_quant_fp8 is per_token_quant_fp8


REFUSALS: list[tuple[str, object, type[Exception], str]] = [
    ("int input", lambda x: per_token_quant_fp8(x.to(torch.int32)), cujit.TensorMatchError, "'x': dtype"),
    ("strided columns", lambda x: per_token_quant_fp8(x[:, ::2]), cujit.TensorMatchError, "'x': stride"),
    ("1-D input", lambda x: per_tensor_quant_fp8(x[0]), cujit.TensorMatchError, "'x': rank"),
    ("scale of two values", lambda x: per_tensor_quant_fp8(x, torch.ones(2, device="cuda")), cujit.TensorMatchError,
     "'scale'"),
    ("float64 scale_ub", lambda x: per_token_quant_fp8(x, scale_ub=torch.ones(1, device="cuda").double()),
     cujit.TensorMatchError, "'scale_ub': dtype"),
    ("group not dividing", lambda x: per_token_group_quant_fp8(x[:, :384], 256), cujit.CujitError, "multiple"),
    ("group not a power of two", lambda x: per_token_group_quant_fp8(x, 96), cujit.CujitError, "power of two"),
    ("group too small", lambda x: per_token_group_quant_fp8(x, 8), cujit.CujitError, "power of two"),
    ("group_size a float", lambda x: per_token_group_quant_fp8(x, 128.0), TypeError, "group_size"),
    ("out of another dtype", lambda x: per_token_quant_fp8(x, out=torch.empty_like(x)), cujit.TensorMatchError,
     "'out': dtype"),
    ("scales of another shape", lambda x: per_token_quant_fp8(x, scales=torch.empty(x.shape[0], device="cuda")),
     cujit.TensorMatchError, "'scales'"),
    ("input on the CPU", lambda x: per_token_group_quant_fp8(x.cpu()), cujit.TensorMatchError, "device"),
]


@pytest.mark.parametrize(("case", "call", "error", "match"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_wrong_inputs_are_refused_before_any_launch(case: str, call: object, error: type[Exception],
                                                     match: str) -> None:
    x = rows(8, 512, torch.bfloat16)
    before = x.clone()
    with pytest.raises(error, match=match):
        call(x)  # type: ignore[operator]
    torch.cuda.synchronize()
    assert torch.equal(x, before)


def test_out_untouched_when_refused() -> None:
    x = rows(8, 512, torch.bfloat16)
    out = torch.full((8, 512), 0x33, dtype=torch.uint8, device="cuda").view(FP8)
    with pytest.raises(cujit.TensorMatchError):
        per_token_quant_fp8(x, out=out, scales=torch.empty(8, 2, device="cuda"))
    torch.cuda.synchronize()
    assert (out.view(torch.uint8) == 0x33).all()


# ---------------------------------------------------------------------------------------------------- plans
# The plans depend on the token count (one vector per thread up to FEW_TOKENS rows, more beyond) and, per tensor,
# on the size and on whether the scale is given: every path, odd sizes and strides.
PLAN_TOKENS = [1, 2, 16, 17, 300, 4097]


@pytest.mark.parametrize("tokens", PLAN_TOKENS)
@pytest.mark.parametrize(("hidden", "pad"), [(7, 0), (136, 0), (4096, 0), (7168, 0), (4096, 8), (136, 3), (4097, 0),
                                            (4103, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_token_plans(tokens: int, hidden: int, pad: int, dtype: torch.dtype) -> None:
    x = rows(tokens, hidden, dtype, pad)
    assert_same(*per_token_quant_fp8(x), *ref_per_token(x))


@pytest.mark.parametrize("tokens", [2, 300])
def test_per_token_scale_upper_bound_both_plans(tokens: int) -> None:
    x = rows(tokens, 4096, torch.float32, scale=1e6)  # capped far below the max: quotients far beyond 448
    ub = torch.tensor([1e-3], device="cuda")
    assert_same(*per_token_quant_fp8(x, scale_ub=ub), *ref_per_token(x, ub))


@pytest.mark.parametrize("tokens", PLAN_TOKENS)
@pytest.mark.parametrize(("hidden", "group_size"), [(4096, 128), (7168, 128), (128, 128), (144, 16), (2048, 1024),
                                                    (1536, 512), (192, 64)])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("column_major", [False, True], ids=["row_major", "column_major"])
def test_per_group_plans(tokens: int, hidden: int, group_size: int, dtype: torch.dtype, column_major: bool) -> None:
    x = rows(tokens, hidden, dtype)
    q, scales = per_token_group_quant_fp8(x, group_size, column_major_scales=column_major)
    assert_same(q, scales.contiguous(), *ref_per_group(x, group_size))


@pytest.mark.parametrize("tokens", [1, 17, 4097])
@pytest.mark.parametrize("pad", [8, 1, 16])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_group_strided_plans(tokens: int, pad: int, dtype: torch.dtype) -> None:
    x = rows(tokens, 7168, dtype, pad)
    q, scales = per_token_group_quant_fp8(x, 128, column_major_scales=True)
    assert_same(q, scales.contiguous(), *ref_per_group(x, 128))


def test_per_group_many_groups_per_row() -> None:
    # 4096 groups of 16 a row: the row index of a group comes from a multiply-high, checked across many rows
    x = rows(600, 65536, torch.bfloat16)
    assert_same(*per_token_group_quant_fp8(x, 16), *ref_per_group(x, 16))


@pytest.mark.parametrize("tokens", [1, 2, 16, 17, 4097])
@pytest.mark.parametrize(("hidden", "pad"), [(7, 0), (136, 0), (4096, 0), (7168, 0), (7, 1), (136, 8)])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_per_tensor_plans(tokens: int, hidden: int, pad: int, dtype: torch.dtype, static: bool) -> None:
    x = rows(tokens, hidden, dtype, pad)
    scale = torch.tensor([0.0123], device="cuda") if static else None
    assert_same(*per_tensor_quant_fp8(x, scale), *ref_per_tensor(x, scale))


@pytest.mark.parametrize(("tokens", "hidden"), [(16, 4096), (1, 65537), (8, 8193), (256, 4096), (257, 4096),
                                                (1, 1 << 20), (3, 349529)])
def test_per_tensor_size_thresholds(tokens: int, hidden: int) -> None:
    x = rows(tokens, hidden, torch.bfloat16)
    x.view(-1)[-1] = -77.0  # the max in the last values
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))


# ---------------------------------------------------------------------------------------------------- row path
# Odd widths, x views that start 1 to 7 elements past a 16-byte boundary (x = base[:, k:], and a contiguous x one
# element in), and q views that start 1 to 7 bytes in, for every dtype: per token and per tensor take the row
# path for all of these; per group too where its groups allow.
ODD_HIDDEN = [1, 7, 2881, 4095, 4097]
LAYOUTS = ["rows", "x[:, 1:]", "x[:, 3:]", "x[:, 7:]", "flat + 1"]


def laid_out(tokens: int, hidden: int, dtype: torch.dtype, layout: str, scale: float = 3.0) -> torch.Tensor:
    """x [tokens, hidden] of random values: contiguous ("rows"), a column slice that starts k elements into rows
    k columns wider ("x[:, k:]"), or contiguous from one element past the start of its storage ("flat + 1")."""
    if layout == "rows":
        return rows(tokens, hidden, dtype, scale=scale)
    if layout == "flat + 1":
        flat = (torch.randn(tokens * hidden + 1, device="cuda") * scale).to(dtype)
        return flat[1:].view(tokens, hidden)
    k = int(layout[5])
    return (torch.randn(tokens, hidden + k, device="cuda") * scale).to(dtype)[:, k:]


def q_view(tokens: int, hidden: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(storage, out): an fp8 out [tokens, hidden] that starts ``offset`` bytes into a storage of 0x33 bytes, with
    one guard byte after it."""
    storage = torch.full((tokens * hidden + offset + 1,), 0x33, dtype=torch.uint8, device="cuda")
    return storage, storage[offset:offset + tokens * hidden].view(FP8).view(tokens, hidden)


def assert_guards(storage: torch.Tensor, offset: int) -> None:
    assert (storage[:offset] == 0x33).all() and storage[-1].item() == 0x33


@pytest.mark.parametrize("tokens", [1, 5, 300])
@pytest.mark.parametrize("hidden", [*ODD_HIDDEN, 4096])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_token_row_path(tokens: int, hidden: int, layout: str, dtype: torch.dtype) -> None:
    x = laid_out(tokens, hidden, dtype, layout)
    assert_same(*per_token_quant_fp8(x), *ref_per_token(x))


@pytest.mark.parametrize("tokens", [1, 5, 300])
@pytest.mark.parametrize("hidden", [*ODD_HIDDEN, 4096])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_per_tensor_row_path(tokens: int, hidden: int, layout: str, dtype: torch.dtype, static: bool) -> None:
    x = laid_out(tokens, hidden, dtype, layout)
    scale = torch.tensor([0.0123], device="cuda") if static else None
    assert_same(*per_tensor_quant_fp8(x, scale), *ref_per_tensor(x, scale))


@pytest.mark.parametrize("offset", range(1, 8))
@pytest.mark.parametrize("layout", ["rows", "x[:, 1:]", "x[:, 3:]"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_row_path_out_views(offset: int, layout: str, dtype: torch.dtype) -> None:
    """q one to seven bytes past an aligned address: the aligned words of each row assembled across lanes, and
    nothing written outside q."""
    for tokens, hidden in ((7, 4096), (7, 4097), (300, 2881), (3, 7), (2, 65537)):
        x = laid_out(tokens, hidden, dtype, layout)
        storage, out = q_view(tokens, hidden, offset)
        scales = torch.empty(tokens, 1, device="cuda")
        assert per_token_quant_fp8(x, out=out, scales=scales)[0] is out
        assert_same(out, scales, *ref_per_token(x))
        assert_guards(storage, offset)
        for static in (None, torch.tensor([0.0123], device="cuda")):
            storage, out = q_view(tokens, hidden, offset)
            q, scale = per_tensor_quant_fp8(x, static, out=out)
            assert q is out
            assert_same(out, scale, *ref_per_tensor(x, static))
            assert_guards(storage, offset)


@pytest.mark.parametrize("group_size", [16, 128, 1024])
@pytest.mark.parametrize("layout", ["x[:, 1:]", "x[:, 3:]", "x[:, 7:]", "flat + 1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
@pytest.mark.parametrize("column_major", [False, True], ids=["row_major", "column_major"])
def test_per_group_row_path(group_size: int, layout: str, dtype: torch.dtype, column_major: bool) -> None:
    """Groups that start mid-vector (every group of a row at the same offset) take the row path."""
    for tokens, hidden in ((1, 2048), (37, 2048), (300, 4096)):
        x = laid_out(tokens, hidden, dtype, layout)
        q, scales = per_token_group_quant_fp8(x, group_size, column_major_scales=column_major)
        assert_same(q, scales.contiguous(), *ref_per_group(x, group_size))


@pytest.mark.parametrize("offset", range(1, 16))
@pytest.mark.parametrize("layout", ["rows", "x[:, 1:]"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_group_row_path_out_views(offset: int, layout: str, dtype: torch.dtype) -> None:
    """q 1 to 15 bytes past a 16-byte boundary, and nothing written outside q. The vector path stores 16-byte
    accesses for bf16 groups of 512 or more and 8- or 16-byte ones for fp32 groups of 256 or more, so q + 8 and
    q + 4 take the row path there."""
    for group_size in (16, 128, 256, 1024):
        x = laid_out(33, 2048, dtype, layout)
        storage, out = q_view(33, 2048, offset)
        q, scales = per_token_group_quant_fp8(x, group_size, out=out)
        assert q is out
        assert_same(out, scales, *ref_per_group(x, group_size))
        assert_guards(storage, offset)


@pytest.mark.parametrize("tokens", [3, 300])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_row_path_long_rows_and_large_tensors(tokens: int, dtype: torch.dtype) -> None:
    """Rows longer than the vectors a block holds in registers (the rest read again), and per tensor a tensor
    beyond SMALL_TENSOR_VALUES (256 x 4 chunks a block, many partial maxima), the max in the last value."""
    for hidden in (65537, 20001):
        x = laid_out(tokens, hidden, dtype, "x[:, 1:]")
        x[-1, -1] = -1e4
        assert_same(*per_token_quant_fp8(x), *ref_per_token(x))
        assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))
    x = laid_out(4097, 4097, dtype, "flat + 1")
    x[-1, -1] = -1e4
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))
    assert_same(*per_tensor_quant_fp8(x, torch.tensor([0.5], device="cuda")),
                *ref_per_tensor(x, torch.tensor([0.5], device="cuda")))


@pytest.mark.parametrize("layout", ["x[:, 1:]", "flat + 1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_row_path_matches_the_vector_path(layout: str, dtype: torch.dtype) -> None:
    """The same values laid out both ways give the same bytes and scales, with a scale bound as well."""
    x = laid_out(300, 4096, dtype, layout)
    aligned = x.contiguous()
    ub = torch.tensor([2.0], device="cuda")
    for call in (lambda t: per_token_quant_fp8(t), lambda t: per_token_quant_fp8(t, scale_ub=ub),
                 lambda t: per_tensor_quant_fp8(t), lambda t: per_tensor_quant_fp8(t, ub),
                 lambda t: per_token_group_quant_fp8(t, 128), lambda t: per_token_group_quant_fp8(t, 16)):
        q, s = call(x)
        assert_same(q, s, *call(aligned))


@pytest.mark.parametrize("layout", ["x[:, 1:]", "flat + 1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_row_path_special_values(layout: str, dtype: torch.dtype) -> None:
    """Zeros, infinities, NaN and negative zeros at the heads, tails and bodies of the row path's rows."""
    x = laid_out(7, 4097, dtype, layout)
    x[0] = 0.0
    x[1, 0] = float("inf")  # the first value (a head value wherever the row starts mid-vector)
    x[2, -1] = float("-inf")  # the last value
    x[3, 2048] = float("nan")  # inside
    x[4] = -0.0
    x[5, ::3] = -0.0
    x[6, -2] = float("nan")
    q, scales = per_token_quant_fp8(x)
    assert_same(q, scales, *ref_per_token(x))
    assert (fp8_bytes(q[4]) == 0x80).all() and (fp8_bytes(q[5, ::3]) == 0x80).all()
    for rows_ in (slice(0, 1), slice(4, 6), slice(1, 2), slice(3, 4)):
        assert_same(*per_tensor_quant_fp8(x[rows_]), *ref_per_tensor(x[rows_]))
    g = x[:, :4096]  # groups one element (or more) past a boundary, the specials in their heads, tails and bodies
    q, scales = per_token_group_quant_fp8(g, 128)
    assert_same(q, scales, *ref_per_group(g, 128))


@pytest.mark.parametrize("scale", [2.0**-61, 2.0**126, 1e-40, 3e-3, -0.5, 0.0, float("inf"), float("nan")], ids=repr)
def test_row_path_static_scales_over_the_float_range(scale: float) -> None:
    mantissa = torch.randn(5, 1025, device="cuda")
    x = (mantissa * torch.pow(2.0, torch.randint(-140, 120, (5, 1025), device="cuda").float()))[:, 1:]
    x[0, :8] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 3e38])
    s = torch.tensor([scale], device="cuda")
    assert_same(*per_tensor_quant_fp8(x, s), *ref_per_tensor(x, s))


# ---------------------------------------------------------------------------------------------------- specials
def _special_rows(tokens: int, hidden: int, dtype: torch.dtype) -> torch.Tensor:
    x = rows(tokens, hidden, dtype)
    x[0] = 0.0
    x[1, 7] = float("inf")
    x[2, 9] = float("-inf")
    x[3, hidden // 2] = float("nan")
    x[4] = -0.0
    x[5, ::3] = -0.0  # negative zeros among other values keep their sign (0x80)
    x[-1, -1] = float("nan")
    return x


@pytest.mark.parametrize("tokens", [7, 300])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_token_special_rows_both_plans(tokens: int, dtype: torch.dtype) -> None:
    x = _special_rows(tokens, 4096, dtype)
    q, scales = per_token_quant_fp8(x)
    assert_same(q, scales, *ref_per_token(x))
    assert (fp8_bytes(q[4]) == 0x80).all() and (fp8_bytes(q[5, ::3]) == 0x80).all()


@pytest.mark.parametrize("tokens", [7, 300])
@pytest.mark.parametrize("dtype", DTYPES, ids=ID)
def test_per_group_special_rows_both_plans(tokens: int, dtype: torch.dtype) -> None:
    x = _special_rows(tokens, 1024, dtype)
    q, scales = per_token_group_quant_fp8(x, 128, column_major_scales=True)
    assert_same(q, scales.contiguous(), *ref_per_group(x, 128))
    assert (fp8_bytes(q[4]) == 0x80).all()


@pytest.mark.parametrize(("tokens", "hidden"), [(7, 1024), (300, 4096)])
def test_per_tensor_nan_inf_and_negative_zero_both_plans(tokens: int, hidden: int) -> None:
    x = rows(tokens, hidden, torch.bfloat16)
    x[1, 5] = -0.0
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))
    q, _ = per_tensor_quant_fp8(x)
    assert fp8_bytes(q)[1, 5].item() == 0x80
    x[2, 3] = float("inf")
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))
    x[-1, -1] = float("nan")
    assert_same(*per_tensor_quant_fp8(x), *ref_per_tensor(x))


# Static scales on both sides of the range where the kernels divide by the reciprocal (2^-60 to 2^125), and the
# ones that always take the IEEE division.
STATIC_SCALES = [2.0**-60, 2.0**-61, 2.0**125, 2.0**126, 1e-40, 1e-30, 1e30, 3e-3, -0.5, 0.0, -0.0, float("inf"),
                 float("nan"), 1.0 + 2.0**-23, 2.0 - 2.0**-23]


@pytest.mark.parametrize("scale", STATIC_SCALES, ids=repr)
@pytest.mark.parametrize("tokens", [3, 4097])
def test_per_tensor_static_scales_over_the_float_range(scale: float, tokens: int) -> None:
    # fp32 values spread over many binades, so that the quotients cover underflow, the e4m3 range and overflow
    mantissa = torch.randn(tokens, 1024, device="cuda")
    x = mantissa * torch.pow(2.0, torch.randint(-140, 120, (tokens, 1024), device="cuda").float())
    x[0, :8] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 3e38])
    s = torch.tensor([scale], device="cuda")
    assert_same(*per_tensor_quant_fp8(x, s), *ref_per_tensor(x, s))
