"""rotary_embedding_with_kv_cache on the GPU: bit for bit the unfused rotary_embedding + store_kv_cache."""

from __future__ import annotations

import pytest

import cujit
from tests.conftest import trapped_launch

torch = pytest.importorskip("torch")

from cujit.rotary_embedding import rotary_embedding  # noqa: E402
from cujit.rotary_embedding_with_kv_cache import rotary_embedding_with_kv_cache  # noqa: E402
from cujit.store_kv_cache import store_kv_cache  # noqa: E402
from tests.test_rotary_gpu import MAX_POSITION, TOLERANCES, cos_sin_cache, reference  # noqa: E402

pytestmark = pytest.mark.gpu
FP8 = torch.float8_e4m3fn


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def new_cache(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return torch.full((*shape[:-1], shape[-1] * itemsize), 0x5A, dtype=torch.uint8, device="cuda").view(dtype)


class Case:
    """Inputs of one call, as views of a fused qkv tensor, and caches to write."""

    def __init__(self, tokens: int, q_heads: int, kv_heads: int, head_size: int, *, rotary_dim: int | None = None,
                 dtype: torch.dtype = torch.bfloat16, cache_dtype: torch.dtype | None = None,
                 cs_dtype: torch.dtype = torch.float32, paged: bool = True, skip_every: int = 5,
                 pos_dtype: torch.dtype = torch.int64, slot_dtype: torch.dtype = torch.int64) -> None:
        self.head_size = head_size
        self.positions = torch.randint(0, MAX_POSITION, (tokens,), dtype=pos_dtype, device="cuda")
        self.qkv = torch.randn(tokens, q_heads + 2 * kv_heads, head_size, dtype=dtype, device="cuda")
        self.cache = cos_sin_cache(rotary_dim or head_size, cs_dtype)
        num_slots = 2 * tokens + 32
        block = 16
        blocks = -(-num_slots // block)
        shape = (blocks, block, kv_heads, head_size) if paged else (blocks * block, kv_heads, head_size)
        cache_dtype = cache_dtype or dtype
        self.k_cache, self.v_cache = new_cache(shape, cache_dtype), new_cache(shape, cache_dtype)
        self.slots = torch.randperm(blocks * block, device="cuda")[:tokens].to(slot_dtype)
        if skip_every:
            self.slots[::skip_every] = -1
        fp8 = cache_dtype == FP8
        self.k_scale = torch.tensor([0.37], device="cuda") if fp8 else None
        self.v_scale = torch.tensor([0.11], device="cuda") if fp8 else None
        self.q_heads, self.kv_heads = q_heads, kv_heads

    @property
    def q(self) -> torch.Tensor:
        return self.qkv[:, : self.q_heads]

    @property
    def k(self) -> torch.Tensor:
        return self.qkv[:, self.q_heads : self.q_heads + self.kv_heads]

    @property
    def v(self) -> torch.Tensor:
        return self.qkv[:, self.q_heads + self.kv_heads :]

    def clone(self) -> Case:
        other = object.__new__(Case)
        other.__dict__.update({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})
        return other

    def fused(self, is_neox: bool) -> None:
        rotary_embedding_with_kv_cache(self.positions, self.q, self.k, self.v, self.cache, self.k_cache, self.v_cache,
                                       self.slots, is_neox=is_neox, k_scale=self.k_scale, v_scale=self.v_scale)

    def unfused(self, is_neox: bool) -> None:
        rotary_embedding(self.positions, self.q, self.k, self.cache, is_neox=is_neox, head_size=self.head_size)
        store_kv_cache(self.k, self.v, self.k_cache, self.v_cache, self.slots, k_scale=self.k_scale,
                       v_scale=self.v_scale)


def check_against_unfused(case: Case, is_neox: bool) -> None:
    """The fused op writes q and the caches bit for bit as the unfused pair does, and leaves k and v alone."""
    unfused = case.clone()
    k_before, v_before = case.k.clone(), case.v.clone()
    unfused.unfused(is_neox)
    case.fused(is_neox)
    assert torch.equal(as_bytes(case.q), as_bytes(unfused.q))
    assert torch.equal(as_bytes(case.k_cache), as_bytes(unfused.k_cache))
    assert torch.equal(as_bytes(case.v_cache), as_bytes(unfused.v_cache))
    assert torch.equal(as_bytes(case.k), as_bytes(k_before)) and torch.equal(as_bytes(case.v), as_bytes(v_before))


@pytest.mark.parametrize("tokens", [0, 1, 7, 4097])
@pytest.mark.parametrize("heads", [(32, 8), (40, 10), (64, 16)], ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("head_size", [64, 128, 256])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_matches_the_unfused_ops(tokens: int, heads: tuple[int, int], head_size: int, is_neox: bool) -> None:
    check_against_unfused(Case(tokens, *heads, head_size), is_neox)


@pytest.mark.parametrize("cache_dtype", ["same", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("cs_dtype", ["float32", "same"])
@pytest.mark.parametrize("paged", [True, False], ids=["paged", "flat"])
def test_dtypes_and_layouts(cache_dtype: str, dtype: torch.dtype, cs_dtype: str, paged: bool) -> None:
    case = Case(301, 16, 4, 128, dtype=dtype, cache_dtype=FP8 if cache_dtype == "fp8" else dtype,
                cs_dtype=torch.float32 if cs_dtype == "float32" else dtype, paged=paged,
                pos_dtype=torch.int32, slot_dtype=torch.int32)
    check_against_unfused(case, True)


@pytest.mark.parametrize(("head_size", "rotary_dim"), [(128, 64), (256, 64), (64, 32), (80, 80), (96, 32)])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("cache_dtype", ["same", "fp8"])
def test_partial_rotary(head_size: int, rotary_dim: int, is_neox: bool, cache_dtype: str) -> None:
    case = Case(129, 8, 2, head_size, rotary_dim=rotary_dim, cache_dtype=FP8 if cache_dtype == "fp8" else None)
    check_against_unfused(case, is_neox)


def test_against_the_fp32_reference() -> None:
    case = Case(513, 32, 8, 128, skip_every=0, paged=False)
    expect_q = reference(case.positions, case.q.reshape(513, -1), case.cache, 128, True)
    expect_k = reference(case.positions, case.k.reshape(513, -1), case.cache, 128, True)
    case.fused(True)
    torch.testing.assert_close(case.q.reshape(513, -1), expect_q, **TOLERANCES[torch.bfloat16])
    got_k = case.k_cache.view(-1, 8 * 128)[case.slots.long()]
    torch.testing.assert_close(got_k, expect_k, **TOLERANCES[torch.bfloat16])
    assert torch.equal(case.v_cache.view(-1, 8, 128)[case.slots.long()], case.v)


def test_unaligned_views_take_the_element_path() -> None:
    tokens, q_heads, kv_heads, head_size = 65, 4, 2, 64
    flat = torch.randn(tokens * (q_heads + 2 * kv_heads) * head_size + 1, dtype=torch.float16, device="cuda")
    case = Case(tokens, q_heads, kv_heads, head_size, dtype=torch.float16)
    case.qkv = flat[1:].view(tokens, q_heads + 2 * kv_heads, head_size)  # starts 2 bytes past a vector
    check_against_unfused(case, True)


def test_cuda_graph_replays_with_new_data() -> None:
    case = Case(8, 8, 2, 128, cache_dtype=FP8, skip_every=3)
    case.fused(True)  # compile and load outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        case.fused(True)
    for _ in range(3):
        fresh = Case(8, 8, 2, 128, cache_dtype=FP8, skip_every=3)
        case.positions.copy_(fresh.positions)
        case.qkv.copy_(fresh.qkv)
        case.slots.copy_(fresh.slots)
        expect = case.clone()
        expect.unfused(True)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(as_bytes(case.q), as_bytes(expect.q))
        assert torch.equal(as_bytes(case.k_cache), as_bytes(expect.k_cache))
        assert torch.equal(as_bytes(case.v_cache), as_bytes(expect.v_cache))


def test_torch_compile_fullgraph_matches_eager() -> None:
    def step(positions: torch.Tensor, qkv: torch.Tensor, cache: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        qkv = qkv * 1.5
        q, k, v = qkv[:, :8].clone(), qkv[:, 8:10], qkv[:, 10:]
        rotary_embedding_with_kv_cache(positions, q, k, v, cache, k_cache, v_cache, slots, is_neox=False)
        return q.contiguous()

    compiled = torch.compile(step, fullgraph=True)
    case = Case(40, 8, 2, 64, paged=False)
    other = case.clone()
    expect = step(case.positions, case.qkv, case.cache, case.k_cache, case.v_cache, case.slots)
    got = compiled(other.positions, other.qkv, other.cache, other.k_cache, other.v_cache, other.slots)
    assert torch.equal(as_bytes(got), as_bytes(expect))
    assert torch.equal(as_bytes(other.k_cache), as_bytes(case.k_cache))
    assert torch.equal(as_bytes(other.v_cache), as_bytes(case.v_cache))


def test_opcheck() -> None:
    # Separate q, k and v, and caches in k's dtype: opcheck's mutation check compares mutated inputs with allclose,
    # which fp8 lacks.
    case = Case(9, 4, 2, 64)
    op = rotary_embedding_with_kv_cache.op.torch_op.default
    q, k, v = case.q.contiguous(), case.k.contiguous(), case.v.contiguous()
    torch.library.opcheck(op, (case.positions, q, k, v, case.cache, case.k_cache, case.v_cache, case.slots),
                          {"is_neox": True})


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    case = Case(33, 4, 2, 64, dtype=torch.float32)
    unfused = case.clone()
    unfused.unfused(True)
    torch.cuda.synchronize()
    c = {name: cupy.from_dlpack(getattr(case, name)) for name in ("positions", "q", "k", "v", "cache", "k_cache",
                                                                  "v_cache", "slots")}
    rotary_embedding_with_kv_cache(c["positions"], c["q"], c["k"], c["v"], c["cache"], c["k_cache"], c["v_cache"],
                                   c["slots"])
    cupy.cuda.get_current_stream().synchronize()
    assert torch.equal(as_bytes(case.q), as_bytes(unfused.q))
    assert torch.equal(as_bytes(case.k_cache), as_bytes(unfused.k_cache))


REFUSALS: list[tuple[str, str, type[Exception], str]] = [
    ("k of another head size", "k_head", cujit.TensorMatchError, "'k'"),
    ("q rows of flat heads", "q_2d", cujit.TensorMatchError, "'q': rank"),
    ("rotary dim above the head size", "wide_cache", cujit.CujitError, "at most head_size"),
    ("cache of another float dtype", "cache_half", cujit.CujitError, "expected the dtype of k and v"),
    ("fp8 cache without scales", "fp8_no_scale", cujit.CujitError, "expected both"),
    ("v of another dtype", "v_half", cujit.TensorMatchError, "'v': dtype"),
    ("slots of another length", "slots_short", cujit.TensorMatchError, "'slot_mapping'"),
]


@pytest.mark.parametrize(("case_name", "change", "error", "match"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_wrong_inputs_are_refused_before_any_launch(case_name: str, change: str, error: type[Exception],
                                                     match: str) -> None:
    case = Case(6, 4, 2, 64)
    args = {"positions": case.positions, "q": case.q, "k": case.k, "v": case.v, "cache": case.cache,
            "k_cache": case.k_cache, "v_cache": case.v_cache, "slots": case.slots}
    if change == "k_head":
        args["k"] = torch.randn(6, 2, 32, dtype=torch.bfloat16, device="cuda")
    elif change == "q_2d":
        args["q"] = case.q.reshape(6, -1)
    elif change == "wide_cache":
        args["cache"] = cos_sin_cache(128)
    elif change == "cache_half":
        args["k_cache"], args["v_cache"] = new_cache((64, 2, 64), torch.half), new_cache((64, 2, 64), torch.half)
    elif change == "fp8_no_scale":
        args["k_cache"], args["v_cache"] = new_cache((64, 2, 64), FP8), new_cache((64, 2, 64), FP8)
    elif change == "v_half":
        args["v"] = case.v.half()
    elif change == "slots_short":
        args["slots"] = case.slots[:5]
    before = [as_bytes(t).clone() for t in (case.qkv, case.k_cache, case.v_cache)]
    with pytest.raises(error, match=match):
        rotary_embedding_with_kv_cache(args["positions"], args["q"], args["k"], args["v"], args["cache"],
                                       args["k_cache"], args["v_cache"], args["slots"])
    torch.cuda.synchronize()
    after = [as_bytes(t) for t in (case.qkv, case.k_cache, case.v_cache)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(("position", "slot"), [(MAX_POSITION, 3), (0, 10**9)])
def test_bad_positions_and_slots_fail_the_launch(position: int, slot: int) -> None:
    out = trapped_launch(
        "from cujit.rotary_embedding_with_kv_cache import rotary_embedding_with_kv_cache as f",
        f"""
        qkv = torch.randn(16, 12, 128, dtype=torch.bfloat16, device="cuda")
        cache = torch.randn({MAX_POSITION}, 128, device="cuda")
        k_cache = torch.zeros(64, 2, 128, dtype=torch.bfloat16, device="cuda")
        v_cache = torch.zeros(64, 2, 128, dtype=torch.bfloat16, device="cuda")
        positions = torch.zeros(16, dtype=torch.int64, device="cuda")
        slots = torch.arange(16, device="cuda")
        positions[5] = {position}
        slots[6] = {slot}
        f(positions, qkv[:, :8], qkv[:, 8:10], qkv[:, 10:], cache, k_cache, v_cache, slots)
        """,
    )
    assert "LAUNCH_ERROR" in out, out
