"""The fused FP8 quantization ops on the GPU.

silu_and_mul_quant_fp8 must give, byte for byte, what per_token_group_quant_fp8(silu_and_mul(x)) gives (the
intermediate rounded to x's dtype as silu_and_mul stores it), and stay within one e4m3 step of a float64 torch
reference. fused_add_rms_norm_quant_fp8 is compared with the unfused composition fused_add_rms_norm, then
per_token_quant_fp8 or per_token_group_quant_fp8: the residual exactly; the quantized bytes equal for more than
99% of the values, the scales within 2**-7 and every dequantized value within one e4m3 step: the fused kernel adds
the squares in another order than fused_add_rms_norm, so a normalised value may differ from the unfused one in its
last place, which can move its quantization (or a scale) by one step.
"""

from __future__ import annotations

import pytest

import cujit
from cujit.fp8_quant import per_token_group_quant_fp8, per_token_quant_fp8
from cujit.fused_add_rms_norm import fused_add_rms_norm
from cujit.fused_add_rms_norm_quant_fp8 import fused_add_rms_norm_quant_fp8
from cujit.silu_and_mul import silu_and_mul
from cujit.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
FP8 = torch.float8_e4m3fn


def fp8_bytes(q: torch.Tensor) -> torch.Tensor:
    """The bytes of an fp8 tensor, both NaN encodings (0x7F, 0xFF) as 0x7F."""
    raw = q.contiguous().view(torch.uint8)
    return torch.where((raw & 0x7F) == 0x7F, torch.full_like(raw, 0x7F), raw)


Quantized = tuple[torch.Tensor, torch.Tensor]


def assert_same_quantization(got: Quantized, expected: Quantized) -> None:
    assert got[0].dtype == FP8 and got[0].shape == expected[0].shape
    assert torch.equal(fp8_bytes(got[0]), fp8_bytes(expected[0]))
    assert got[1].shape == expected[1].shape and got[1].stride() == expected[1].stride()
    # Exact, with a NaN scale (a group holding NaN) equal to a NaN scale: torch.equal says NaN != NaN.
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0, equal_nan=True)


def dequantize(q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    return (q.double().reshape(q.shape[0], -1, group) * scales.double().unsqueeze(-1)).reshape(q.shape)


# ------------------------------------------------------------------------------------------------ silu_and_mul
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [128, 4096, 7168])
@pytest.mark.parametrize("tokens", [1, 16, 4097])
@pytest.mark.parametrize("column_major", [False, True])
def test_silu_and_mul_quant_is_the_composition(dtype: torch.dtype, d: int, tokens: int, column_major: bool) -> None:
    x = (torch.randn(tokens, 2 * d, device="cuda") * 3).to(dtype)
    got = silu_and_mul_quant_fp8(x, 128, column_major_scales=column_major)
    expected = per_token_group_quant_fp8(silu_and_mul(x), 128, column_major_scales=column_major)
    assert_same_quantization(got, expected)
    # And near the float64 value: within half an e4m3 step (2**-4 relative) of each group's scale, plus the
    # rounding of the intermediate to the storage dtype.
    a, b = x[:, :d].double(), x[:, d:].double()
    exact = a * torch.sigmoid(a) * b
    approx = dequantize(got[0], got[1], 128)
    scale = got[1].double().repeat_interleave(128, dim=1)
    assert ((approx - exact).abs() <= exact.abs() * 2**-4 + scale * 2**-9 + exact.abs() * 1e-2).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [64, 128])
def test_silu_and_mul_quant_strided_and_misaligned_rows(dtype: torch.dtype, group: int) -> None:
    for pad, start in ((8, 0), (3, 0), (5, 1)):  # aligned rows; rows not 16-byte multiples; a view one element in
        wide = torch.randn(33, 2 * 512 + pad, device="cuda").to(dtype)
        x = wide[:, start:start + 1024]
        got = silu_and_mul_quant_fp8(x, group)
        expected = per_token_group_quant_fp8(silu_and_mul(x.contiguous()), group)
        assert_same_quantization(got, expected)


