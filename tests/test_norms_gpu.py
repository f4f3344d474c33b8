"""rms_norm and fused_add_rms_norm on the GPU against float64 torch references.

Tolerances (relative, on top of an absolute 1e-6): one unit in the last place of the storage dtype, since the
kernel computes in fp32 and rounds once (bf16 1e-2 > 2**-7, fp16 2e-3 > 2**-10), and 1e-5 for fp32 (the sum of
squares is added in another order than the reference's). The residual of fused_add_rms_norm is compared exactly
with torch's own rounded sum.
"""

from __future__ import annotations

import pytest

import cujit
from cujit.fused_add_rms_norm import fused_add_rms_norm
from cujit.rms_norm import PATH_SCALAR, PATH_TILED, PATH_VECTOR, norm_config, rms_norm

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
TOKENS = [0, 1, 7, 128, 4097]
HIDDEN = [64, 1000, 4096, 4097, 5120, 8192, 16384]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Every (tokens, hidden) for bf16; for fp16 and fp32, each hidden size at 7 and 128 tokens and the large ones at
# 4097 (the aligned, scalar and tiled paths each appear for every dtype).
CASES = [(torch.bfloat16, t, h) for t in TOKENS for h in HIDDEN]
CASES += [(dt, t, h) for dt in (torch.float16, torch.float32) for t in (7, 128) for h in HIDDEN]
CASES += [(dt, 4097, h) for dt in (torch.float16, torch.float32) for h in (4097, 8192)]
# Hidden 1, the largest one-tile sizes, and beyond them (the two-pass kernel).
CASES += [(dt, t, h) for dt in DTYPES for t in (1, 33) for h in (1, 32768, 40000)]


def _id(case: tuple[torch.dtype, int, int]) -> str:
    dtype, tokens, hidden = case
    return f"{str(dtype)[6:]}-{tokens}x{hidden}"


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, gemma: bool = False) -> torch.Tensor:
    x64, w64 = x.double(), weight.double()
    if gemma:
        w64 = w64 + 1
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected, rtol=RTOL[dtype], atol=1e-6)


def _inputs(tokens: int, hidden: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    weight = (torch.rand(hidden, device="cuda") * 2 - 0.5).to(dtype)
    return x, weight


# ------------------------------------------------------------------------------------------------ rms_norm
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_rms_norm_matches_reference(case: tuple[torch.dtype, int, int]) -> None:
    dtype, tokens, hidden = case
    x, weight = _inputs(tokens, hidden, dtype)
    out = rms_norm(x, weight, 1e-6)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.is_contiguous()
    assert_matches(out, reference(x, weight), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 4096, 4097, 40000])
def test_rms_norm_gemma_and_eps(dtype: torch.dtype, hidden: int) -> None:
    x, weight = _inputs(5, hidden, dtype)
    x[0] = 0  # an all-zero row: eps alone keeps it finite
    out = rms_norm(x, weight, 1e-2, gemma=True)
    assert_matches(out, reference(x, weight, 1e-2, gemma=True), dtype)
    assert (out[0] == 0).all()


def test_the_rule_reaches_every_path() -> None:
    assert norm_config(4096, torch.bfloat16, True).path == PATH_VECTOR
    assert norm_config(4097, torch.bfloat16, False).path == PATH_SCALAR
    assert norm_config(40000, torch.bfloat16, True).path == PATH_TILED
    assert norm_config(20000, torch.float32, True).path == PATH_TILED


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000, 4096, 8192])
@pytest.mark.parametrize("pad", [8, 3])  # 8: rows stay 16-byte aligned (vectors); 3: they do not (scalar)
def test_rms_norm_strided_rows(dtype: torch.dtype, hidden: int, pad: int) -> None:
    wide = torch.randn(129, hidden + pad, device="cuda").to(dtype)
    x = wide[:, :hidden]
    weight = _inputs(1, hidden, dtype)[1]
    wide_out = torch.full((129, hidden + 5), float("nan"), device="cuda", dtype=dtype)
    out = wide_out[:, 2:hidden + 2]
    assert rms_norm(x, weight, out=out) is out
    assert_matches(out, reference(x, weight), dtype)
    assert wide_out[:, :2].isnan().all() and wide_out[:, hidden + 2:].isnan().all()  # nothing outside the view


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 4096, 5120])
def test_rms_norm_misaligned_row_starts(dtype: torch.dtype, hidden: int) -> None:
    base = torch.randn(33, hidden + 1, device="cuda").to(dtype)
    x = base[:, 1:]  # every row starts one element past a 16-byte boundary
    weight = _inputs(1, hidden, dtype)[1]
    assert_matches(rms_norm(x, weight), reference(x, weight), dtype)
    weight_base = torch.randn(hidden + 1, device="cuda").to(dtype)
    assert_matches(rms_norm(x.contiguous(), weight_base[1:]), reference(x, weight_base[1:]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [1000, 4096, 4097, 40000])
def test_rms_norm_in_place(dtype: torch.dtype, hidden: int) -> None:
    x, weight = _inputs(129, hidden, dtype)
    expected = reference(x, weight)
    assert rms_norm(x, weight, out=x) is x
    assert_matches(x, expected, dtype)


def test_rms_norm_non_default_stream() -> None:
    x, weight = _inputs(4097, 4096, torch.bfloat16)
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        out = rms_norm(x, weight)
    stream.synchronize()
    assert_matches(out, reference(x, weight), torch.bfloat16)


# ------------------------------------------------------------------------------------------------ fused
def fused_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                    gemma: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + residual  # torch rounds the sum to the storage dtype, as the kernel does
    return reference(total, weight, eps, gemma), total


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fused_add_rms_norm_matches_reference(case: tuple[torch.dtype, int, int]) -> None:
    dtype, tokens, hidden = case
    x, weight = _inputs(tokens, hidden, dtype)
    residual = torch.randn_like(x)
    expected_x, expected_residual = fused_reference(x, residual, weight)
    assert fused_add_rms_norm(x, residual, weight, 1e-6) is None
    assert torch.equal(residual, expected_residual)
    assert_matches(x, expected_x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 4097, 8192, 40000])
