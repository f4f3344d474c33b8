"""store_kv_cache on the GPU against torch's indexing, byte for byte (fp8 included)."""

from __future__ import annotations

import pytest

import cujit
from tests.conftest import trapped_launch

torch = pytest.importorskip("torch")

from cujit.store_kv_cache import store_kv_cache  # noqa: E402

pytestmark = pytest.mark.gpu
FP8 = torch.float8_e4m3fn
POISON = 0x5A  # every byte of a fresh cache: a slot the op must not write keeps it


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def fp8_reference(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The stored value: an IEEE division by the scale (a CUDA tensor, so torch divides truly), saturated to +-448."""
    return (x.float() / scale).clamp(-448, 448).to(FP8)


def new_cache(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return torch.full((*shape[:-1], shape[-1] * itemsize), POISON, dtype=torch.uint8, device="cuda").view(dtype)


def reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slots: torch.Tensor, k_scale: torch.Tensor | None = None,
              v_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The caches after the store, as bytes [num_slots, row bytes] (unique slots)."""
    out = []
    for x, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        row_bytes = x.shape[1] * x.shape[2] * cache.element_size()
        rows = as_bytes(cache).view(-1, row_bytes).clone()
        keep = slots >= 0
        values = x[keep] if scale is None else fp8_reference(x[keep], scale)
        rows[slots[keep].long()] = as_bytes(values).view(values.shape[0], row_bytes)
        out.append(rows)
    return out[0], out[1]


def run_and_check(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slots: torch.Tensor, k_scale: torch.Tensor | None = None,
                  v_scale: torch.Tensor | None = None) -> None:
    expect_k, expect_v = reference(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    store_kv_cache(k, v, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)
    assert torch.equal(as_bytes(k_cache).view_as(expect_k), expect_k)
    assert torch.equal(as_bytes(v_cache).view_as(expect_v), expect_v)


def slots_for(tokens: int, num_slots: int, skip_every: int = 0, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    slots = torch.randperm(num_slots, device="cuda")[:tokens].to(dtype)
    if skip_every:
        slots[::skip_every] = -1
    return slots


@pytest.mark.parametrize("tokens", [0, 1, 7, 512, 513, 4097])  # 512 | 513: either side of ONE_TOKEN_BLOCKS
@pytest.mark.parametrize(("kv_heads", "head_size"), [(8, 128), (1, 64), (2, 256), (4, 80), (3, 5)])
@pytest.mark.parametrize("paged", [False, True], ids=["flat", "paged"])
def test_matches_reference(tokens: int, kv_heads: int, head_size: int, paged: bool) -> None:
    block_size, num_blocks = 16, 300
    shape = (num_blocks, block_size, kv_heads, head_size) if paged else (num_blocks * block_size, kv_heads, head_size)
    k = torch.randn(tokens, kv_heads, head_size, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(tokens, kv_heads, head_size, dtype=torch.bfloat16, device="cuda")
    slots = slots_for(tokens, num_blocks * block_size, skip_every=5)
    run_and_check(k, v, new_cache(shape, torch.bfloat16), new_cache(shape, torch.bfloat16), slots)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64], ids=str)
def test_dtypes(dtype: torch.dtype, slot_dtype: torch.dtype) -> None:
    k = torch.randn(500, 8, 128, dtype=dtype, device="cuda")
    v = torch.randn(500, 8, 128, dtype=dtype, device="cuda")
    slots = slots_for(500, 1000, skip_every=3, dtype=slot_dtype)
    run_and_check(k, v, new_cache((1000, 8, 128), dtype), new_cache((1000, 8, 128), dtype), slots)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.05, 2.0), (3e-3, 0.7)])
@pytest.mark.parametrize("tokens", [1, 7, 4097])
def test_fp8_cache(dtype: torch.dtype, scales: tuple[float, float], tokens: int) -> None:
    k = torch.randn(tokens, 8, 128, dtype=dtype, device="cuda") * 4
    v = torch.randn(tokens, 8, 128, dtype=dtype, device="cuda") * 4
    k_scale = torch.tensor([scales[0]], device="cuda")
    v_scale = torch.tensor([scales[1]], device="cuda")
    slots = slots_for(tokens, 2 * tokens + 16, skip_every=4)
    shape = (2 * tokens + 16, 8, 128)
    run_and_check(k, v, new_cache(shape, FP8), new_cache(shape, FP8), slots, k_scale, v_scale)