def test_silu_and_mul_quant_special_values_and_given_outputs() -> None:
    x = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    x[0] = 0  # an all-zero row: the floor scale and zeros
    x[1, 3] = float("inf")
    x[2, 300] = float("nan")
    x[3, :256] = 1e4  # saturates nothing: the scale follows the max
    out = torch.empty(4, 256, device="cuda", dtype=FP8)
    scales = torch.empty_strided((4, 2), (1, 4), device="cuda")
    got = silu_and_mul_quant_fp8(x, 128, column_major_scales=True, out=out, scales=scales)
    assert got[0] is out and got[1] is scales
    assert_same_quantization(got, per_token_group_quant_fp8(silu_and_mul(x), 128, column_major_scales=True))


def test_silu_and_mul_quant_empty_stream_graph_and_compile() -> None:
    q, s = silu_and_mul_quant_fp8(torch.empty(0, 256, device="cuda", dtype=torch.bfloat16))
    assert q.shape == (0, 128) and s.shape == (0, 1)
    x = torch.randn(16, 2 * 4096, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x.mul_(2)  # written on the side stream just before the op
        got = silu_and_mul_quant_fp8(x)
    stream.synchronize()
    assert_same_quantization(got, per_token_group_quant_fp8(silu_and_mul(x)))
    out = torch.empty(16, 4096, device="cuda", dtype=FP8)
    scales = torch.empty(16, 32, device="cuda")
    silu_and_mul_quant_fp8(x, out=out, scales=scales)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        silu_and_mul_quant_fp8(x, out=out, scales=scales)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_same_quantization((out, scales), per_token_group_quant_fp8(silu_and_mul(x)))

    def mlp(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = silu_and_mul_quant_fp8(h * 2, 128, column_major_scales=True)
        return q.view(torch.uint8) + 0, s * 1

    compiled = torch.compile(mlp, fullgraph=True)
    for got_t, expect_t in zip(compiled(x), mlp(x), strict=True):
        assert torch.equal(got_t, expect_t)
    torch.library.opcheck(silu_and_mul_quant_fp8.op.torch_op.default, (x[:7], 128), {"column_major_scales": True})


def test_silu_and_mul_quant_refusals() -> None:
    x = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros(8, 256, device="cuda", dtype=FP8)
    cases = [
        (lambda: silu_and_mul_quant_fp8(x[:, :511]), "the last dimension must be even"),
        (lambda: silu_and_mul_quant_fp8(x, 100), "group_size: expected a power of two from 16 to 1024"),
        (lambda: silu_and_mul_quant_fp8(x, 512), "multiple of group_size"),
        (lambda: silu_and_mul_quant_fp8(x.double()), "dtype"),
        (lambda: silu_and_mul_quant_fp8(x[:, ::2]), "stride"),
        (lambda: silu_and_mul_quant_fp8(x, out=out[:7]), "'out'"),
        (lambda: silu_and_mul_quant_fp8(x, out=out.view(torch.uint8)), "'out'"),
        (lambda: silu_and_mul_quant_fp8(x, scales=torch.empty(8, 4, device="cuda")), "'scales'"),
        (lambda: silu_and_mul_quant_fp8(x, column_major_scales=True, scales=torch.empty(8, 2, device="cuda")),
         "'scales'"),
        (lambda: silu_and_mul_quant_fp8(x.cpu()), "cuda"),
    ]
    for call, words in cases:
        with pytest.raises(cujit.CujitError) as info:
            call()
        assert words in str(info.value), str(info.value)
    torch.cuda.synchronize()
    assert (out.view(torch.uint8) == 0).all()


# ------------------------------------------------------------------------------------------------ add + norm
def unfused(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, group: int, column_major: bool,
            gemma: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scales, residual) of fused_add_rms_norm, then the per-token or per-group quantization, on copies."""
    y, r = x.clone(), residual.clone()
    fused_add_rms_norm(y, r, weight, 1e-6, gemma=gemma)
    if group == 0:
        q, scales = per_token_quant_fp8(y)
    else:
        q, scales = per_token_group_quant_fp8(y, group, column_major_scales=column_major)
    return q, scales, r


def assert_near_unfused(got: Quantized, expected: Quantized, group: int) -> None:
    """Equal up to the normalised values moving by one step of their dtype (another order of the sum of squares)."""
    q, scales = got
    eq, escales = expected
    assert q.dtype == FP8 and q.shape == eq.shape and scales.shape == escales.shape
    assert scales.stride() == escales.stride()
    torch.testing.assert_close(scales, escales, rtol=2**-7, atol=0)
    width = group or q.shape[1]
    a, b = dequantize(q, scales, width), dequantize(eq, escales, width)
    step = b.abs() * (2**-3 + 2**-6) + escales.double().repeat_interleave(width, dim=1) * 2**-9
    assert ((a - b).abs() <= step * 1.01).all()
    assert (fp8_bytes(q) == fp8_bytes(eq)).double().mean() > 0.99


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [128, 4096, 5120, 7168])
@pytest.mark.parametrize("tokens", [1, 16, 4097])
@pytest.mark.parametrize("group", [0, 128])
def test_add_norm_quant_matches_the_composition(dtype: torch.dtype, hidden: int, tokens: int, group: int) -> None:
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    residual = torch.randn(tokens, hidden, device="cuda").to(dtype)
    weight = (torch.rand(hidden, device="cuda") * 2 - 0.5).to(dtype)
    eq, escales, eres = unfused(x, residual, weight, group, False, False)
    x_before = x.clone()
    got = fused_add_rms_norm_quant_fp8(x, residual, weight, 1e-6, group_size=group)
    assert torch.equal(residual, eres)
    assert torch.equal(x, x_before)  # x is only read
    assert_near_unfused(got, (eq, escales), group)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,group", [(16384, 0), (16384, 16), (32768, 128), (2048, 256), (1024, 1024),
                                          (40960, 128), (96, 32)])
def test_add_norm_quant_register_path_edges(dtype: torch.dtype, hidden: int, group: int) -> None:
    """Rows of 2 and 4 vectors a thread, groups of 2 to 32 threads' vectors, groups too wide for a warp and rows
    too long for the register path (both served by the three-pass form), and a row shorter than the block."""
    x = torch.randn(5, hidden, device="cuda").to(dtype)
    residual = torch.randn(5, hidden, device="cuda").to(dtype)
    weight = (torch.rand(hidden, device="cuda") * 2 - 0.5).to(dtype)
    eq, escales, eres = unfused(x, residual, weight, group, False, False)
    got = fused_add_rms_norm_quant_fp8(x, residual, weight, 1e-6, group_size=group)
    assert torch.equal(residual, eres)
    assert_near_unfused(got, (eq, escales), group)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("offset", [1, 8], ids=["misaligned", "aligned"])
def test_add_norm_quant_strided_misaligned_gemma(dtype: torch.dtype, column_major: bool, offset: int) -> None:
    """Strided rows: starting one element in (the three-pass form) or 8 elements in (16-byte aligned: registers)."""
    hidden = 4096
    wide_x = torch.randn(33, hidden + 8, device="cuda").to(dtype)
    wide_r = torch.randn(33, hidden + 8, device="cuda").to(dtype)
    x, residual = wide_x[:, offset:hidden + offset], wide_r[:, 8:]
    weight = (torch.rand(hidden + offset, device="cuda") * 2 - 0.5).to(dtype)[offset:]
    before_r = wide_r.clone()
    eq, escales, eres = unfused(x, residual, weight, 128, column_major, True)
    got = fused_add_rms_norm_quant_fp8(x, residual, weight, group_size=128, column_major_scales=column_major,
                                       gemma=True)
    assert torch.equal(residual, eres) and torch.equal(wide_r[:, :8], before_r[:, :8])
    assert_near_unfused(got, (eq, escales), 128)


def offset_rows(tokens: int, hidden: int, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """Random [tokens, hidden] rows, each starting `offset` elements into a row one `offset` wider."""
    return torch.randn(tokens, hidden + offset, device="cuda").to(dtype)[:, offset:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1, 7, 100, 2881, 4097, 8191, 24575, 24585])
@pytest.mark.parametrize("offsets", [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 3), (3, 5, 1, 1), (0, 2, 3, 7)],
                         ids=lambda o: "x{}-res{}-w{}-q{}".format(*o))
def test_add_norm_quant_per_token_at_any_alignment(dtype: torch.dtype, hidden: int,
                                                   offsets: tuple[int, int, int, int]) -> None:
    """The per-token register path that splits each row at the residual's 16-byte boundaries: odd widths, x,
    residual, weight and q each starting at its own offset (so x and the weight are read with shifted vectors
    and q written realigned); 24585 16-bit values are beyond it (the three-pass form)."""
    tokens = 6
    ox, orr, ow, oq = offsets
    x, residual = offset_rows(tokens, hidden, ox, dtype), offset_rows(tokens, hidden, orr, dtype)
    weight = (torch.rand(hidden + ow, device="cuda") * 2 - 0.5).to(dtype)[ow:]
    eq, escales, eres = unfused(x, residual, weight, 0, False, False)
    out = torch.empty(tokens * hidden + oq, device="cuda", dtype=FP8)[oq:].view(tokens, hidden)
    got = fused_add_rms_norm_quant_fp8(x, residual, weight, out=out)
    assert got[0] is out
    assert torch.equal(residual, eres)
    assert_near_unfused(got, (eq, escales), 0)


def test_add_norm_quant_odd_hidden_per_token_and_given_outputs() -> None:
    x = torch.randn(9, 4097, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.rand(4097, device="cuda", dtype=torch.bfloat16)
    eq, escales, eres = unfused(x, residual, weight, 0, False, False)
    out = torch.empty(9, 4097, device="cuda", dtype=FP8)
    scales = torch.empty(9, 1, device="cuda")
    got = fused_add_rms_norm_quant_fp8(x, residual, weight, out=out, scales=scales)
    assert got[0] is out and got[1] is scales
    assert torch.equal(residual, eres)
    assert_near_unfused(got, (eq, escales), 0)


def test_add_norm_quant_stream_graph_compile_opcheck() -> None:
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.rand(4096, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x.mul_(2)  # written on the side stream just before the op
        eq, escales, eres = unfused(x, residual, weight, 128, False, False)
        got = fused_add_rms_norm_quant_fp8(x, residual, weight, group_size=128)
    stream.synchronize()
    assert torch.equal(residual, eres)
    assert_near_unfused(got, (eq, escales), 128)
    out, scales = torch.empty(16, 4096, device="cuda", dtype=FP8), torch.empty(16, 32, device="cuda")
    fused_add_rms_norm_quant_fp8(x, residual, weight, group_size=128, out=out, scales=scales)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_add_rms_norm_quant_fp8(x, residual, weight, group_size=128, out=out, scales=scales)
    r0 = torch.randn_like(residual)
    residual.copy_(r0)
    eq, escales, eres = unfused(x, r0, weight, 128, False, False)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(residual, eres)
    assert_near_unfused((out, scales), (eq, escales), 128)

    def layer(h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = fused_add_rms_norm_quant_fp8(h * 2, r, weight, 1e-6, group_size=128, column_major_scales=True)
        return q.view(torch.uint8) + 0, s * 1

    compiled = torch.compile(layer, fullgraph=True)
    r_eager, r_compiled = residual.clone(), residual.clone()
    for got_t, expect_t in zip(compiled(x, r_compiled), layer(x, r_eager), strict=True):
        assert torch.equal(got_t, expect_t)
    assert torch.equal(r_compiled, r_eager)
    torch.library.opcheck(fused_add_rms_norm_quant_fp8.op.torch_op.default, (x[:7], residual[:7].clone(), weight),
                          {"group_size": 128})


def test_add_norm_quant_refusals() -> None:
    x = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.rand(512, device="cuda", dtype=torch.bfloat16)
    before = residual.clone()
    cases = [
        (lambda: fused_add_rms_norm_quant_fp8(x, residual, weight, group_size=100), "group_size: expected 0"),
        (lambda: fused_add_rms_norm_quant_fp8(x[:, :384], residual[:, :384], weight[:384], group_size=256),
         "multiple of group_size"),
        (lambda: fused_add_rms_norm_quant_fp8(x, x, weight), "different tensors"),
        (lambda: fused_add_rms_norm_quant_fp8(x, residual.float(), weight), "'residual'"),
        (lambda: fused_add_rms_norm_quant_fp8(x, residual, weight[:256]), "'weight'"),
        (lambda: fused_add_rms_norm_quant_fp8(x, residual, weight, group_size=128,
                                              scales=torch.empty(8, 1, device="cuda")), "'scales'"),
        (lambda: fused_add_rms_norm_quant_fp8(x, residual, weight, out=torch.empty(8, 512, device="cuda")), "'out'"),
        (lambda: fused_add_rms_norm_quant_fp8(x.cpu(), residual.cpu(), weight.cpu()), "cuda"),
    ]
    for call, words in cases:
        with pytest.raises(cujit.CujitError) as info:
            call()
        assert words in str(info.value), str(info.value)
    torch.cuda.synchronize()
    assert torch.equal(residual, before)
