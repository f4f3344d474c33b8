"""Ops end to end on the host: their real Python path (checks, plan, allocation, packing) against the stand-in
driver of tests/host_backend.py, whose launches run the kernels on the CPU (tests/emulated/cuda_host.h). No GPU.

The ops must be declared while that driver is the backend, so the checks run in a fresh process. Each compares the
op's outputs with the torch reference of cujit/tools/bench/references.py on CPU tensors: FP8 bytes and scales bit
for bit, floats within the GPU tests' tolerances.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host_backend import available

SCRIPT = r'''
import sys
from pathlib import Path

import torch

from cujit._runtime import driver
from cujit.tools.bench import references as refs
from tests.host_backend import HostBackend, bind_host
from tests.stub_cuda import FakeCudaTensor

torch.manual_seed(0)
bf16, f32, i64 = torch.bfloat16, torch.float32, torch.int64
host = HostBackend(sources=["fp8_quant.cuh", "fused_quant.cuh", "rotary_kv_cache.cuh", "qk_norm.cuh",
                            "qk_norm_rotary.cuh", "topk_softmax.cuh", "kv_cache.cuh"],
                   build_dir=Path(sys.argv[1]))
checked = []

with driver.use(host):
    from cujit.per_token_group_quant_fp8 import per_token_group_quant_fp8
    from cujit.per_token_quant_fp8 import per_token_quant_fp8
    from cujit.per_tensor_quant_fp8 import per_tensor_quant_fp8
    from cujit.rotary_embedding import rotary_embedding
    from cujit.qk_rms_norm import qk_rms_norm
    from cujit.topk_softmax import topk_softmax
    from cujit.fused_add_rms_norm_quant_fp8 import fused_add_rms_norm_quant_fp8
    from cujit.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
    from cujit.rotary_embedding_with_kv_cache import rotary_embedding_with_kv_cache
    from cujit.qk_norm_rotary import qk_norm_rotary
    from cujit.store_kv_cache import store_kv_cache

    for fn in (per_token_group_quant_fp8, per_token_quant_fp8, per_tensor_quant_fp8, rotary_embedding, qk_rms_norm,
               topk_softmax, fused_add_rms_norm_quant_fp8, silu_and_mul_quant_fp8, rotary_embedding_with_kv_cache,
               qk_norm_rotary, store_kv_cache):
        bind_host(fn, host)

    def fake(t):
        return FakeCudaTensor(t, 0, host)

    def same_fp8(got, want, what):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), what
        checked.append(what)

    def close(got, want, rtol, atol, what):
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol, msg=what)
        checked.append(what)

    # FP8 per group of 128: aligned rows, and rows one element into their buffer (the row path).
    for hidden, offset in ((1024, 0), (1024, 1), (4096, 0)):
        base = torch.randn(5, hidden + offset, dtype=bf16) * 3
        x = base[:, offset:]
        q, s = per_token_group_quant_fp8(fake(x), 128)
        want_q, want_s = refs.per_token_group_quant_fp8(x, 128)
        same_fp8(q.t, want_q, f"per_token_group_quant_fp8 {hidden} +{offset} q")
        assert torch.equal(s.t, want_s), "per_token_group_quant_fp8 scales"
    # The row path at other phases: fp32 one element in (4 values a run), and fp16 rows 259 values apart (each row
    # at another offset from a 16-byte boundary), groups of 64.
    for dtype, hidden, width, offset, group in ((torch.float32, 512, 513, 1, 128), (torch.float16, 256, 259, 0, 64)):
        base = torch.randn(6, width, dtype=dtype) * 3
        x = base[:, offset:offset + hidden]
        q, s = per_token_group_quant_fp8(fake(x), group)
        want_q, want_s = refs.per_token_group_quant_fp8(x, group)
        same_fp8(q.t, want_q, f"per_token_group_quant_fp8 {dtype} {hidden} in rows of {width} +{offset}")
        assert torch.equal(s.t, want_s), f"per_token_group_quant_fp8 {dtype} scales"
    # Column-major scales, fp16 input, groups of 64.
    x = torch.randn(7, 512, dtype=torch.float16) * 5
    q, s = per_token_group_quant_fp8(fake(x), 64, column_major_scales=True)
    want_q, want_s = refs.per_token_group_quant_fp8(x, 64)
    same_fp8(q.t, want_q, "per_token_group_quant_fp8 fp16 / 64, column-major")
    assert s.t.stride() == (1, 7) and torch.equal(s.t, want_s), "per_token_group_quant_fp8 column-major scales"
    # FP8 per token, odd and aligned rows.
    for hidden in (4096, 4097, 2881):
        x = torch.randn(6, hidden, dtype=bf16)
        q, s = per_token_quant_fp8(fake(x))
        want_q, want_s = refs.per_token_quant_fp8(x)
        same_fp8(q.t, want_q, f"per_token_quant_fp8 {hidden} q")
        assert torch.equal(s.t.reshape(-1), want_s.reshape(-1)), f"per_token_quant_fp8 {hidden} scales"
    # FP8 per tensor, dynamic: partial maxima then the quantization (two kernels), one and many tokens.
    for tokens in (1, 40):
        x = torch.randn(tokens, 4096, dtype=bf16)
        q, s = per_tensor_quant_fp8(fake(x))
        want_q, want_s = refs.per_tensor_quant_fp8(x)
        same_fp8(q.t, want_q, f"per_tensor_quant_fp8 {tokens} q")
        assert torch.equal(s.t.reshape(-1), want_s.reshape(-1)), "per_tensor_quant_fp8 scale"
    # Rotary, the vector path (aligned heads of 128) and the staged form (heads of 241, and views one element in).
    for heads, head_size, offset, tokens in ((8, 128, 0, 3), (4, 241, 0, 2), (8, 128, 1, 1300)):
        rotary = head_size - head_size % 2
        qb = torch.randn(tokens, heads * head_size + offset, dtype=bf16)
        kb = torch.randn(tokens, 2 * head_size + offset, dtype=bf16)
        cache = torch.randn(64, rotary, dtype=f32)
        positions = torch.randint(0, 64, (tokens,), dtype=i64)
        q, k = qb[:, offset:], kb[:, offset:]
        want_q, want_k = q.clone(), k.clone()
        rotary_embedding(fake(positions), fake(q), fake(k), fake(cache), head_size=head_size)
        refs.rotary_embedding(positions, want_q, want_k, cache, head_size, True)
        close(q, want_q, 1e-2, 1e-2, f"rotary {heads} x {head_size} +{offset} q")
        close(k, want_k, 1e-2, 1e-2, f"rotary {heads} x {head_size} +{offset} k")
    # Per-head RMSNorm of q and k in place, 2-D views of one qkv tensor (3-D views take the generic path).
    qkv = torch.randn(4, (16 + 2 * 4) * 128, dtype=bf16)
    q, k = qkv[:, : 16 * 128], qkv[:, 16 * 128: 20 * 128]  # rows of 16 and 4 heads of 128
    qw, kw = torch.randn(128, dtype=bf16), torch.randn(128, dtype=bf16)
    want_q, want_k = refs.rms_norm(q.reshape(-1, 128), qw, 1e-6), refs.rms_norm(k.reshape(-1, 128), kw, 1e-6)
    qk_rms_norm(fake(q), fake(k), fake(qw), fake(kw), 1e-6)
    close(q.reshape(-1, 128), want_q, 1e-2, 1e-2, "qk_rms_norm q")
    close(k.reshape(-1, 128), want_k, 1e-2, 1e-2, "qk_rms_norm k")
    # The MoE router: 256 experts, top 8, renormalized.
    logits = torch.randn(9, 256, dtype=bf16)
    w, ids = topk_softmax(fake(logits), 8, True)
    p = torch.softmax(logits.float(), -1)
    want_w, want_ids = p.topk(8, -1)
    close(w.t, want_w / want_w.sum(-1, keepdim=True), 1e-5, 1e-6, "topk_softmax weights")
    # bf16 logits tie often, and torch.topk orders ties as it likes: the ids must be distinct and pick the same
    # probabilities, and among equal ones the lower expert comes first (cujit's rule).
    got = ids.t.long()
    close(p.gather(-1, got), want_w, 1e-5, 1e-7, "topk_softmax ids' probabilities")
    assert all(len(set(row.tolist())) == 8 for row in got), "topk_softmax ids repeat"
    picked = p.gather(-1, got)
    tied = picked[:, 1:] == picked[:, :-1]
    assert bool((got[:, 1:] > got[:, :-1])[tied].all()), "topk_softmax: ties not lower expert first"

    # Residual add + RMSNorm + FP8, per token and per group of 128, aligned and odd rows: the residual bit for bit
    # against the unfused add, q against quantizing the unfused norm's output (one unit of y's last place may
    # differ: the sum of squares is added in another order), so at most a few values one FP8 step apart.
    for hidden, group in ((4096, 0), (4096, 128), (4097, 0)):
        x = torch.randn(3, hidden, dtype=bf16)
        residual = torch.randn(3, hidden, dtype=bf16)
        weight = torch.randn(hidden, dtype=bf16)
        want_r, want_y = residual.clone(), x.clone()
        refs.fused_add_rms_norm(want_y, want_r, weight, 1e-6)
        q, s = fused_add_rms_norm_quant_fp8(fake(x), fake(residual), fake(weight), 1e-6, group_size=group)
        assert torch.equal(residual, want_r), f"fused quant {hidden}/{group} residual"
        want_q, _ = refs.per_token_quant_fp8(want_y) if group == 0 else refs.per_token_group_quant_fp8(want_y, group)
        steps = (q.t.float() - want_q.float()).abs() > 1e-6 * want_q.float().abs() + 1e-30
        assert steps.float().mean() < 0.01, f"fused quant {hidden}/{group}: {int(steps.sum())} values differ"
        checked.append(f"fused_add_rms_norm_quant_fp8 {hidden}/{group}")
    # SiLU-and-mul + FP8 per group of 128: against quantizing silu_and_mul's output.
    x = torch.randn(5, 2 * 1024, dtype=bf16)
    q, s = silu_and_mul_quant_fp8(fake(x), 128)
    want_q, want_s = refs.per_token_group_quant_fp8(refs.silu_and_mul(x), 128)
    steps = (q.t.float() - want_q.float()).abs() > 1e-6 * want_q.float().abs() + 1e-30
    assert steps.float().mean() < 0.01, f"silu_and_mul_quant_fp8: {int(steps.sum())} values differ"
    checked.append("silu_and_mul_quant_fp8")
    # Rotary, gpt-j style, fp16 with an fp16 cache: the vector path and the staged form (heads of 66 one element in).
    for head_size, offset in ((128, 0), (66, 1)):
        qb = torch.randn(3, 4 * head_size + offset, dtype=torch.float16)
        kb = torch.randn(3, 2 * head_size + offset, dtype=torch.float16)
        cache = torch.randn(16, head_size, dtype=torch.float16)
        positions = torch.randint(0, 16, (3,), dtype=i64)
        q, k = qb[:, offset:], kb[:, offset:]
        want_q, want_k = q.clone(), k.clone()
        rotary_embedding(fake(positions), fake(q), fake(k), fake(cache), is_neox=False, head_size=head_size)
        refs.rotary_embedding(positions, want_q, want_k, cache, head_size, False)
        close(q, want_q, 2e-3, 2e-3, f"rotary gpt-j {head_size} +{offset} q")
        close(k, want_k, 2e-3, 2e-3, f"rotary gpt-j {head_size} +{offset} k")
    # The KV store alone: a few tokens (a block a token) and more than ONE_TOKEN_BLOCKS (several tokens a block),
    # rows of whole vectors and odd rows one element into their buffer (rows.cuh), padding slots, an fp8 cache.
    for tokens, heads, head_size, offset in ((7, 2, 64, 0), (600, 2, 64, 0), (9, 3, 33, 1), (530, 1, 33, 1)):
        row = heads * head_size
        kb, vb = torch.randn(tokens, row + offset, dtype=bf16), torch.randn(tokens, row + offset, dtype=bf16)
        k, v = kb[:, offset:].view(tokens, heads, head_size), vb[:, offset:].view(tokens, heads, head_size)
        slots = torch.randperm(2 * tokens)[:tokens]
        slots[::5] = -1
        keep = slots >= 0
        for cache_dtype in (bf16, torch.float8_e4m3fn):
            kc = torch.zeros(2 * tokens, heads, head_size, dtype=cache_dtype)
            vc = torch.zeros(2 * tokens, heads, head_size, dtype=cache_dtype)
            want_kc, want_vc = kc.clone(), vc.clone()
            what = f"store_kv_cache {tokens} x {heads} x {head_size} +{offset} {cache_dtype}"
            if cache_dtype == bf16:
                refs.store_kv_cache(k[keep], v[keep], want_kc, want_vc, slots[keep])
                store_kv_cache(fake(k), fake(v), fake(kc), fake(vc), fake(slots))
                assert torch.equal(kc, want_kc) and torch.equal(vc, want_vc), what
                checked.append(what)
            else:
                scales = torch.tensor([0.5]), torch.tensor([2.0])
                refs.store_kv_cache(k[keep], v[keep], want_kc, want_vc, slots[keep], *scales)
                store_kv_cache(fake(k), fake(v), fake(kc), fake(vc), fake(slots), k_scale=fake(scales[0]),
                               v_scale=fake(scales[1]))
                same_fp8(kc, want_kc, what + " k")
                same_fp8(vc, want_vc, what + " v")
    # Rotary fused with the KV store: 8 + 2 + 2 heads of 64 of one qkv tensor, a cache in k's dtype, one padding slot.
    qkv = torch.randn(5, 12 * 64, dtype=bf16)
    q, k, v = qkv[:, :512].view(5, 8, 64), qkv[:, 512:640].view(5, 2, 64), qkv[:, 640:].view(5, 2, 64)
    cache = torch.randn(32, 64, dtype=f32)
    positions = torch.randint(0, 32, (5,), dtype=i64)
    kc, vc = torch.zeros(16, 2, 64, dtype=bf16), torch.zeros(16, 2, 64, dtype=bf16)
    slots = torch.tensor([3, 0, -1, 9, 15], dtype=i64)
    want_q, want_k, want_kc, want_vc = q.clone(), k.clone(), kc.clone(), vc.clone()
    keep = slots >= 0
    refs.rotary_embedding(positions, want_q.view(5, -1), want_k.view(5, -1), cache, 64, True)
    refs.store_kv_cache(want_k[keep], v[keep], want_kc, want_vc, slots[keep])
    rotary_embedding_with_kv_cache(fake(positions), fake(q), fake(k), fake(v), fake(cache), fake(kc), fake(vc),
                                   fake(slots))
    close(q, want_q, 1e-2, 1e-2, "rotary + kv q")
    assert torch.equal(kc, want_kc) and torch.equal(vc, want_vc), "rotary + kv caches"
    # The same from q, k and v one element into their rows: no vector width fits, the element-wise path.
    qkv_off = torch.randn(5, 12 * 64 + 1, dtype=bf16)
    q, k, v = (qkv_off[:, 1 + a * 64:1 + b * 64].view(5, b - a, 64) for a, b in ((0, 8), (8, 10), (10, 12)))
    kc, vc = torch.zeros(16, 2, 64, dtype=bf16), torch.zeros(16, 2, 64, dtype=bf16)
    want_q, want_k, want_kc, want_vc = q.clone(), k.clone(), kc.clone(), vc.clone()
    refs.rotary_embedding(positions, want_q.reshape(5, -1), want_k.reshape(5, -1), cache, 64, True)
    refs.store_kv_cache(want_k[keep], v[keep], want_kc, want_vc, slots[keep])
    k_before = k.clone()
    rotary_embedding_with_kv_cache(fake(positions), fake(q), fake(k), fake(v), fake(cache), fake(kc), fake(vc),
                                   fake(slots))
    close(q, want_q, 1e-2, 1e-2, "rotary + kv q, one element in")
    assert torch.equal(kc, want_kc) and torch.equal(vc, want_vc), "rotary + kv caches, one element in"
    assert torch.equal(k, k_before), "rotary + kv leaves k as it was"
    # The same into an fp8 cache with per-tensor scales: the rotated k rounded to bf16, then divided and saturated.
    q, k, v = qkv[:, :512].view(5, 8, 64), qkv[:, 512:640].view(5, 2, 64), qkv[:, 640:].view(5, 2, 64)
    k_scale, v_scale = torch.tensor([0.5]), torch.tensor([2.0])
    kc8 = torch.zeros(16, 2, 64, dtype=torch.float8_e4m3fn)
    vc8 = torch.zeros(16, 2, 64, dtype=torch.float8_e4m3fn)
    want_q, want_k = q.clone(), k.clone()
    want_kc8, want_vc8 = kc8.clone(), vc8.clone()
    refs.rotary_embedding(positions, want_q.view(5, -1), want_k.view(5, -1), cache, 64, True)
    refs.store_kv_cache(want_k[keep], v[keep], want_kc8, want_vc8, slots[keep], k_scale, v_scale)
    rotary_embedding_with_kv_cache(fake(positions), fake(q), fake(k), fake(v), fake(cache), fake(kc8), fake(vc8),
                                   fake(slots), k_scale=fake(k_scale), v_scale=fake(v_scale))
    same_fp8(kc8, want_kc8, "rotary + kv fp8 k cache")
    same_fp8(vc8, want_vc8, "rotary + kv fp8 v cache")
    # Per-head RMSNorm fused with rotary, in place on 2-D views of one qkv tensor.
    qkv = torch.randn(4, (16 + 2 * 4) * 128, dtype=bf16)
    q, k = qkv[:, : 16 * 128], qkv[:, 16 * 128: 20 * 128]
    qw, kw = torch.randn(128, dtype=bf16), torch.randn(128, dtype=bf16)
    cache = torch.randn(32, 128, dtype=f32)
    positions = torch.randint(0, 32, (4,), dtype=i64)
    want_q = refs.rms_norm(q.reshape(-1, 128), qw, 1e-6).view(4, -1)
    want_k = refs.rms_norm(k.reshape(-1, 128), kw, 1e-6).view(4, -1)
    refs.rotary_embedding(positions, want_q, want_k, cache, 128, True)
    qk_norm_rotary(fake(positions), fake(q), fake(k), fake(qw), fake(kw), fake(cache), head_size=128)
    close(q, want_q, 2e-2, 2e-2, "qk_norm_rotary q")
    close(k, want_k, 2e-2, 2e-2, "qk_norm_rotary k")

print("CHECKED", len(checked), "launches", len(host.launches))
print("ALL OK")
'''


def test_ops_on_the_host(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    why = available()
    if why:
        pytest.skip(why)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "CUJIT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=root,
                         env=env, timeout=1200, check=False)
    assert out.returncode == 0 and "ALL OK" in out.stdout, out.stdout[-3000:] + out.stderr[-4000:]
