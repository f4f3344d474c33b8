"""silu_and_mul and gelu_and_mul on the GPU against float64 torch references.

Tolerances (relative, on top of an absolute 1e-5): one unit in the last place of the storage dtype, since the
kernel computes in fp32 and rounds once (bf16 1e-2 > 2**-7, fp16 2e-3 > 2**-10); 1e-5 for fp32, where the
kernel's exponential (the hardware's exp2) and erf differ from the exact values by a few units in the last place.
The references are float64 so that the cancellation in torch's own ``1 + erf`` / ``1 + tanh`` for large negative
inputs does not count against the kernel.

The kernel has two paths: 16-byte vectors over the whole tensor when d is whole vectors and x and out are 16-byte
aligned, cujit/rows.cuh's row_map for every other d and alignment (odd widths, views that start one element in).
Both compute the same expression, so the same values give the same bits on either path and at any alignment.
"""

from __future__ import annotations

import pytest

import cujit
from cujit.gelu_and_mul import gelu_and_mul
from cujit.silu_and_mul import silu_and_mul

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

pytestmark = pytest.mark.gpu
TOKENS = [0, 1, 7, 128, 4097]
HIDDEN = [64, 1000, 4096, 4097, 5120, 8192, 16384]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
ACTIVATIONS = ["silu", "gelu", "gelu_tanh"]
CASES = [(torch.bfloat16, t, d) for t in TOKENS for d in HIDDEN]
CASES += [(dt, t, d) for dt in (torch.float16, torch.float32) for t in (7, 128) for d in HIDDEN]
CASES += [(dt, 4097, d) for dt in (torch.float16, torch.float32) for d in (4097, 8192)]
CASES += [(dt, t, d) for dt in DTYPES for t in (1, 3) for d in (1, 3, 32768)]
#: Odd widths on the row path, for every dtype: one thread per row up to a block per segment of a long row.
ODD = [1, 7, 2881, 4095, 4097]
CASES += [(dt, t, d) for dt in DTYPES for t in (1, 5, 130) for d in ODD]
CASES += [(dt, t, d) for dt in DTYPES for t in (1, 3) for d in (8193, 30001, 65537)]


def _id(case: tuple[torch.dtype, int, int]) -> str:
    dtype, tokens, d = case
    return f"{str(dtype)[6:]}-{tokens}x{d}"


def run(name: str, x: object, out: object = None) -> object:
    if name == "silu":
        return silu_and_mul(x, out=out)
    return gelu_and_mul(x, "tanh" if name == "gelu_tanh" else "none", out=out)


def reference(name: str, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    a, b = x[..., :d].double(), x[..., d:].double()
    if name == "silu":
        return F.silu(a) * b
    return F.gelu(a, approximate="tanh" if name == "gelu_tanh" else "none") * b


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected, rtol=RTOL[dtype], atol=1e-5)


def _input(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(shape, device="cuda") * 3).to(dtype)  # wide enough to reach both tails


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_reference(name: str, case: tuple[torch.dtype, int, int]) -> None:
    dtype, tokens, d = case
    x = _input((tokens, 2 * d), dtype)
    out = run(name, x)
    assert isinstance(out, torch.Tensor) and out.shape == (tokens, d) and out.is_contiguous()
    assert_matches(out, reference(name, x), dtype)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(2, 5, 8192), (3, 1, 2, 10), (6,), (0, 4)])
def test_any_leading_shape(name: str, shape: tuple[int, ...]) -> None:
    x = _input(shape, torch.bfloat16)
    out = run(name, x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    assert_matches(out, reference(name, x), torch.bfloat16)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs(name: str, dtype: torch.dtype) -> None:
    a = torch.tensor([-100.0, -30.0, -10.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 10.0, 30.0], device="cuda")
    x = torch.cat([a, torch.full_like(a, 1.5)]).to(dtype).reshape(1, -1)
    assert_matches(run(name, x), reference(name, x), dtype)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 7, 64, 2881, 4095, 4096, 4097, 8193, 30001])
