"""topk_softmax on the GPU against a float64 torch reference.

The weights are compared with the reference's at 1e-5 relative (fp32 softmax against float64); the ids exactly
wherever the reference's probabilities leave no near-tie (the kernel's fp32 values could order a near-tie either
way), and in every case the reference probability of each chosen id must equal its weight. Exact ties are tested
on their own: the lower expert comes first.
"""

from __future__ import annotations

import pytest

import cujit
from cujit.topk_softmax import topk_softmax

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(logits: torch.Tensor, k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, ids, probabilities) in float64; ids ordered by descending probability, then ascending id."""
    p = torch.softmax(logits.double(), -1)
    order = torch.sort(p, dim=-1, descending=True, stable=True)
    weights, ids = order.values[:, :k], order.indices[:, :k]
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids, p


def check(logits: torch.Tensor, k: int, renormalize: bool, weights: torch.Tensor, ids: torch.Tensor) -> None:
    expected_w, expected_ids, p = reference(logits, k, renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (logits.shape[0], k) and weights.is_contiguous() and ids.is_contiguous()
    torch.testing.assert_close(weights.double(), expected_w, rtol=1e-5, atol=1e-7)
    ids64 = ids.long()
    assert ((ids64 >= 0) & (ids64 < logits.shape[1])).all()
    assert (ids64.sort(-1).values.diff(dim=-1) > 0).all()  # distinct (an empty diff for k = 1)
    chosen = p.gather(1, ids64)
    if renormalize:
        chosen = chosen / chosen.sum(-1, keepdim=True)
    torch.testing.assert_close(weights.double(), chosen, rtol=1e-5, atol=1e-7)
    # Exact ids where the reference's k + 1 largest probabilities are apart by more than fp32 can blur.
    top = torch.sort(p, dim=-1, descending=True).values[:, :min(k + 1, p.shape[1])]
    clear = (top.diff(dim=-1).abs() > 1e-6 * top[:, :1]).all(-1)  # all true for a single expert
    assert torch.equal(ids64[clear], expected_ids[clear])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("experts", [1, 8, 16, 60, 64, 128, 160, 256, 512])
@pytest.mark.parametrize("tokens", [1, 7, 4097])
def test_matches_reference(dtype: torch.dtype, experts: int, tokens: int) -> None:
    logits = (torch.randn(tokens, experts, device="cuda") * 3).to(dtype)
    for k in sorted({1, min(2, experts), min(6, experts), min(8, experts)}):
        for renormalize in (False, True):
            weights, ids = topk_softmax(logits, k, renormalize)
            check(logits, k, renormalize, weights, ids)


def test_strided_rows_and_given_outputs() -> None:
    wide = torch.randn(33, 300, device="cuda", dtype=torch.bfloat16)
    logits = wide[:, 5:261]  # 256 experts, rows 300 apart, not 16-byte aligned
    weights = torch.full((33, 8), float("nan"), device="cuda")
    ids = torch.full((33, 8), -1, device="cuda", dtype=torch.int32)
    got = topk_softmax(logits, 8, True, weights=weights, ids=ids)
    assert got[0] is weights and got[1] is ids
    check(logits, 8, True, weights, ids)


def test_ties_rank_the_lower_expert_first() -> None:
    logits = torch.zeros(3, 16, device="cuda", dtype=torch.bfloat16)
    logits[1, [3, 9, 12]] = 2.0  # three equal winners, then thirteen equal others
    logits[2, ::2] = 1.0
    weights, ids = topk_softmax(logits, 5)
    assert ids[0].tolist() == [0, 1, 2, 3, 4]
    assert ids[1].tolist() == [3, 9, 12, 0, 1]
    assert ids[2].tolist() == [0, 2, 4, 6, 8]
    torch.testing.assert_close(weights[0], torch.full((5,), 1 / 16, device="cuda"))


def test_nan_row_gives_nan_weights_and_other_rows_are_untouched() -> None:
    logits = torch.randn(4, 64, device="cuda")
    logits[2, 10] = float("nan")
    weights, ids = topk_softmax(logits, 4, True)
    assert weights[2].isnan().all() and ids[2].tolist() == [0, 1, 2, 3]
    keep = torch.tensor([0, 1, 3], device="cuda")
    check(logits[keep], 4, True, weights[keep], ids[keep])


def test_empty_and_non_default_stream() -> None:
    weights, ids = topk_softmax(torch.empty(0, 64, device="cuda"), 2)
    assert weights.shape == (0, 2) and ids.shape == (0, 2)
    logits = torch.randn(4097, 128, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        logits.mul_(2)  # written on the side stream just before the op
        weights, ids = topk_softmax(logits, 8, True)
    stream.synchronize()
    check(logits, 8, True, weights, ids)


def test_cuda_graph_replays_with_new_data() -> None:
    logits = torch.randn(16, 128, device="cuda", dtype=torch.bfloat16)
    weights = torch.empty(16, 8, device="cuda")
    ids = torch.empty(16, 8, device="cuda", dtype=torch.int32)
    topk_softmax(logits, 8, True, weights=weights, ids=ids)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        topk_softmax(logits, 8, True, weights=weights, ids=ids)
    for _ in range(2):
        logits.copy_(torch.randn_like(logits))
        graph.replay()
        torch.cuda.synchronize()
        check(logits, 8, True, weights, ids)


def test_torch_compile_fullgraph_matches_eager() -> None:
    def route(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, ids = topk_softmax(x * 2, 4, True)
        return weights * 3, ids + 1

    compiled = torch.compile(route, fullgraph=True)
    for tokens in (7, 128):
        x = torch.randn(tokens, 64, device="cuda", dtype=torch.bfloat16)
        for got, expect in zip(compiled(x), route(x), strict=True):
            assert torch.equal(got, expect)


def test_opcheck() -> None:
    x = torch.randn(7, 64, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(topk_softmax.op.torch_op.default, (x, 4, True))


def test_refusals_launch_nothing() -> None:
    x = torch.randn(8, 64, device="cuda")
    weights = torch.full((8, 4), float("nan"), device="cuda")
    cases = [
        (lambda: topk_softmax(x.double(), 4), cujit.TensorMatchError, "dtype"),
        (lambda: topk_softmax(x, 0), cujit.CujitError, "topk: expected 1 to min(experts, 8)"),
        (lambda: topk_softmax(x, 9), cujit.CujitError, "topk: expected 1 to min(experts, 8)"),
        (lambda: topk_softmax(x[:, :4], 5), cujit.CujitError, "topk"),
        (lambda: topk_softmax(torch.randn(8, 513, device="cuda"), 4), cujit.CujitError, "1 to 512 experts"),
        (lambda: topk_softmax(x[:, ::2], 4), cujit.TensorMatchError, "stride"),
        (lambda: topk_softmax(x, 4, weights=weights[:7]), cujit.TensorMatchError, "weights"),
        (lambda: topk_softmax(x, 4, weights=weights.half()), cujit.TensorMatchError, "weights"),
        (lambda: topk_softmax(x, 4, ids=torch.empty(8, 4, device="cuda", dtype=torch.int64)),
         cujit.TensorMatchError, "ids"),
        (lambda: topk_softmax(x.cpu(), 4), cujit.CujitError, "cuda"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=None) as info:
            call()
        assert words in str(info.value), str(info.value)
    torch.cuda.synchronize()
    assert weights.isnan().all()
