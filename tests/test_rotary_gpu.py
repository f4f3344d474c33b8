"""rotary_embedding on the GPU against an fp32 torch reference (the rotation of vLLM's forward_native)."""

from __future__ import annotations

import pytest

import cujit
from tests.conftest import rotate_in_place, trapped_launch

torch = pytest.importorskip("torch")

from cujit.rotary_embedding import rotary_embedding  # noqa: E402

pytestmark = pytest.mark.gpu
MAX_POSITION = 8192
# One storage-dtype step at the magnitudes of rotated N(0, 1) values (up to about 8), where the kernel's single
# rounding of an fma and the reference's two roundings can land on neighbouring values.
TOLERANCES = {
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}


def cos_sin_cache(rotary_dim: int, dtype: torch.dtype = torch.float32, max_position: int = MAX_POSITION,
                  base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """vLLM's cache: [max_position, rotary_dim], cos of each frequency in the first half, sin in the second;
    ``offset`` starts it that many elements into a buffer (an unaligned cache)."""
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device="cuda") / rotary_dim)
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32, device="cuda"), inv_freq)
    table = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)
    if not offset:
        return table
    view = torch.empty(max_position * rotary_dim + offset, dtype=dtype, device="cuda")[offset:]
    return view.view(max_position, rotary_dim).copy_(table)


def reference(positions: torch.Tensor, x: torch.Tensor, cache: torch.Tensor, head_size: int,
              is_neox: bool) -> torch.Tensor:
    """x [tokens, heads * head_size] rotated in fp32 and rounded once to x's dtype (a new contiguous tensor)."""
    tokens = x.shape[0]
    rotary_dim = cache.shape[1]
    half = rotary_dim // 2
    angles = cache.float()[positions.long()]
    cos, sin = angles[:, None, :half], angles[:, None, half:]
    heads = x.shape[1] // head_size
    out = x.float().reshape(tokens, heads, head_size).clone()
    part = out[..., :rotary_dim]
    rotate_in_place(part, cos, sin, is_neox)
    return out.reshape(tokens, heads * head_size).to(x.dtype)


