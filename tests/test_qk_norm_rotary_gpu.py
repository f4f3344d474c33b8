"""qk_norm_rotary on the GPU: bit for bit qk_rms_norm followed by rotary_embedding, and close to a float64 reference.

The bit-exact tests run the fused op on one copy of a fused qkv tensor and the two unfused ops on another, and
compare every byte of the two (the v slice and any padding included, so nothing outside q and k may change). The
reference tests compute the norm in float64, round it to the storage dtype (as the op does), rotate in float64 and
round again; tolerances allow one rounding of the normalised value and of the result to land on neighbouring values
(values up to about 8, where a bf16 step is 0.03): bf16 2e-2 relative + 3e-2 absolute, fp16 2e-3 + 4e-3, fp32
2e-5 + 2e-5.
"""

from __future__ import annotations

import pytest

import cujit
from tests.conftest import rotate_in_place, trapped_launch

torch = pytest.importorskip("torch")

from cujit.qk_norm_rotary import qk_norm_rotary  # noqa: E402
from cujit.qk_rms_norm import MANY_HEADS_FROM, qk_rms_norm  # noqa: E402
from cujit.rotary_embedding import rotary_embedding  # noqa: E402
from tests.test_rotary_gpu import MAX_POSITION, cos_sin_cache  # noqa: E402

pytestmark = pytest.mark.gpu
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
TOLERANCES = {
    torch.bfloat16: {"rtol": 2e-2, "atol": 3e-2},
    torch.float16: {"rtol": 2e-3, "atol": 4e-3},
    torch.float32: {"rtol": 2e-5, "atol": 2e-5},
}
BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


class Case:
    """One call's inputs: q and k as column slices of a fused qkv tensor [T, pad + (Hq + 2 Hkv) D + pad]."""

    def __init__(self, tokens: int, q_heads: int, kv_heads: int, head_size: int, *, dtype: torch.dtype = torch.bfloat16,
                 rotary_dim: int | None = None, cs_dtype: torch.dtype = torch.float32,
                 pos_dtype: torch.dtype = torch.int64, offset: int = 0, pad: int = 0, weight_offset: int = 0,
                 cache_offset: int = 0, eps: float = 1e-6, gemma: bool = False, is_neox: bool = True) -> None:
        self.head_size, self.q_heads, self.kv_heads = head_size, q_heads, kv_heads
        self.offset, self.eps, self.gemma, self.is_neox = offset, eps, gemma, is_neox
        width = offset + (q_heads + 2 * kv_heads) * head_size + pad
        self.qkv = torch.randn(tokens, width, device="cuda").to(dtype)
        self.positions = torch.randint(0, MAX_POSITION, (tokens,), dtype=pos_dtype, device="cuda")
        weights = (torch.rand(2, head_size + weight_offset, device="cuda") * 2 - 0.5).to(dtype)
        self.q_weight, self.k_weight = weights[0, weight_offset:], weights[1, weight_offset:]
        self.cache = cos_sin_cache(rotary_dim or head_size, cs_dtype if cs_dtype == torch.float32 else dtype,
                                   offset=cache_offset)

    @property
    def q(self) -> torch.Tensor:
        return self.qkv[:, self.offset:self.offset + self.q_heads * self.head_size]

    @property
    def k(self) -> torch.Tensor:
        start = self.offset + self.q_heads * self.head_size
        return self.qkv[:, start:start + self.kv_heads * self.head_size]

    def clone(self) -> Case:
        other = object.__new__(Case)
        other.__dict__.update(self.__dict__)
        other.qkv = self.qkv.clone()
        return other

    def fused(self) -> None:
        assert qk_norm_rotary(self.positions, self.q, self.k, self.q_weight, self.k_weight, self.cache,
                              head_size=self.head_size, eps=self.eps, is_neox=self.is_neox, gemma=self.gemma) is None

    def unfused(self) -> None:
        qk_rms_norm(self.q, self.k, self.q_weight, self.k_weight, self.eps, gemma=self.gemma)
        rotary_embedding(self.positions, self.q, self.k, self.cache, is_neox=self.is_neox, head_size=self.head_size)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k as the op should leave them, from float64 (normalised values rounded to the dtype in between)."""
        return (reference(self.positions, self.q, self.q_weight, self.cache, self.head_size, self.eps, self.gemma,
                          self.is_neox),
                reference(self.positions, self.k, self.k_weight, self.cache, self.head_size, self.eps, self.gemma,
                          self.is_neox))


def reference(positions: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor, head_size: int,
              eps: float, gemma: bool, is_neox: bool) -> torch.Tensor:
    """rope(round(rms_norm(head) * w)) of each head of x [T, heads * head_size], in float64, rounded to x's dtype."""
    tokens = x.shape[0]
    h = x.double().reshape(tokens, -1, head_size)
    w = weight.double() + (1.0 if gemma else 0.0)
    out = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w).to(x.dtype).double()
    rotary_dim = cache.shape[1]
    half = rotary_dim // 2
    angles = cache.double()[positions.long()]
    cos, sin = angles[:, None, :half], angles[:, None, half:]
    part = out[..., :rotary_dim]
    rotate_in_place(part, cos, sin, is_neox)
    return out.reshape(tokens, -1).to(x.dtype)