@pytest.mark.parametrize("pad", [8, 3])
def test_fused_add_rms_norm_strided_and_gemma(dtype: torch.dtype, hidden: int, pad: int) -> None:
    wide_x = torch.randn(65, hidden + pad, device="cuda").to(dtype)
    wide_residual = torch.randn(65, hidden + 2 * pad, device="cuda").to(dtype)
    x, residual = wide_x[:, :hidden], wide_residual[:, pad:pad + hidden]
    weight = _inputs(1, hidden, dtype)[1]
    before_x, before_residual = wide_x.clone(), wide_residual.clone()
    expected_x, expected_residual = fused_reference(x, residual, weight, 1e-5, gemma=True)
    fused_add_rms_norm(x, residual, weight, 1e-5, gemma=True)
    assert torch.equal(residual, expected_residual)
    assert_matches(x, expected_x, dtype)
    assert torch.equal(wide_x[:, hidden:], before_x[:, hidden:])
    assert torch.equal(wide_residual[:, :pad], before_residual[:, :pad])
    assert torch.equal(wide_residual[:, pad + hidden:], before_residual[:, pad + hidden:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_misaligned(dtype: torch.dtype) -> None:
    base = torch.randn(17, 4097, device="cuda").to(dtype)
    x, residual = base[:, 1:], torch.randn(17, 4096, device="cuda").to(dtype)
    weight = _inputs(1, 4096, dtype)[1]
    expected_x, expected_residual = fused_reference(x, residual, weight)
    fused_add_rms_norm(x, residual, weight)
    assert torch.equal(residual, expected_residual)
    assert_matches(x, expected_x, dtype)


# ------------------------------------------------------------------------------------------------ CuPy
def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    for dtype, hidden in ((cupy.float16, 4096), (cupy.float32, 1000), (cupy.float16, 4097)):
        x = cupy.random.standard_normal((65, hidden)).astype(dtype)
        weight = cupy.random.uniform(-0.5, 1.5, hidden).astype(dtype)
        out = rms_norm(x, weight)
        assert isinstance(out, cupy.ndarray) and out.shape == x.shape and out.dtype == x.dtype
        tx, tw = torch.as_tensor(x, device="cuda"), torch.as_tensor(weight, device="cuda")
        assert_matches(torch.as_tensor(out, device="cuda"), reference(tx, tw), tx.dtype)
        residual = cupy.random.standard_normal((65, hidden)).astype(dtype)
        tr = torch.as_tensor(residual, device="cuda").clone()
        expected_x, expected_residual = fused_reference(tx.clone(), tr, tw)
        fused_add_rms_norm(x, residual, weight)
        assert torch.equal(torch.as_tensor(residual, device="cuda"), expected_residual)
        assert_matches(torch.as_tensor(x, device="cuda"), expected_x, tx.dtype)


# ------------------------------------------------------------------------------------------------ graphs
@pytest.mark.parametrize("tokens", [1, 16, 4097])
def test_cuda_graph_replays_with_new_data(tokens: int) -> None:
    dtype = torch.bfloat16
    x, weight = _inputs(tokens, 4096, dtype)
    residual = torch.randn_like(x)
    out = torch.empty_like(x)
    fx, fres = x.clone(), residual.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # load the kernels before capturing
        rms_norm(x, weight, out=out)
        fused_add_rms_norm(fx, fres, weight)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rms_norm(x, weight, out=out)
        fused_add_rms_norm(fx, fres, weight)
    for _ in range(2):
        new_x, new_residual = _inputs(tokens, 4096, dtype)[0], torch.randn_like(x)
        x.copy_(new_x)
        fx.copy_(new_x)
        fres.copy_(new_residual)
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, reference(new_x, weight), dtype)
        expected_x, expected_residual = fused_reference(new_x, new_residual, weight)
        assert torch.equal(fres, expected_residual)
        assert_matches(fx, expected_x, dtype)


# ------------------------------------------------------------------------------------------------ torch.compile
def test_torch_compile_fullgraph_matches_eager() -> None:
    def block(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        y = torch.ops.cujit.rms_norm(x * 2, weight, 1e-6) + 1  # allocating form, between torch ops
        fused_add_rms_norm(y, residual, weight, 1e-5, gemma=True)  # in place, through the op function
        out = torch.empty_like(y)
        torch.ops.cujit.rms_norm.out(y, weight, 1e-6, out=out)
        return out + residual

    compiled = torch.compile(block, fullgraph=True)
    for tokens in (7, 128):
        x, weight = _inputs(tokens, 4096, torch.bfloat16)
        residual = torch.randn_like(x)
        r_eager, r_compiled = residual.clone(), residual.clone()
        expected = block(x, r_eager, weight)
        actual = compiled(x, r_compiled, weight)
        assert torch.equal(actual, expected)
        assert torch.equal(r_compiled, r_eager)


def test_opcheck() -> None:
    x, weight = _inputs(7, 1000, torch.bfloat16)
    residual = torch.randn_like(x)
    torch.library.opcheck(torch.ops.cujit.rms_norm.default, (x, weight, 1e-6), {"gemma": True})
    torch.library.opcheck(torch.ops.cujit.fused_add_rms_norm.default, (x.clone(), residual, weight, 1e-6))


# ------------------------------------------------------------------------------------------------ refusals
def _refused(call: object, error: type[BaseException], words: tuple[str, ...], *untouched: torch.Tensor) -> None:
    before = [t.clone() for t in untouched]
    with pytest.raises(error) as info:
        call()  # type: ignore[operator]
    torch.cuda.synchronize()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    for t, b in zip(untouched, before, strict=True):
        assert torch.equal(t, b) or (t.isnan() == b.isnan()).all()


def test_rms_norm_refuses_wrong_inputs_and_launches_nothing() -> None:
    x, weight = _inputs(8, 64, torch.bfloat16)
    out = torch.full_like(x, float("nan"))
    cases = [
        (lambda: rms_norm(x.double(), weight.double(), out=out), cujit.TensorMatchError, ("x", "dtype", "float64")),
        (lambda: rms_norm(x, weight.float(), out=out), cujit.TensorMatchError, ("weight", "dtype")),
        (lambda: rms_norm(x, weight[:63], out=out), cujit.TensorMatchError, ("weight", "H")),
        (lambda: rms_norm(x, weight, out=out[:7]), cujit.TensorMatchError, ("out", "T")),
        (lambda: rms_norm(x, weight, out=out.float()), cujit.TensorMatchError, ("out", "dtype")),
        (lambda: rms_norm(x.cpu(), weight, out=out), cujit.CujitError, ("cuda",)),
        (lambda: rms_norm(x[:, ::2], weight[:32], out=out[:, :32]), cujit.TensorMatchError, ("x", "stride")),
        (lambda: rms_norm(x.t(), weight[:8], out=out[:, :8].t()), cujit.TensorMatchError, ("x",)),
        (lambda: rms_norm(x[0], weight, out=out[0]), cujit.TensorMatchError, ("x",)),
        (lambda: rms_norm(x, weight, "1e-6", out=out), TypeError, ("eps",)),
    ]
    for call, error, words in cases:
        _refused(call, error, words, out)
    assert out.isnan().all()


def test_fused_add_rms_norm_refuses_wrong_inputs_and_launches_nothing() -> None:
    x, weight = _inputs(8, 64, torch.bfloat16)
    residual = torch.randn_like(x)
    cases = [
        (lambda: fused_add_rms_norm(x, residual.float(), weight), cujit.TensorMatchError, ("residual", "dtype")),
        (lambda: fused_add_rms_norm(x, residual[:7], weight), cujit.TensorMatchError, ("residual", "T")),
        (lambda: fused_add_rms_norm(x, residual, weight[:32]), cujit.TensorMatchError, ("weight", "H")),
        (lambda: fused_add_rms_norm(x, residual.cpu(), weight), cujit.CujitError, ("cuda",)),
        (lambda: fused_add_rms_norm(x, residual[:, ::2], weight[:32]), cujit.TensorMatchError, ("residual",)),
        (lambda: fused_add_rms_norm(x, x, weight), cujit.CujitError, ("different tensors",)),
    ]
    for call, error, words in cases:
        _refused(call, error, words, x, residual)