def make(tokens: int, q_heads: int, k_heads: int, head_size: int, dtype: torch.dtype = torch.bfloat16,
         pos_dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    positions = torch.randint(0, MAX_POSITION, (tokens,), dtype=pos_dtype, device="cuda")
    q = torch.randn(tokens, q_heads * head_size, dtype=dtype, device="cuda")
    k = torch.randn(tokens, k_heads * head_size, dtype=dtype, device="cuda")
    return positions, q, k


def check(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cache: torch.Tensor, head_size: int,
          is_neox: bool) -> None:
    """Run the op on q and k (views are fine) and compare both with the reference."""
    expect_q = reference(positions, q, cache, head_size, is_neox)
    expect_k = reference(positions, k, cache, head_size, is_neox)
    rotary_embedding(positions, q, k, cache, is_neox=is_neox, head_size=head_size)
    torch.testing.assert_close(q, expect_q, **TOLERANCES[q.dtype])
    torch.testing.assert_close(k, expect_k, **TOLERANCES[k.dtype])


@pytest.mark.parametrize("tokens", [0, 1, 7, 4097])
@pytest.mark.parametrize("heads", [(32, 8), (40, 10), (64, 16)], ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("head_size", [64, 128, 256])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_matches_reference(tokens: int, heads: tuple[int, int], head_size: int, is_neox: bool) -> None:
    positions, q, k = make(tokens, *heads, head_size)
    check(positions, q, k, cos_sin_cache(head_size), head_size, is_neox)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("cache_dtype", ["float32", "same"])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_dtypes(dtype: torch.dtype, cache_dtype: str, pos_dtype: torch.dtype, is_neox: bool) -> None:
    positions, q, k = make(257, 8, 2, 128, dtype, pos_dtype)
    cache = cos_sin_cache(128, torch.float32 if cache_dtype == "float32" else dtype)
    check(positions, q, k, cache, 128, is_neox)


@pytest.mark.parametrize(("head_size", "rotary_dim"), [(128, 64), (128, 32), (256, 64), (80, 40), (64, 16)])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_partial_rotary_leaves_the_rest_of_each_head(head_size: int, rotary_dim: int, is_neox: bool) -> None:
    positions, q, k = make(300, 8, 2, head_size)
    before_q, before_k = q.clone(), k.clone()
    check(positions, q, k, cos_sin_cache(rotary_dim), head_size, is_neox)
    tail = slice(rotary_dim, head_size)
    assert torch.equal(q.view(300, 8, head_size)[..., tail], before_q.view(300, 8, head_size)[..., tail])
    assert torch.equal(k.view(300, 2, head_size)[..., tail], before_k.view(300, 2, head_size)[..., tail])


@pytest.mark.parametrize("tokens", [1, 7, 4097])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_views_of_a_fused_qkv_tensor(tokens: int, is_neox: bool) -> None:
    q_heads, kv_heads, head_size = 32, 8, 128
    positions = torch.randint(0, MAX_POSITION, (tokens,), device="cuda")
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_size, dtype=torch.bfloat16, device="cuda")
    v_before = qkv[:, (q_heads + kv_heads) * head_size:].clone()
    q = qkv[:, : q_heads * head_size]
    k = qkv[:, q_heads * head_size : (q_heads + kv_heads) * head_size]
    check(positions, q, k, cos_sin_cache(head_size), head_size, is_neox)
    assert torch.equal(qkv[:, (q_heads + kv_heads) * head_size:], v_before)  # v, past k, untouched


@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_three_dimensional_views(is_neox: bool) -> None:
    tokens, q_heads, kv_heads, head_size = 129, 16, 4, 64
    positions = torch.randint(0, MAX_POSITION, (tokens,), device="cuda")
    qkv = torch.randn(tokens, q_heads + 2 * kv_heads, head_size, dtype=torch.float16, device="cuda")
    q, k = qkv[:, :q_heads], qkv[:, q_heads : q_heads + kv_heads]
    expect_q = reference(positions, q.reshape(tokens, -1), cos_sin_cache(head_size), head_size, is_neox)
    expect_k = reference(positions, k.reshape(tokens, -1), cos_sin_cache(head_size), head_size, is_neox)
    rotary_embedding(positions, q, k, cos_sin_cache(head_size), is_neox=is_neox)
    torch.testing.assert_close(q.reshape(tokens, -1), expect_q, **TOLERANCES[torch.float16])
    torch.testing.assert_close(k.reshape(tokens, -1), expect_k, **TOLERANCES[torch.float16])


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_unaligned_views_take_the_element_path(offset: int, is_neox: bool) -> None:
    tokens, heads, head_size = 33, 4, 128
    positions = torch.randint(0, MAX_POSITION, (tokens,), device="cuda")
    base = torch.randn(tokens, heads * head_size * 2 + offset, dtype=torch.bfloat16, device="cuda")
    before = base.clone()
    q = base[:, offset : offset + heads * head_size]  # starts mid-vector
    k = base[:, offset + heads * head_size : offset + 2 * heads * head_size]
    check(positions, q, k, cos_sin_cache(head_size), head_size, is_neox)
    assert torch.equal(base[:, :offset], before[:, :offset])



@pytest.mark.parametrize("tokens", [5, 1100])  # blocks of a row of heads, and blocks of a whole token
@pytest.mark.parametrize(("q_heads", "kv_heads", "head_size", "rotary_dim", "offset"),
                         [(32, 8, 128, 128, 1), (17, 4, 241, 240, 0), (3, 1, 241, 240, 0)])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_element_path_over_many_heads(tokens: int, q_heads: int, kv_heads: int, head_size: int, rotary_dim: int,
                                      offset: int, is_neox: bool) -> None:
    # The element-wise path takes several heads a step: whole steps, a last partial one, and fewer heads than one.
    positions = torch.randint(0, MAX_POSITION, (tokens,), device="cuda")
    width = (q_heads + kv_heads) * head_size
    base = torch.randn(tokens, width + offset, dtype=torch.bfloat16, device="cuda")
    before = base.clone()
    q = base[:, offset : offset + q_heads * head_size]
    k = base[:, offset + q_heads * head_size : offset + width]
    check(positions, q, k, cos_sin_cache(rotary_dim), head_size, is_neox)
    assert torch.equal(base[:, :offset], before[:, :offset])
    unrotated = [h * head_size + d for h in range(q_heads + kv_heads) for d in range(rotary_dim, head_size)]
    assert torch.equal(base[:, offset:][:, unrotated], before[:, offset:][:, unrotated])

@pytest.mark.parametrize(("head_size", "rotary_dim"), [(66, 66), (72, 72), (100, 20), (6, 2)])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_odd_sizes(head_size: int, rotary_dim: int, is_neox: bool) -> None:
    positions, q, k = make(65, 3, 1, head_size, torch.float32)
    check(positions, q, k, cos_sin_cache(rotary_dim), head_size, is_neox)


def test_wide_rotary_dims_loop_over_the_block() -> None:
    # 1026 / 2 = 513 chunks of one value: more chunks than a block has threads.
    positions, q, k = make(5, 2, 1, 1026, torch.float32)
    check(positions, q, k, cos_sin_cache(1026), 1026, True)


def test_non_default_stream() -> None:
    positions, q, k = make(1000, 16, 4, 128)
    cache = cos_sin_cache(128)
    expect = reference(positions, q, cache, 128, True)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        rotary_embedding(positions, q, k, cache, head_size=128)
    s.synchronize()
    torch.testing.assert_close(q, expect, **TOLERANCES[q.dtype])


def test_cuda_graph_replays_with_new_data() -> None:
    tokens, head_size = 16, 128
    cache = cos_sin_cache(head_size)
    positions, q, k = make(tokens, 8, 2, head_size)
    rotary_embedding(positions, q, k, cache, head_size=head_size)  # compile and load outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        rotary_embedding(positions, q, k, cache, head_size=head_size)
    for _ in range(3):
        new_positions, new_q, new_k = make(tokens, 8, 2, head_size)
        positions.copy_(new_positions)
        q.copy_(new_q)
        k.copy_(new_k)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(q, reference(new_positions, new_q, cache, head_size, True), **TOLERANCES[q.dtype])
        torch.testing.assert_close(k, reference(new_positions, new_k, cache, head_size, True), **TOLERANCES[k.dtype])


def test_torch_compile_fullgraph_matches_eager() -> None:
    def step(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        q = q * 2
        rotary_embedding(positions, q, k, cache, is_neox=False, head_size=128)
        return q + k.repeat(1, 4)

    compiled = torch.compile(step, fullgraph=True)
    cache = cos_sin_cache(128)
    for tokens in (7, 300):
        positions, q, k = make(tokens, 8, 2, 128)
        k_eager, k_compiled = k.clone(), k.clone()
        expect = step(positions, q, k_eager, cache)
        got = compiled(positions, q, k_compiled, cache)
        torch.testing.assert_close(got, expect, **TOLERANCES[q.dtype])
        assert torch.equal(k_compiled, k_eager)  # the in-place write to an input survives compilation


def test_opcheck() -> None:
    positions, q, k = make(33, 8, 2, 128)
    op = rotary_embedding.op.torch_op.default
    torch.library.opcheck(op, (positions, q, k, cos_sin_cache(128)), {"is_neox": True, "head_size": 128})
    torch.library.opcheck(op, (positions, q, k, cos_sin_cache(64)), {"is_neox": False, "head_size": 128})


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    positions, q, k = make(77, 8, 2, 64, torch.float16)
    cache = cos_sin_cache(64)
    expect_q = reference(positions, q, cache, 64, True)
    expect_k = reference(positions, k, cache, 64, True)
    cq, ck = cupy.from_dlpack(q), cupy.from_dlpack(k)  # the same memory
    torch.cuda.synchronize()
    rotary_embedding(cupy.from_dlpack(positions), cq, ck, cupy.from_dlpack(cache), head_size=64)
    torch.cuda.synchronize()
    torch.testing.assert_close(torch.from_dlpack(cq), expect_q, **TOLERANCES[torch.float16])
    torch.testing.assert_close(torch.from_dlpack(ck), expect_k, **TOLERANCES[torch.float16])


REFUSALS: list[tuple[str, dict[str, object], type[Exception], str]] = [
    ("float positions", {"positions": "float"}, cujit.TensorMatchError, "'positions': dtype"),
    ("k of another dtype", {"k": "half"}, cujit.TensorMatchError, "'k': dtype"),
    ("cache in another float dtype", {"cache": "half"}, cujit.CujitError, "cos_sin_cache: expected float32"),
    ("rotary_dim not the cache's", {"rotary_dim": 64}, cujit.CujitError, "rotary_dim: expected the width"),
    ("head_size not dividing the rows", {"head_size": 96, "cache": "r64"}, cujit.CujitError, "whole heads"),
    ("head_size below the rotary dim", {"head_size": 64}, cujit.CujitError, "head_size: expected at least"),
    ("positions of another length", {"positions": "short"}, cujit.TensorMatchError, "bound by 'positions'"),
    ("strided last dimension", {"q": "strided"}, cujit.TensorMatchError, "'q': stride"),
    ("cache on the CPU", {"cache": "cpu"}, cujit.TensorMatchError, "'cos_sin_cache': device"),
    ("is_neox not a bool", {"is_neox": "yes"}, TypeError, "is_neox"),
    ("3-D view with strided heads", {"q": "3d-strided"}, cujit.TensorMatchError, "heads are contiguous"),
    ("odd rotary dim", {"cache": "odd"}, cujit.CujitError, "even"),
    ("3-D head size against head_size", {"q": "3d", "head_size": 64, "cache": "r64"}, cujit.CujitError,
     "one head size"),
    ("head_size omitted with 2-D q and k", {"head_size": None}, cujit.CujitError,
     "head_size: expected the head size for 2-D q and k"),
]


@pytest.mark.parametrize(("case", "change", "error", "match"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_wrong_inputs_are_refused_before_any_launch(case: str, change: dict[str, object], error: type[Exception],
                                                     match: str) -> None:
    tokens, head_size = 9, 128
    positions, q, k = make(tokens, 8, 2, head_size)
    cache = cos_sin_cache(head_size)
    q.fill_(7.0)
    k.fill_(-3.0)
    kwargs: dict[str, object] = {"head_size": head_size}
    args: dict[str, object] = {"positions": positions, "q": q, "k": k, "cache": cache}
    variants = {
        "float": lambda: positions.float(),
        "half": lambda: k.half() if "k" in change else cache.half(),
        "short": lambda: positions[:-1],
        "strided": lambda: torch.full((tokens, 2 * 8 * head_size), 7.0, dtype=q.dtype, device="cuda")[:, ::2],
        "cpu": lambda: cache.cpu(),
        "3d-strided": lambda: q.view(tokens, 8, head_size).transpose(0, 1).contiguous().transpose(0, 1),
        "3d": lambda: q.view(tokens, 8, head_size),
        "odd": lambda: torch.randn(MAX_POSITION, 127, device="cuda"),
        "r64": lambda: cos_sin_cache(64),
    }
    for key, value in change.items():
        if key in ("rotary_dim", "head_size", "is_neox"):
            kwargs[key] = value
        else:
            args[key] = variants[str(value)]()
    with pytest.raises(error, match=match):
        rotary_embedding(args["positions"], args["q"], args["k"], args["cache"], **kwargs)
    torch.cuda.synchronize()
    assert (q == 7.0).all() and (k == -3.0).all()


@pytest.mark.parametrize("position", [MAX_POSITION, -1, 2**40])
def test_positions_outside_the_cache_fail_the_launch(position: int) -> None:
    out = trapped_launch(
        "from cujit.rotary_embedding import rotary_embedding",
        f"""
        q = torch.randn(64, 8 * 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(64, 2 * 128, dtype=torch.bfloat16, device="cuda")
        cache = torch.randn({MAX_POSITION}, 128, device="cuda")
        positions = torch.zeros(64, dtype=torch.int64, device="cuda")
        positions[17] = {position}
        rotary_embedding(positions, q, k, cache, head_size=128)
        """,
    )
    assert "LAUNCH_ERROR" in out, out