def test_fp8_saturates_and_keeps_nan() -> None:
    k = torch.tensor([[[1e4, -1e4, 448.0, -449.0, 464.0, float("inf"), float("-inf"), float("nan")]]],
                     device="cuda")
    v = torch.tensor([[[0.0, -0.0, 1e-9, 2.0**-9, 2.0**-10, 3 * 2.0**-11, 0.1, -0.3]]], device="cuda")
    ones = torch.ones(1, device="cuda")
    k_cache, v_cache = new_cache((4, 1, 8), FP8), new_cache((4, 1, 8), FP8)
    store_kv_cache(k, v, k_cache, v_cache, torch.tensor([2], device="cuda"), k_scale=ones, v_scale=ones)
    stored = as_bytes(k_cache[2, 0]).tolist()
    assert stored[:5] == [0x7E, 0xFE, 0x7E, 0xFE, 0x7E]  # +-448: beyond the range saturates
    assert stored[5:7] == [0x7E, 0xFE]  # +-inf saturates too, as clamp(-448, 448) makes it
    assert stored[7] & 0x7F == 0x7F  # NaN stays NaN
    assert torch.equal(as_bytes(v_cache[2, 0]), as_bytes(fp8_reference(v[0, 0], ones)))  # zeros, subnormals


@pytest.mark.parametrize("offset", [0, 1])
def test_strided_and_unaligned_sources(offset: int) -> None:
    tokens, kv_heads, head_size = 300, 4, 64
    # k and v as views of one [tokens, 2, kv_heads, head_size] tensor (token stride 2 * row), shifted by `offset`
    # values so that offset 1 takes the element-wise path.
    flat = torch.randn(tokens * 2 * kv_heads * head_size + offset, dtype=torch.float16, device="cuda")
    kv = flat[offset:].view(tokens, 2, kv_heads, head_size)
    k, v = kv[:, 0], kv[:, 1]
    slots = slots_for(tokens, 512, skip_every=7)
    shape = (512, kv_heads, head_size)
    run_and_check(k, v, new_cache(shape, torch.float16), new_cache(shape, torch.float16), slots)


@pytest.mark.parametrize(("kv_heads", "head_size"), [(1, 4097), (3, 97), (1, 5), (8, 128)])
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, FP8], ids=["bf16", "fp8"])
def test_element_path_over_rows_of_any_length(kv_heads: int, head_size: int, cache_dtype: torch.dtype) -> None:
    # Rows one element in take the element-wise path, several values a step: whole steps, a last partial one,
    # and rows shorter than one step of the token's group.
    tokens = 37
    flat = torch.randn(tokens * 2 * kv_heads * head_size + 1, dtype=torch.bfloat16, device="cuda")
    kv = flat[1:].view(tokens, 2, kv_heads, head_size)
    k, v = kv[:, 0], kv[:, 1]
    slots = slots_for(tokens, 64, skip_every=5)
    shape = (64, kv_heads, head_size)
    scales = (torch.tensor([0.5], device="cuda"), torch.tensor([2.0], device="cuda")) if cache_dtype == FP8 else (
        None, None)
    run_and_check(k, v, new_cache(shape, cache_dtype), new_cache(shape, cache_dtype), slots, *scales)


