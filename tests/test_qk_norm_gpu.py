"""qk_rms_norm on the GPU against a float64 torch reference, on q and k slices of a fused qkv tensor.

Tolerances as tests/test_norms_gpu.py: one unit in the last place of the storage dtype (bf16 1e-2, fp16 2e-3), 1e-5
for fp32, on top of an absolute 1e-6. The v slice and everything outside q and k must stay untouched.
"""

from __future__ import annotations

import pytest

import cujit
from cujit.qk_rms_norm import qk_rms_norm

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def head_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """Per-head RMSNorm of a [tokens, heads * head_dim] tensor, in float64."""
    d = weight.shape[0]
    h = x.double().reshape(x.shape[0], -1, d)
    w = weight.double() + (1 if gemma else 0)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w).reshape(x.shape)


def qkv_of(tokens: int, q_heads: int, kv_heads: int, d: int, dtype: torch.dtype, pad: int = 0) -> torch.Tensor:
    return torch.randn(tokens, (q_heads + 2 * kv_heads) * d + pad, device="cuda").to(dtype)


def weights(d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return ((torch.rand(d, device="cuda") * 2 - 0.5).to(dtype), (torch.rand(d, device="cuda") * 2 - 0.5).to(dtype))


def run_and_check(qkv: torch.Tensor, q_heads: int, kv_heads: int, d: int, offset: int = 0, eps: float = 1e-6,
                  gemma: bool = False, weight_offset: int = 0) -> None:
    dtype = qkv.dtype
    q = qkv[:, offset:offset + q_heads * d]
    k = qkv[:, offset + q_heads * d:offset + (q_heads + kv_heads) * d]
    base_w = torch.rand(2, d + weight_offset, device="cuda").to(dtype) * 2 - 0.5
    qw, kw = base_w[0, weight_offset:], base_w[1, weight_offset:]
    before = qkv.clone()
    expected_q, expected_k = head_norm(q, qw, eps, gemma), head_norm(k, kw, eps, gemma)
    assert qk_rms_norm(q, k, qw, kw, eps, gemma=gemma) is None
    torch.testing.assert_close(q.double(), expected_q, rtol=RTOL[dtype], atol=1e-6)
    torch.testing.assert_close(k.double(), expected_k, rtol=RTOL[dtype], atol=1e-6)
    untouched = torch.ones(qkv.shape[1], dtype=torch.bool, device="cuda")
    untouched[offset:offset + (q_heads + kv_heads) * d] = False
    assert torch.equal(qkv[:, untouched], before[:, untouched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("tokens", [1, 7, 4097])
def test_fused_qkv_slices(dtype: torch.dtype, d: int, tokens: int) -> None:
    run_and_check(qkv_of(tokens, 16, 4, d, dtype), 16, 4, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [80, 96, 100, 512])
def test_other_head_sizes(dtype: torch.dtype, d: int) -> None:
    if d * dtype.itemsize > 2048:
        pytest.skip("beyond the largest head")
    run_and_check(qkv_of(33, 5, 1, d, dtype), 5, 1, d)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemma_eps_and_zero_heads(dtype: torch.dtype) -> None:
    qkv = qkv_of(9, 8, 2, 128, dtype)
    qkv[3] = 0  # all-zero heads: eps alone keeps them finite, and they stay zero
    run_and_check(qkv, 8, 2, 128, eps=1e-2, gemma=True)
    assert (qkv[3, :10 * 128] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset,weight_offset", [(1, 0), (0, 1), (3, 1)])
def test_misaligned_views_take_the_element_path(dtype: torch.dtype, offset: int, weight_offset: int) -> None:
    run_and_check(qkv_of(17, 4, 2, 128, dtype, pad=offset), 4, 2, 128, offset=offset, weight_offset=weight_offset)


def test_separate_q_and_k_tensors_and_cupy() -> None:
    q = torch.randn(65, 32 * 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(65, 8 * 128, device="cuda", dtype=torch.bfloat16)
    qw, kw = weights(128, torch.bfloat16)
    expected_q, expected_k = head_norm(q, qw, 1e-6, False), head_norm(k, kw, 1e-6, False)
    qk_rms_norm(q, k, qw, kw)
    torch.testing.assert_close(q.double(), expected_q, rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(k.double(), expected_k, rtol=1e-2, atol=1e-6)
    cupy = pytest.importorskip("cupy")
    cq = cupy.random.standard_normal((7, 4 * 64)).astype(cupy.float16)
    ck = cupy.random.standard_normal((7, 64)).astype(cupy.float16)
    cw = cupy.random.uniform(-0.5, 1.5, 64).astype(cupy.float16)
    tq, tk, tw = (torch.as_tensor(a, device="cuda").clone() for a in (cq, ck, cw))
    qk_rms_norm(cq, ck, cw, cw)
    torch.testing.assert_close(torch.as_tensor(cq, device="cuda").double(), head_norm(tq, tw, 1e-6, False),
                               rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(ck, device="cuda").double(), head_norm(tk, tw, 1e-6, False),
                               rtol=2e-3, atol=1e-6)


def test_empty_and_non_default_stream() -> None:
    qw, kw = weights(128, torch.bfloat16)
    qk_rms_norm(torch.empty(0, 1024, device="cuda", dtype=torch.bfloat16),
                torch.empty(0, 256, device="cuda", dtype=torch.bfloat16), qw, kw)
    qkv = qkv_of(4097, 32, 8, 128, torch.bfloat16)
    q, k = qkv[:, :4096], qkv[:, 4096:5120]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        qkv.mul_(2)  # written on the side stream just before the op
        expected_q, expected_k = head_norm(q, qw, 1e-6, False), head_norm(k, kw, 1e-6, False)
        qk_rms_norm(q, k, qw, kw)
    stream.synchronize()
    torch.testing.assert_close(q.double(), expected_q, rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(k.double(), expected_k, rtol=1e-2, atol=1e-6)


def test_cuda_graph_replays_with_new_data() -> None:
    qkv = qkv_of(16, 32, 8, 128, torch.bfloat16)
    q, k = qkv[:, :4096], qkv[:, 4096:5120]
    qw, kw = weights(128, torch.bfloat16)
    qk_rms_norm(q, k, qw, kw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qk_rms_norm(q, k, qw, kw)
    for _ in range(2):
        qkv.copy_(torch.randn_like(qkv))
        expected_q, expected_k = head_norm(q, qw, 1e-6, False), head_norm(k, kw, 1e-6, False)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(q.double(), expected_q, rtol=1e-2, atol=1e-6)
        torch.testing.assert_close(k.double(), expected_k, rtol=1e-2, atol=1e-6)


def test_torch_compile_fullgraph_matches_eager() -> None:
    def attention_input(qkv: torch.Tensor, qw: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
        qkv = qkv * 2
        q, k, v = qkv.split([1024, 256, 256], dim=-1)
        qk_rms_norm(q, k, qw, kw, 1e-6, gemma=True)
        return torch.cat([q, k, v + 1], dim=-1)

    compiled = torch.compile(attention_input, fullgraph=True)
    qw, kw = weights(128, torch.bfloat16)
    for tokens in (7, 128):
        qkv = qkv_of(tokens, 8, 2, 128, torch.bfloat16)
        assert torch.equal(compiled(qkv, qw, kw), attention_input(qkv, qw, kw))


def test_opcheck() -> None:
    q = torch.randn(7, 512, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(7, 128, device="cuda", dtype=torch.bfloat16)
    qw, kw = weights(128, torch.bfloat16)
    torch.library.opcheck(qk_rms_norm.op.torch_op.default, (q, k, qw, kw, 1e-6), {"gemma": True})


def test_refusals_launch_nothing() -> None:
    qkv = qkv_of(8, 4, 2, 64, torch.bfloat16)
    q, k = qkv[:, :256], qkv[:, 256:384]
    qw, kw = weights(64, torch.bfloat16)
    before = qkv.clone()
    cases = [
        (lambda: qk_rms_norm(q, k, qw.float(), kw), cujit.TensorMatchError, "q_weight"),
        (lambda: qk_rms_norm(q, k, qw, kw[:32]), cujit.TensorMatchError, "k_weight"),
        (lambda: qk_rms_norm(q, k[:7], qw, kw), cujit.TensorMatchError, "'k'"),
        (lambda: qk_rms_norm(q, k, qw[:48], kw[:48]), cujit.CujitError, "rows of whole heads"),
        (lambda: qk_rms_norm(q, q, qw, kw), cujit.CujitError, "different tensors"),
        (lambda: qk_rms_norm(q[:, ::2], k[:, ::2], qw[:32], kw[:32]), cujit.TensorMatchError, "stride"),
        (lambda: qk_rms_norm(q.cpu(), k.cpu(), qw.cpu(), kw.cpu()), cujit.CujitError, "cuda"),
        (lambda: qk_rms_norm(q.double(), k.double(), qw.double(), kw.double()), cujit.TensorMatchError, "dtype"),
        (lambda: qk_rms_norm(torch.empty(2, 4096, device="cuda", dtype=torch.bfloat16),
                             torch.empty(2, 2048, device="cuda", dtype=torch.bfloat16),
                             torch.empty(2048, device="cuda", dtype=torch.bfloat16),
                             torch.empty(2048, device="cuda", dtype=torch.bfloat16)),
         cujit.CujitError, "head_dim up to 2048 bytes"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), str(info.value)
    torch.cuda.synchronize()
    assert torch.equal(qkv, before)