def check_bits(case: Case) -> None:
    """The fused op gives every byte of qkv that the two ops give."""
    other = case.clone()
    case.fused()
    other.unfused()
    got, want = case.qkv.view(BITS[case.qkv.dtype]), other.qkv.view(BITS[case.qkv.dtype])
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        raise AssertionError(f"{len(bad)} values differ, the first at {bad[0].tolist()}: "
                             f"{case.qkv[tuple(bad[0])].item()} against {other.qkv[tuple(bad[0])].item()}")


def check_reference(case: Case) -> None:
    """The fused op is close to the float64 reference, and leaves everything outside q and k as it was."""
    before = case.qkv.clone()
    want_q, want_k = case.reference()
    case.fused()
    torch.testing.assert_close(case.q, want_q, **TOLERANCES[case.qkv.dtype])
    torch.testing.assert_close(case.k, want_k, **TOLERANCES[case.qkv.dtype])
    untouched = torch.ones(case.qkv.shape[1], dtype=torch.bool, device="cuda")
    untouched[case.offset:case.offset + (case.q_heads + case.kv_heads) * case.head_size] = False
    assert torch.equal(case.qkv[:, untouched], before[:, untouched])


STYLES = pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_size", [64, 128, 256])
@pytest.mark.parametrize("gemma", [False, True], ids=["plain", "gemma"])
@STYLES
def test_the_two_ops_bit_for_bit(dtype: torch.dtype, head_size: int, gemma: bool, is_neox: bool) -> None:
    check_bits(Case(37, 8, 2, head_size, dtype=dtype, gemma=gemma, is_neox=is_neox))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_size", [64, 128, 256])
@pytest.mark.parametrize("gemma", [False, True], ids=["plain", "gemma"])
@STYLES
def test_float64_reference(dtype: torch.dtype, head_size: int, gemma: bool, is_neox: bool) -> None:
    check_reference(Case(37, 8, 2, head_size, dtype=dtype, gemma=gemma, is_neox=is_neox))


@pytest.mark.parametrize("tokens", [1, 7, 4097])
@pytest.mark.parametrize("heads", [(32, 8), (64, 4), (5, 1)], ids=lambda h: f"{h[0]}q{h[1]}kv")
@STYLES
def test_token_counts_and_head_counts(tokens: int, heads: tuple[int, int], is_neox: bool) -> None:
    check_bits(Case(tokens, *heads, 128, is_neox=is_neox))
    check_reference(Case(tokens, *heads, 128, is_neox=is_neox))


# Enough heads for runs of consecutive heads per lane group (MANY_HEADS_FROM), with 7 or 3 heads a token, so that
# runs start mid-token and cross tokens: (tokens, q heads, kv heads, head_size, rotary_dim, offset, dtype).
# The whole head rotated in the vector layout takes the kernel's halves form (neox), every other case the
# exchanging form.
RUNS = [(2341, 5, 2, 128, None, 0, torch.bfloat16), (2341, 5, 2, 128, 40, 0, torch.float16),
        (5462, 2, 1, 64, None, 1, torch.bfloat16), (2341, 5, 2, 256, 64, 0, torch.float32),
        (2341, 5, 2, 100, None, 0, torch.bfloat16), (2341, 5, 2, 256, None, 0, torch.float16),
        (2341, 5, 2, 128, None, 0, torch.float32), (5462, 2, 1, 64, None, 0, torch.bfloat16)]