def test_misaligned_and_out(name: str, dtype: torch.dtype, d: int) -> None:
    """x and out one element past a 16-byte boundary, each alone and both: the right values, nothing written
    outside out, and the bits of the aligned call (the vector path where d allows it)."""
    rows = 33
    base = _input((rows * 2 * d + 1,), dtype)
    x = base[1:].view(rows, 2 * d)  # contiguous, but its first element is past a 16-byte boundary
    aligned_x = x.clone()
    storage = torch.full((rows * d + 2,), float("nan"), device="cuda", dtype=dtype)
    out = storage[1:-1].view(rows, d)  # a misaligned output the caller owns, between two guards
    assert run(name, x, out=out) is out
    assert_matches(out, reference(name, x), dtype)
    assert storage[0].isnan() and storage[-1].isnan()
    aligned = torch.empty(rows, d, device="cuda", dtype=dtype)
    assert run(name, aligned_x, out=aligned) is aligned
    assert torch.equal(aligned, out)
    assert torch.equal(run(name, x), out)  # x misaligned, out aligned
    storage.fill_(float("nan"))
    assert torch.equal(run(name, aligned_x, out=out), aligned)  # x aligned, out misaligned
    assert storage[0].isnan() and storage[-1].isnan()


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", range(1, 8))
def test_every_offset_gives_the_same_bits(name: str, dtype: torch.dtype, offset: int) -> None:
    """Views of the same values starting 1 to 7 elements in (every alignment of a bf16 or fp16 row; fp32 repeats
    them), at widths on both sides of a vector, equal the aligned call bit for bit."""
    for rows, d in ((9, 4096), (9, 4097), (4, 2881), (65, 24), (3, 7)):
        x = _input((rows, 2 * d), dtype)
        expected = run(name, x)
        base = torch.empty(rows * 2 * d + offset, device="cuda", dtype=dtype)
        shifted = base[offset:].view(rows, 2 * d)
        shifted.copy_(x)
        assert torch.equal(run(name, shifted), expected), (rows, d)
        outs = torch.full((rows * d + offset,), float("nan"), device="cuda", dtype=dtype)
        assert torch.equal(run(name, shifted, out=outs[offset:].view(rows, d)), expected), (rows, d)
        assert outs[:offset].isnan().all()


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("d", [1, 7, 100])
def test_many_short_rows(name: str, d: int) -> None:
    """65536 rows of a few values: many rows per block on the row path."""
    x = _input((65536, 2 * d), torch.bfloat16)
    assert_matches(run(name, x), reference(name, x), torch.bfloat16)
    shifted = torch.empty(65536 * 2 * d + 1, device="cuda", dtype=torch.bfloat16)[1:].view(65536, 2 * d)
    shifted.copy_(x)
    assert torch.equal(run(name, shifted), run(name, x))


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_non_default_stream(name: str) -> None:
    """The op runs after the work queued before it on the current stream: a launch on another stream would read
    the input before the write that the busy side stream holds back, and give the result of the old input."""
    fn = silu_and_mul if name == "silu" else gelu_and_mul
    new = _input((4097, 2 * 4096), torch.bfloat16)
    fn(new)  # compiled and loaded: the call below is not slowed by a compile
    old = torch.zeros_like(new)
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)  # tens of milliseconds
        old.copy_(new)
        out = fn(old)
    torch.cuda.synchronize()
    assert_matches(out, reference(name, new), torch.bfloat16)


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    for dtype, d in ((cupy.float16, 4096), (cupy.float32, 1000), (cupy.float16, 4097)):
        x = (cupy.random.standard_normal((65, 2 * d)) * 3).astype(dtype)
        for name in ACTIVATIONS:
            out = run(name, x)
            assert isinstance(out, cupy.ndarray) and out.shape == (65, d) and out.dtype == x.dtype
            tx = torch.as_tensor(x, device="cuda")
            assert_matches(torch.as_tensor(out, device="cuda"), reference(name, tx), tx.dtype)


@pytest.mark.parametrize("tokens", [1, 16, 4097])
def test_cuda_graph_replays_with_new_data(tokens: int) -> None:
    x = _input((tokens, 2 * 8192), torch.bfloat16)
    outs = {name: torch.empty(tokens, 8192, device="cuda", dtype=torch.bfloat16) for name in ACTIVATIONS}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for name in ACTIVATIONS:
            run(name, x, out=outs[name])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for name in ACTIVATIONS:
            run(name, x, out=outs[name])
    for _ in range(2):
        x.copy_(_input((tokens, 2 * 8192), torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        for name in ACTIVATIONS:
            assert_matches(outs[name], reference(name, x), torch.bfloat16)


def test_torch_compile_fullgraph_matches_eager() -> None:
    def mlp(h: torch.Tensor) -> torch.Tensor:
        up = h * 1.5
        act = silu_and_mul(up)  # the op functions themselves: torch.compile calls the registered ops for them
        out = torch.empty_like(act)
        gelu_and_mul(up, "tanh", out=out)  # into a tensor the graph owns
        return act, out, torch.ops.cujit.gelu_and_mul(up)

    compiled = torch.compile(mlp, fullgraph=True)
    for tokens in (7, 128):
        h = _input((tokens, 2 * 4096), torch.bfloat16)
        # The ops' own results, bit for bit (a sum of them would differ: Inductor fuses bf16 adds in fp32).
        for got, want in zip(compiled(h), mlp(h), strict=True):
            assert torch.equal(got, want)


def test_opcheck() -> None:
    x = _input((7, 2 * 1000), torch.bfloat16)
    torch.library.opcheck(torch.ops.cujit.silu_and_mul.default, (x,))
    torch.library.opcheck(torch.ops.cujit.gelu_and_mul.default, (x, "tanh"))
    torch.library.opcheck(torch.ops.cujit.gelu_and_mul.default, (x,))


def test_refuses_wrong_inputs_and_launches_nothing() -> None:
    x = _input((8, 128), torch.bfloat16)
    out = torch.full((8, 64), float("nan"), device="cuda", dtype=torch.bfloat16)
    cases = [
        (lambda: silu_and_mul(x.double(), out=out), cujit.TensorMatchError, ("x", "dtype")),
        (lambda: silu_and_mul(x, out=out.float()), cujit.TensorMatchError, ("out", "dtype")),
        (lambda: silu_and_mul(x, out=out[:, :63]), cujit.TensorMatchError, ("out",)),
        (lambda: silu_and_mul(_input((8, 127), torch.bfloat16), out=out), cujit.CujitError, ("even",)),
        (lambda: silu_and_mul(x[:, ::2]), cujit.TensorMatchError, ("x",)),
        (lambda: silu_and_mul(_input((8, 129), torch.bfloat16)[:, 1:]), cujit.TensorMatchError, ("x",)),
        (lambda: silu_and_mul(x[:, :64], out=out[:, :32].contiguous()), cujit.TensorMatchError, ("x",)),
        (lambda: silu_and_mul(x.cpu(), out=out), cujit.CujitError, ("cuda",)),
        (lambda: gelu_and_mul(x, "exact", out=out), cujit.CujitError, ("approximate",)),
        (lambda: gelu_and_mul(x, approximate=None, out=out), TypeError, ("approximate",)),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        for word in words:
            assert word in str(info.value), f"{word!r} not in {info.value}"
    torch.cuda.synchronize()
    assert out.isnan().all()
