"""The MoE router, per-head norm and fused quantization ops without a GPU.

Every precompiled instance compiles (also covered for every shipped op by tests/test_compile_all.py); the plans
choose only precompiled instances; the generated launch code, run against the stub driver of tests/stub_cuda.py,
launches what the kernels expect; bad inputs are refused before anything is launched.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

import cujit
from cujit._runtime import ops as ops_module
from cujit.fused_add_rms_norm_quant_fp8 import fused_add_rms_norm_quant_fp8, held_vecs, split_vecs, threads_for
from cujit.qk_rms_norm import CONFIGS as QK_CONFIGS
from cujit.qk_rms_norm import MANY_HEADS, MANY_HEADS_FROM, heads_per_group, qk_norm_config, qk_rms_norm
from cujit.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
from cujit.topk_softmax import MAX_EXPERTS, topk_config, topk_softmax
from tests.stub_cuda import StubBackend, bind_fakes, fake, last_launch

torch = pytest.importorskip("torch")

OPS = {"topk_softmax": topk_softmax, "qk_rms_norm": qk_rms_norm, "silu_and_mul_quant_fp8": silu_and_mul_quant_fp8,
       "fused_add_rms_norm_quant_fp8": fused_add_rms_norm_quant_fp8}


def _fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(cujit.DType.of(v).name if k == "dtype" else v) for k, v in fields.items()}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_precompiled_instance_compiles(name: str) -> None:
    for module in OPS[name].op.precompile_modules():
        assert module.compile("sm_90").cubin[:4] == b"\x7fELF"


@pytest.fixture
def ops(stub: StubBackend) -> SimpleNamespace:
    declared = SimpleNamespace(**{name: fn.op.variant("cujit_stub_serving") for name, fn in OPS.items()})
    for fn in vars(declared).values():
        bind_fakes(fn.op.env, stub)
    return declared


# ------------------------------------------------------------------------------------------------ topk_softmax
def test_topk_plan_holds_the_row_and_is_precompiled() -> None:
    instances = [_fields(f) for f in topk_softmax.op.instances()]
    for experts in range(1, MAX_EXPERTS + 1):
        c = topk_config(experts)
        assert c.row_lanes * c.per_lane >= experts and c.row_lanes >= 8 and c.block % c.row_lanes == 0
        assert c.per_lane == 1 or c.row_lanes * c.per_lane < 2 * experts  # the smallest that holds the row
        for dtype in ("float32", "float16", "bfloat16"):
            assert _fields({"dtype": dtype, **c._asdict()}) in instances, (experts, c)


def test_topk_launch_arguments_and_refusals(stub: StubBackend, ops: SimpleNamespace) -> None:
    fn = ops.topk_softmax
    for experts, tokens in ((8, 1), (60, 37), (256, 4097)):
        wide = torch.randn(tokens, experts + 3, dtype=torch.float16)
        x = fake(stub, wide[:, :experts])
        weights, ids = fn(x, min(8, experts), True)
        assert tuple(weights.shape) == (tokens, min(8, experts)) and weights.dtype == torch.float32
        assert tuple(ids.shape) == (tokens, min(8, experts)) and ids.dtype == torch.int32
        key, values = last_launch(stub, fn)
        c = topk_config(experts)
        assert key[1:] == (c.block, c.row_lanes, c.per_lane)
        assert values == [weights.data_ptr(), ids.data_ptr(), x.data_ptr(), tokens, experts, experts + 3,
                          min(8, experts), True]
        assert stub.launches[-1].grid == (math.ceil(tokens / c.rows_per_block), 1, 1)
        assert stub.launches[-1].block == (c.block, 1, 1) and stub.launches[-1].pdl
    before = len(stub.launches)
    x = fake(stub, torch.randn(4, 64, dtype=torch.float16))
    for call, error, words in [
        (lambda: fn(x, 0), cujit.CujitError, "topk: expected 1 to min(experts, 8)"),
        (lambda: fn(x, 9), cujit.CujitError, "topk: expected 1 to min(experts, 8)"),
        (lambda: fn(fake(stub, torch.randn(4, 3)), 4), cujit.CujitError, "topk"),
        (lambda: fn(fake(stub, torch.randn(4, 600)), 4), cujit.CujitError, "1 to 512 experts"),
        (lambda: fn(fake(stub, torch.randn(4, 64, dtype=torch.float64)), 4), cujit.TensorMatchError, "dtype"),
        (lambda: fn(x, 4, weights=fake(stub, torch.empty(4, 3))), cujit.TensorMatchError, "'weights'"),
        (lambda: fn(x, 4, ids=fake(stub, torch.empty(4, 4, dtype=torch.int64))), cujit.TensorMatchError, "'ids'"),
        (lambda: fn(x, "2"), cujit.CujitError, "topk"),
    ]:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), str(info.value)
    assert len(stub.launches) == before
    weights, ids = fn(fake(stub, torch.randn(0, 64, dtype=torch.float16)), 2)
    assert tuple(weights.shape) == (0, 2) and len(stub.launches) == before


# ------------------------------------------------------------------------------------------------ qk_rms_norm
def test_qk_norm_plan_holds_the_head_and_is_precompiled() -> None:
    instances = [_fields(f) for f in qk_rms_norm.op.instances()]
    for dtype, itemsize in (("float32", 4), ("float16", 2), ("bfloat16", 2)):
        lanes = 16 // itemsize
        for d in range(1, 2048 // itemsize + 1):
            c = qk_norm_config(d, itemsize)
            assert c is not None and c.row_threads * c.vecs * lanes >= d
            assert all(rt * v * lanes < d for rt, v in QK_CONFIGS if rt * v < c.row_threads * c.vecs)
            for gemma in (False, True):
                for vector in (False, True):
                    for heads in (1, MANY_HEADS):
                        fields = {"dtype": dtype, "gemma": gemma, "vector": vector, **c._asdict(), "heads": heads}
                        assert _fields(fields) in instances
        assert qk_norm_config(2048 // itemsize + 1, itemsize) is None
    assert heads_per_group(MANY_HEADS_FROM - 1) == 1 and heads_per_group(MANY_HEADS_FROM) == MANY_HEADS


def test_qk_norm_launch_arguments_and_refusals(stub: StubBackend, ops: SimpleNamespace) -> None:
    fn = ops.qk_rms_norm
    f16 = torch.float16
    cases = [
        # (qkv columns, q offset, head_dim, q heads, kv heads, weight offset, vector)
        (128 * 12, 0, 128, 8, 2, 0, True),
        (128 * 12 + 1, 1, 128, 8, 2, 0, False),  # q and k start one element in
        (128 * 12, 0, 128, 8, 2, 1, False),  # the weights start one element in
        (100 * 6, 0, 100, 4, 1, 0, False),  # head_dim not a whole number of vectors
        (64 * 3, 0, 64, 1, 1, 0, True),
    ]
    for columns, offset, d, qh, kh, w_offset, vector in cases:
        qkv = torch.randn(37, columns, dtype=f16)
        q, k = fake(stub, qkv[:, offset:offset + qh * d]), fake(stub, qkv[:, offset + qh * d:offset + (qh + kh) * d])
        w = torch.randn(2, d + w_offset, dtype=f16)
        qw, kw = fake(stub, w[0, w_offset:]), fake(stub, w[1, w_offset:])
        assert fn(q, k, qw, kw, 1e-5, gemma=True) is None
        key, values = last_launch(stub, fn)
        c = qk_norm_config(d, 2)
        assert c is not None
        assert key[1:] == (True, vector, c.block, c.row_threads, c.vecs, 1), (columns, offset, d, w_offset)
        assert values[:-1] == [q.data_ptr(), k.data_ptr(), qw.data_ptr(), kw.data_ptr(), 37 * (qh + kh), qh, qh + kh,
                               columns, columns, d]
        assert stub.launches[-1].grid == (math.ceil(37 * (qh + kh) / c.heads_per_block), 1, 1)
        assert stub.launches[-1].pdl
    # Many heads in all: MANY_HEADS per lane group, a quarter of the blocks.
    tokens = MANY_HEADS_FROM // 10 + 1
    qkv = torch.randn(tokens, 128 * 12, dtype=f16)
    q, k = fake(stub, qkv[:, :1024]), fake(stub, qkv[:, 1024:1280])
    w = fake(stub, torch.randn(128, dtype=f16))
    fn(q, k, w, w)
    key, _ = last_launch(stub, fn)
    c = qk_norm_config(128, 2)
    assert c is not None and key[-1] == MANY_HEADS
    assert stub.launches[-1].grid == (math.ceil(tokens * 10 / (c.heads_per_block * MANY_HEADS)), 1, 1)
    before = len(stub.launches)
    qkv = torch.randn(4, 64 * 6, dtype=f16)
    q, k = fake(stub, qkv[:, :256]), fake(stub, qkv[:, 256:320])
    w = fake(stub, torch.randn(64, dtype=f16))
    for call, error, words in [
        (lambda: fn(q, q, w, w), cujit.CujitError, "q and k must be different tensors"),
        (lambda: fn(q, k, fake(stub, torch.randn(48, dtype=f16)), fake(stub, torch.randn(48, dtype=f16))),
         cujit.CujitError, "rows of whole heads"),
        (lambda: fn(q, k, w, fake(stub, torch.randn(32, dtype=f16))), cujit.TensorMatchError, "'k_weight'"),
        (lambda: fn(q, k, fake(stub, torch.randn(64)), w), cujit.TensorMatchError, "'q_weight': dtype"),
        (lambda: fn(q, fake(stub, torch.empty(400, dtype=f16).as_strided((4, 64), (32, 1))), w, w),
         cujit.CujitError, "rows overlap"),
    ]:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), str(info.value)
    assert len(stub.launches) == before


def test_cpu_tensors_are_refused() -> None:
    with pytest.raises(cujit.TensorMatchError, match="'gating_output': device: expected cuda, got cpu:0"):
        topk_softmax(torch.randn(4, 64), 2)
    x, w = torch.randn(4, 256, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    with pytest.raises(cujit.TensorMatchError, match="'q': device: expected cuda, got cpu:0"):
        qk_rms_norm(x, x[:, :64], w, w)
    with pytest.raises(cujit.TensorMatchError, match="'x': device: expected cuda, got cpu:0"):
        silu_and_mul_quant_fp8(x)
    with pytest.raises(cujit.TensorMatchError, match="'x': device: expected cuda, got cpu:0"):
        fused_add_rms_norm_quant_fp8(x, x.clone(), x[0])


def test_fake_tensors_give_output_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 64, dtype=torch.bfloat16, device="cuda")
        weights, ids = torch.ops.cujit.topk_softmax(x, 4, True)
        assert weights.shape == (5, 4) and weights.dtype == torch.float32 and ids.dtype == torch.int32
        w = torch.empty(16, dtype=torch.bfloat16, device="cuda")
        assert torch.ops.cujit.qk_rms_norm(x[:, :48], x[:, 48:], w, w, 1e-6) is None
        h = torch.empty(5, 1024, dtype=torch.bfloat16, device="cuda")
        q, scales = torch.ops.cujit.silu_and_mul_quant_fp8(h, 128, column_major_scales=True)
        assert q.shape == (5, 512) and q.dtype == torch.float8_e4m3fn
        assert scales.shape == (5, 4) and scales.stride() == (1, 5) and scales.dtype == torch.float32
        q, scales = silu_and_mul_quant_fp8(h, 64)
        assert scales.shape == (5, 8) and scales.stride() == (8, 1)
        q, scales = torch.ops.cujit.fused_add_rms_norm_quant_fp8(h, torch.empty_like(h), h[0], 1e-6)
        assert q.shape == (5, 1024) and q.dtype == torch.float8_e4m3fn and scales.shape == (5, 1)
        q, scales = fused_add_rms_norm_quant_fp8(h, torch.empty_like(h), h[0], group_size=128,
                                                 column_major_scales=True)
        assert scales.shape == (5, 8) and scales.stride() == (1, 5)


def test_add_norm_quant_threads_are_precompiled() -> None:
    instances = [_fields(f) for f in fused_add_rms_norm_quant_fp8.op.instances()]
    for dtype, lanes in (("bfloat16", 8), ("float32", 4)):
        for hidden in (1, 128, 1000, 1025, 2881, 4096, 4097, 4103, 4104, 7168, 8192, 16384, 24575, 32768, 1 << 20):
            threads = threads_for(hidden, lanes)
            for group in (0, 128):
                # The three-pass form serves every row; the register path the aligned rows it fits, and per token
                # the split one any other row it fits.
                held = held_vecs(hidden, lanes, threads, group) if hidden % lanes == 0 else 0
                for vecs in {0, held, -split_vecs(hidden, lanes, threads) if group == 0 else 0}:
                    fields = {"dtype": dtype, "group_size": group, "gemma": False, "threads": threads, "vecs": vecs}
                    assert _fields(fields) in instances, fields


def test_add_norm_quant_takes_the_register_path_only_where_it_applies(stub: StubBackend,
                                                                      ops: SimpleNamespace) -> None:
    fn = ops.fused_add_rms_norm_quant_fp8

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the fast path refused the call")

    fn.op.env["_slow"] = refused
    f16, fp8 = torch.float16, torch.float8_e4m3fn  # fp16 as bf16: 8 values a vector

    def vecs_of(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, group: int,
                out: torch.Tensor | None = None) -> int:
        T, H = x.shape
        out = torch.empty(T, H, dtype=fp8) if out is None else out
        # Both forms loaded, so that the launch shows which one the plan chose (the stub's generic path cannot
        # take FP8 tensors: the fast path must serve every call).
        lanes = 16 // x.element_size()
        for vecs in {0, held_vecs(H, lanes, threads_for(H, lanes), group),
                     -split_vecs(H, lanes, threads_for(H, lanes)) if group == 0 else 0}:
            fields = {"dtype": x.dtype, "group_size": group, "gemma": False, "threads": threads_for(H, lanes),
                      "vecs": vecs}
            fn.op._loaded(tuple(ops_module._normalise(fields[f]) for f in fn.op.fields), 0)
        scales = torch.empty(T, H // group if group else 1)
        fn(fake(stub, x), fake(stub, residual), fake(stub, weight), group_size=group, out=fake(stub, out),
           scales=fake(stub, scales))
        key, values = last_launch(stub, fn)
        assert values[:2] == [out.data_ptr(), scales.data_ptr()]
        assert stub.launches[-1].grid == (T, 1, 1) and stub.launches[-1].block == (threads_for(H, lanes), 1, 1)
        return int(key[-1])

    x, r, w = torch.randn(4, 4096, dtype=f16), torch.randn(4, 4096, dtype=f16), torch.randn(4096, dtype=f16)
    assert vecs_of(x, r, w, 128) == 1 and vecs_of(x, r, w, 0) == 1 and vecs_of(x, r, w, 16) == 1
    assert vecs_of(x.float(), r.float(), w.float(), 128) == 2  # fp32: 4 values a vector
    assert vecs_of(x, r, w, 512) == 0  # a group of 64 vectors spans two warps
    wide = torch.randn(4, 4104, dtype=f16)
    assert vecs_of(wide[:, 8:], r, w, 128) == 1  # rows 4104 apart, 16-byte aligned: still registers
    assert vecs_of(wide[:, 1:4097], r, w, 128) == 0  # x one element in
    assert vecs_of(x, torch.randn(4, 4100, dtype=f16)[:, :4096], w, 128) == 0  # residual rows 4100 apart
    assert vecs_of(x, r, torch.randn(4097, dtype=f16)[1:], 128) == 0  # weight one element in
    storage = torch.empty(4 * 4096 + 8, dtype=torch.uint8)
    assert vecs_of(x, r, w, 128, storage[8:].view(fp8).view(4, 4096)) == 0  # q 8 bytes past 16-byte alignment
    long = torch.randn(2, 40960, dtype=f16)
    assert vecs_of(long, long.clone(), torch.randn(40960, dtype=f16), 128) == 0  # beyond 1024 x 4 vectors
    odd = torch.randn(2, 4097, dtype=f16)
    assert vecs_of(odd, odd.clone(), torch.randn(4097, dtype=f16), 0) == -1  # per token: split at any alignment
    assert vecs_of(wide[:, 1:4097], r, w, 0) == -1  # x one element in, per token
    assert vecs_of(x, r, w, 0, storage[8:].view(fp8).view(4, 4096)) == -1  # q misaligned, per token
    assert vecs_of(long, long.clone(), torch.randn(40960, dtype=f16), 0) == 0  # beyond 1024 x 3 vectors
    odd_long = torch.randn(2, 24575, dtype=f16)
    assert vecs_of(odd_long, odd_long.clone(), torch.randn(24575, dtype=f16), 0) == -3


def test_add_norm_quant_split_path_bounds() -> None:
    # A block has a thread per whole vector of the row (about): 4097 bf16 values are 512 vectors and an edge.
    assert threads_for(4096) == threads_for(4097) == threads_for(4103) == 512 and threads_for(4104) == 1024
    assert threads_for(4099, 4) == 512 and threads_for(4100, 4) == 1024 and threads_for(1, 4) == 128
    assert split_vecs(1, 8, 128) == 1 and split_vecs(7, 8, 128) == 1  # all head and tail
    assert split_vecs(4097, 8, 1024) == 1 and split_vecs(4097, 4, 1024) == 1 and split_vecs(4100, 4, 1024) == 2
    assert split_vecs(24583, 8, 1024) == 3 and split_vecs(24584, 8, 1024) == 0
    assert split_vecs(12291, 4, 1024) == 3 and split_vecs(12292, 4, 1024) == 0


def test_add_norm_quant_register_path_bounds() -> None:
    assert held_vecs(4096, 8, threads_for(4096), 128) == 1
    assert held_vecs(32768, 8, 1024, 0) == 4 and held_vecs(32769, 8, 1024, 0) == 0
    assert held_vecs(16384, 4, 1024, 0) == 4 and held_vecs(16385, 4, 1024, 0) == 0
    assert held_vecs(4096, 8, 512, 16) == 1 and held_vecs(4096, 4, 512, 128) == 2
    assert held_vecs(4096, 8, 512, 512) == 0  # a group of 64 vectors spans two warps
    assert held_vecs(4096, 4, 512, 128) == 2 and held_vecs(4096, 4, 512, 256) == 0