@pytest.mark.parametrize(("tokens", "q_heads", "kv_heads", "head_size", "rotary_dim", "offset", "dtype"), RUNS,
                         ids=lambda v: str(v))
@STYLES
def test_runs_of_heads_across_tokens(tokens: int, q_heads: int, kv_heads: int, head_size: int,
                                     rotary_dim: int | None, offset: int, dtype: torch.dtype, is_neox: bool) -> None:
    assert tokens * (q_heads + kv_heads) >= MANY_HEADS_FROM

    def case() -> Case:
        return Case(tokens, q_heads, kv_heads, head_size, dtype=dtype, rotary_dim=rotary_dim, offset=offset,
                    is_neox=is_neox)

    check_bits(case())
    check_reference(case())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cs_dtype", ["float32", "same"])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64], ids=str)
@STYLES
def test_cache_and_position_dtypes(dtype: torch.dtype, cs_dtype: str, pos_dtype: torch.dtype, is_neox: bool) -> None:
    cs = torch.float32 if cs_dtype == "float32" else dtype
    check_bits(Case(129, 8, 2, 128, dtype=dtype, cs_dtype=cs, pos_dtype=pos_dtype, is_neox=is_neox))
    check_reference(Case(129, 8, 2, 128, dtype=dtype, cs_dtype=cs, pos_dtype=pos_dtype, is_neox=is_neox))


# (head_size, rotary_dim): halves of whole vectors, halves that end mid-vector (40: bf16 halves of 20 values), a
# rotary part that ends mid-vector (20), and tiny heads.
PARTIAL = [(128, 64), (128, 32), (256, 64), (128, 40), (128, 20), (64, 16), (80, 40), (64, 2), (6, 2), (2, 2),
           (65, 64), (9, 8), (300, 128)]