def test_repeated_slots_hold_one_of_the_writers() -> None:
    tokens, kv_heads, head_size = 64, 2, 128
    k = torch.randn(tokens, kv_heads, head_size, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(tokens, kv_heads, head_size, dtype=torch.bfloat16, device="cuda")
    slots = torch.arange(tokens, device="cuda")
    slots[40] = slots[10]  # tokens 10 and 40 both write slot 10
    k_cache = new_cache((tokens, kv_heads, head_size), torch.bfloat16)
    v_cache = new_cache((tokens, kv_heads, head_size), torch.bfloat16)
    store_kv_cache(k, v, k_cache, v_cache, slots)
    for cache, x in ((k_cache, k), (v_cache, v)):
        got = as_bytes(cache[10]).view(torch.int16)
        first, second = as_bytes(x[10]).view(torch.int16), as_bytes(x[40]).view(torch.int16)
        assert ((got == first) | (got == second)).all()
        others = [i for i in range(tokens) if i not in (10, 40)]
        assert torch.equal(cache[others], x[others])


def test_non_default_stream() -> None:
    k = torch.randn(2000, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(2000, 8, 128, dtype=torch.bfloat16, device="cuda")
    k_cache, v_cache = new_cache((4096, 8, 128), torch.bfloat16), new_cache((4096, 8, 128), torch.bfloat16)
    slots = slots_for(2000, 4096)
    expect_k, expect_v = reference(k, v, k_cache, v_cache, slots)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        store_kv_cache(k, v, k_cache, v_cache, slots)
    s.synchronize()
    assert torch.equal(as_bytes(k_cache).view_as(expect_k), expect_k)
    assert torch.equal(as_bytes(v_cache).view_as(expect_v), expect_v)


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, FP8], ids=str)
def test_cuda_graph_replays_with_new_data(cache_dtype: torch.dtype) -> None:
    tokens, shape = 8, (64, 16, 8, 128)
    fp8 = cache_dtype == FP8
    k = torch.randn(tokens, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(tokens, 8, 128, dtype=torch.bfloat16, device="cuda")
    k_cache, v_cache = new_cache(shape, cache_dtype), new_cache(shape, cache_dtype)
    k_scale = torch.tensor([0.5], device="cuda") if fp8 else None
    v_scale = torch.tensor([0.25], device="cuda") if fp8 else None
    slots = slots_for(tokens, 64 * 16)
    store_kv_cache(k, v, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)  # compile and load first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        store_kv_cache(k, v, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)
    for step in range(3):
        k.copy_(torch.randn_like(k))
        v.copy_(torch.randn_like(v))
        slots.copy_(slots_for(tokens, 64 * 16, skip_every=3 if step else 0))
        if fp8:
            k_scale.fill_(0.5 + step)  # type: ignore[union-attr]
        expect_k, expect_v = reference(k, v, k_cache, v_cache, slots, k_scale, v_scale)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(as_bytes(k_cache).view_as(expect_k), expect_k)
        assert torch.equal(as_bytes(v_cache).view_as(expect_v), expect_v)


def test_torch_compile_fullgraph_matches_eager() -> None:
    def step(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        store_kv_cache(k * 2, v, k_cache, v_cache, slots, k_scale=scale, v_scale=scale)
        return v * 3

    compiled = torch.compile(step, fullgraph=True)
    k = torch.randn(33, 8, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(33, 8, 128, dtype=torch.bfloat16, device="cuda")
    scale = torch.tensor([0.5], device="cuda")
    slots = slots_for(33, 100, skip_every=4)
    eager = [new_cache((100, 8, 128), FP8) for _ in range(2)]
    traced = [new_cache((100, 8, 128), FP8) for _ in range(2)]
    expect = step(k, v, *eager, slots, scale)
    got = compiled(k, v, *traced, slots, scale)
    assert torch.equal(got, expect)
    assert all(torch.equal(as_bytes(a), as_bytes(b)) for a, b in zip(eager, traced, strict=True))


def test_opcheck() -> None:
    k = torch.randn(9, 2, 64, dtype=torch.float16, device="cuda")
    v = torch.randn(9, 2, 64, dtype=torch.float16, device="cuda")
    op = store_kv_cache.op.torch_op.default
    slots = slots_for(9, 32, skip_every=4)
    caches = (torch.zeros(2, 16, 2, 64, dtype=torch.float16, device="cuda"),
              torch.zeros(2, 16, 2, 64, dtype=torch.float16, device="cuda"))
    torch.library.opcheck(op, (k, v, *caches, slots))
    flat = (torch.zeros(32, 2, 64, dtype=torch.float16, device="cuda"),
            torch.zeros(32, 2, 64, dtype=torch.float16, device="cuda"))
    torch.library.opcheck(op, (k, v, *flat, slots))
    # (Not with fp8 caches: opcheck's mutation check compares mutated inputs with allclose, which fp8 lacks.)


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    k = torch.randn(100, 4, 64, dtype=torch.float32, device="cuda")
    v = torch.randn(100, 4, 64, dtype=torch.float32, device="cuda")
    k_cache, v_cache = new_cache((256, 4, 64), torch.float32), new_cache((256, 4, 64), torch.float32)
    slots = slots_for(100, 256, skip_every=9)
    expect_k, expect_v = reference(k, v, k_cache, v_cache, slots)
    torch.cuda.synchronize()
    store_kv_cache(*(cupy.from_dlpack(t) for t in (k, v, k_cache, v_cache, slots)))
    cupy.cuda.get_current_stream().synchronize()
    assert torch.equal(as_bytes(k_cache).view_as(expect_k), expect_k)
    assert torch.equal(as_bytes(v_cache).view_as(expect_v), expect_v)


REFUSALS: list[tuple[str, str, type[Exception], str]] = [
    ("cache of another float dtype", "cache_half", cujit.CujitError, "expected the dtype of k and v"),
    ("fp8 cache without scales", "fp8_no_scale", cujit.CujitError, "expected both for an fp8 cache"),
    ("scales for a cache that is not fp8", "scale_no_fp8", cujit.CujitError, "expected none"),
    ("scale of two values", "scale_shape", cujit.TensorMatchError, "'k_scale'"),
    ("float64 scale", "scale_dtype", cujit.TensorMatchError, "'k_scale': dtype"),
    ("cache of another head size", "cache_head", cujit.TensorMatchError, "'k_cache'"),
    ("strided heads", "strided_heads", cujit.TensorMatchError, "'k'"),
    ("non-contiguous cache", "cache_strided", cujit.TensorMatchError, "'v_cache'"),
    ("float slots", "slot_dtype", cujit.TensorMatchError, "'slot_mapping': dtype"),
    ("slots of another length", "slot_len", cujit.TensorMatchError, "'slot_mapping'"),
    ("caches on the CPU", "cpu", cujit.TensorMatchError, "device"),
]


@pytest.mark.parametrize(("case", "change", "error", "match"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_wrong_inputs_are_refused_before_any_launch(case: str, change: str, error: type[Exception],
                                                     match: str) -> None:
    k = torch.randn(6, 2, 64, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(6, 2, 64, dtype=torch.bfloat16, device="cuda")
    k_cache, v_cache = new_cache((16, 2, 64), torch.bfloat16), new_cache((16, 2, 64), torch.bfloat16)
    slots = slots_for(6, 16)
    scale = torch.ones(1, device="cuda")
    args: dict[str, object] = {"k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache, "slots": slots}
    kwargs: dict[str, object] = {}
    fp8_k, fp8_v = new_cache((16, 2, 64), FP8), new_cache((16, 2, 64), FP8)
    if change == "cache_half":
        args["k_cache"], args["v_cache"] = new_cache((16, 2, 64), torch.half), new_cache((16, 2, 64), torch.half)
    elif change == "fp8_no_scale":
        args["k_cache"], args["v_cache"] = fp8_k, fp8_v
    elif change == "scale_no_fp8":
        kwargs = {"k_scale": scale, "v_scale": scale}
    elif change == "scale_shape":
        args["k_cache"], args["v_cache"] = fp8_k, fp8_v
        kwargs = {"k_scale": torch.ones(2, device="cuda"), "v_scale": scale}
    elif change == "scale_dtype":
        args["k_cache"], args["v_cache"] = fp8_k, fp8_v
        kwargs = {"k_scale": scale.double(), "v_scale": scale}
    elif change == "cache_head":
        args["k_cache"] = new_cache((16, 2, 128), torch.bfloat16)
    elif change == "strided_heads":
        args["k"] = torch.randn(6, 2, 128, dtype=torch.bfloat16, device="cuda")[:, :, :64]
    elif change == "cache_strided":
        args["v_cache"] = new_cache((32, 2, 64), torch.bfloat16)[::2]
    elif change == "slot_dtype":
        args["slots"] = slots.float()
    elif change == "slot_len":
        args["slots"] = slots[:5]
    elif change == "cpu":
        args["k_cache"], args["v_cache"] = k_cache.cpu(), v_cache.cpu()
    before = [as_bytes(c).clone() for c in (k_cache, v_cache, fp8_k, fp8_v)]
    with pytest.raises(error, match=match):
        store_kv_cache(args["k"], args["v"], args["k_cache"], args["v_cache"], args["slots"], **kwargs)
    torch.cuda.synchronize()
    after = [as_bytes(c) for c in (k_cache, v_cache, fp8_k, fp8_v)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("slot", [4096, 2**40])
def test_slots_past_the_cache_fail_the_launch(slot: int) -> None:
    out = trapped_launch(
        "from cujit.store_kv_cache import store_kv_cache",
        f"""
        k = torch.randn(64, 8, 128, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(64, 8, 128, dtype=torch.bfloat16, device="cuda")
        k_cache = torch.zeros(256, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
        v_cache = torch.zeros(256, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
        slots = torch.arange(64, device="cuda")
        slots[9] = {slot}
        store_kv_cache(k, v, k_cache, v_cache, slots)
        """,
    )
    assert "LAUNCH_ERROR" in out, out