@pytest.mark.parametrize(("head_size", "rotary_dim"), PARTIAL, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@STYLES
def test_partial_rotary(head_size: int, rotary_dim: int, dtype: torch.dtype, is_neox: bool) -> None:
    check_bits(Case(65, 4, 2, head_size, dtype=dtype, rotary_dim=rotary_dim, is_neox=is_neox))
    check_reference(Case(65, 4, 2, head_size, dtype=dtype, rotary_dim=rotary_dim, is_neox=is_neox))


@pytest.mark.parametrize("head_size", [80, 96, 100, 512, 1024])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@STYLES
def test_other_head_sizes(head_size: int, dtype: torch.dtype, is_neox: bool) -> None:
    if head_size * dtype.itemsize > 2048:
        pytest.skip("beyond the largest head")
    check_bits(Case(33, 5, 1, head_size, dtype=dtype, is_neox=is_neox))
    check_reference(Case(33, 5, 1, head_size, dtype=dtype, is_neox=is_neox))


# (offset of q in qkv, padding after v, offset of the weights, offset of the cache): q and k one element in, row
# strides not a whole number of vectors, unaligned weights, an unaligned cache.
LAYOUTS = [(1, 0, 0, 0), (0, 1, 0, 0), (3, 5, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 1, 1, 1)]


@pytest.mark.parametrize(("offset", "pad", "weight_offset", "cache_offset"), LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_size", [128, 300, 512])  # 300 and 512: several vectors a lane on the element path
@STYLES
def test_unaligned_views(offset: int, pad: int, weight_offset: int, cache_offset: int, dtype: torch.dtype,
                         head_size: int, is_neox: bool) -> None:
    if head_size * dtype.itemsize > 2048:
        pytest.skip("beyond the largest head")

    def case() -> Case:
        return Case(17, 4, 2, head_size, dtype=dtype, offset=offset, pad=pad, weight_offset=weight_offset,
                    cache_offset=cache_offset, is_neox=is_neox)

    check_bits(case())
    check_reference(case())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemma_eps_and_zero_heads(dtype: torch.dtype) -> None:
    case = Case(9, 8, 2, 128, dtype=dtype, eps=1e-2, gemma=True)
    case.qkv[3] = 0  # all-zero heads: eps alone keeps them finite, and they stay zero
    check_bits(case.clone())
    check_reference(case)
    assert (case.qkv[3, :10 * 128] == 0).all()


def test_separate_q_and_k_tensors_and_cupy() -> None:
    positions = torch.randint(0, MAX_POSITION, (65,), device="cuda")
    q = torch.randn(65, 32 * 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(65, 8 * 128, device="cuda", dtype=torch.bfloat16)
    qw, kw = (torch.rand(2, 128, device="cuda") + 0.5).to(torch.bfloat16)
    cache = cos_sin_cache(128)
    want_q = reference(positions, q, qw, cache, 128, 1e-6, False, True)
    want_k = reference(positions, k, kw, cache, 128, 1e-6, False, True)
    qk_norm_rotary(positions, q, k, qw, kw, cache, head_size=128)
    torch.testing.assert_close(q, want_q, **TOLERANCES[torch.bfloat16])
    torch.testing.assert_close(k, want_k, **TOLERANCES[torch.bfloat16])
    cupy = pytest.importorskip("cupy")
    cq = cupy.random.standard_normal((7, 4 * 64)).astype(cupy.float16)
    ck = cupy.random.standard_normal((7, 64)).astype(cupy.float16)
    cw = cupy.random.uniform(-0.5, 1.5, 64).astype(cupy.float16)
    cpos = cupy.arange(7, dtype=cupy.int32) * 100
    tq, tk, tw, tpos = (torch.as_tensor(a, device="cuda").clone() for a in (cq, ck, cw, cpos))
    ccache = cos_sin_cache(64)
    qk_norm_rotary(cpos, cq, ck, cw, cw, cupy.from_dlpack(ccache), head_size=64, is_neox=False)
    torch.cuda.synchronize()
    torch.testing.assert_close(torch.as_tensor(cq, device="cuda"),
                               reference(tpos, tq, tw, ccache, 64, 1e-6, False, False), **TOLERANCES[torch.float16])
    torch.testing.assert_close(torch.as_tensor(ck, device="cuda"),
                               reference(tpos, tk, tw, ccache, 64, 1e-6, False, False), **TOLERANCES[torch.float16])


def test_empty_and_non_default_stream() -> None:
    empty = Case(0, 8, 2, 128)
    empty.fused()
    case = Case(4097, 32, 8, 128)
    other = case.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        case.qkv.mul_(2)  # written on the side stream just before the op
        case.fused()
    stream.synchronize()
    other.qkv.mul_(2)
    other.unfused()
    assert torch.equal(case.qkv.view(torch.int16), other.qkv.view(torch.int16))


def test_cuda_graph_replays_with_new_data() -> None:
    case = Case(16, 32, 8, 128, gemma=True)
    case.fused()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        case.fused()
    for _ in range(2):
        case.qkv.copy_(torch.randn_like(case.qkv))
        case.positions.copy_(torch.randint_like(case.positions, MAX_POSITION))
        want_q, want_k = case.reference()
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(case.q, want_q, **TOLERANCES[torch.bfloat16])
        torch.testing.assert_close(case.k, want_k, **TOLERANCES[torch.bfloat16])


def test_torch_compile_fullgraph_matches_eager() -> None:
    def attention_input(positions: torch.Tensor, qkv: torch.Tensor, qw: torch.Tensor, kw: torch.Tensor,
                        cache: torch.Tensor) -> torch.Tensor:
        qkv = qkv * 2
        q, k, v = qkv.split([1024, 256, 256], dim=-1)
        qk_norm_rotary(positions, q, k, qw, kw, cache, head_size=128, gemma=True)
        return torch.cat([q, k, v + 1], dim=-1)

    compiled = torch.compile(attention_input, fullgraph=True)
    for tokens in (7, 128):
        case = Case(tokens, 8, 2, 128)
        args = (case.positions, case.qkv, case.q_weight, case.k_weight, case.cache)
        assert torch.equal(compiled(*args), attention_input(*args))


def test_opcheck() -> None:
    case = Case(7, 4, 1, 128)
    q, k = case.q.clone(), case.k.clone()
    torch.library.opcheck(qk_norm_rotary.op.torch_op.default,
                          (case.positions, q, k, case.q_weight, case.k_weight, case.cache),
                          {"head_size": 128, "eps": 1e-6, "is_neox": False, "gemma": True})


def test_refusals_launch_nothing() -> None:
    case = Case(8, 4, 2, 64)
    q, k, qw, kw, pos, cache = case.q, case.k, case.q_weight, case.k_weight, case.positions, case.cache
    before = case.qkv.clone()
    cases = [
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache, head_size=32), cujit.CujitError, "head_size: expected"),
        (lambda: qk_norm_rotary(pos, q, k, qw.float(), kw, cache, head_size=64), cujit.TensorMatchError,
         "q_weight"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw[:32], cache, head_size=64), cujit.TensorMatchError, "k_weight"),
        (lambda: qk_norm_rotary(pos, q, k[:7], qw, kw, cache, head_size=64), cujit.TensorMatchError, "'k'"),
        (lambda: qk_norm_rotary(pos[:7], q, k, qw, kw, cache, head_size=64), cujit.TensorMatchError, "positions"),
        (lambda: qk_norm_rotary(pos.float(), q, k, qw, kw, cache, head_size=64), cujit.TensorMatchError,
         "'positions': dtype"),
        (lambda: qk_norm_rotary(pos, q, k, qw[:48], kw[:48], cos_sin_cache(48), head_size=48), cujit.CujitError,
         "rows of whole heads"),
        (lambda: qk_norm_rotary(pos, q, q, qw, kw, cache, head_size=64), cujit.CujitError, "different tensors"),
        (lambda: qk_norm_rotary(pos, q[:, ::2], k[:, ::2], qw[:32], kw[:32], cache, head_size=32),
         cujit.TensorMatchError, "stride"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cos_sin_cache(128), head_size=64), cujit.CujitError,
         "at most head_size columns"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, torch.randn(16, 63, device="cuda"), head_size=64),
         cujit.CujitError, "even, non-zero"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache.half(), head_size=64), cujit.CujitError,
         "cos_sin_cache: expected float32 or the dtype"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache[:0], head_size=64), cujit.CujitError, "at least one row"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache, head_size=64, rotary_dim=32), cujit.CujitError,
         "rotary_dim: expected the width"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache.cpu(), head_size=64), cujit.TensorMatchError,
         "'cos_sin_cache': device"),
        (lambda: qk_norm_rotary(pos, q.double(), k.double(), qw.double(), kw.double(), cache, head_size=64),
         cujit.TensorMatchError, "dtype"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache, head_size=64, is_neox="yes"), TypeError, "is_neox"),
        (lambda: qk_norm_rotary(pos, q, k, qw, kw, cache), TypeError, "head_size"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), str(info.value)
    torch.cuda.synchronize()
    assert torch.equal(case.qkv, before)


@pytest.mark.parametrize(("position", "pos_dtype", "tokens"),
                         [(MAX_POSITION, "int64", 64), (-1, "int64", 64), (2**40, "int64", 64),
                          (MAX_POSITION, "int32", 64), (-1, "int32", 64), (MAX_POSITION, "int64", 2048)])
def test_positions_outside_the_cache_fail_the_launch(position: int, pos_dtype: str, tokens: int) -> None:
    # 2048 tokens of 10 heads: runs of consecutive heads per lane group
    out = trapped_launch(
        "from cujit.qk_norm_rotary import qk_norm_rotary",
        f"""
        q = torch.randn({tokens}, 8 * 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn({tokens}, 2 * 128, dtype=torch.bfloat16, device="cuda")
        w = torch.ones(128, dtype=torch.bfloat16, device="cuda")
        cache = torch.randn({MAX_POSITION}, 128, device="cuda")
        positions = torch.zeros({tokens}, dtype=torch.{pos_dtype}, device="cuda")
        positions[17] = {position}
        qk_norm_rotary(positions, q, k, w, w, cache, head_size=128)
        """,
    )
    assert "LAUNCH_ERROR" in out, out
