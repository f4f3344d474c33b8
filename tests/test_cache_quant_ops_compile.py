"""The rotary, KV-cache and FP8 ops without a GPU: every precompiled instance compiles for sm_80 and sm_90, the
launch plans are what the kernels expect, and inputs that need no GPU to judge are refused with clear messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cujit
from cujit.fp8_quant import (
    group_plan,
    per_tensor_plan,
    per_tensor_quant_fp8,
    per_tensor_row_plan,
    per_token_group_quant_fp8,
    per_token_plan,
    per_token_quant_fp8,
    split_chunks,
)
from cujit.rotary_embedding import STAGED_BYTES, rotary_embedding, rows_for, staged_form, staged_plan
from cujit.rotary_embedding import launch_plan as rotary_plan
from cujit.rotary_embedding_with_kv_cache import launch_plan as fused_plan
from cujit.rotary_embedding_with_kv_cache import rotary_embedding_with_kv_cache
from cujit.store_kv_cache import launch_plan as kv_plan
from cujit.store_kv_cache import store_kv_cache

OPS = [rotary_embedding, store_kv_cache, per_token_quant_fp8, per_tensor_quant_fp8, per_token_group_quant_fp8,
       rotary_embedding_with_kv_cache]
KERNELS = Path(cujit.__file__).parent / "kernels"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("fn", OPS, ids=lambda f: f.op.name)
def test_every_precompiled_instance_compiles(fn: object, arch: str) -> None:
    op = fn.op  # type: ignore[attr-defined]
    instances = op.instances()
    assert instances, f"{op.name} declares nothing to precompile"
    for fields in instances:
        compiled = op.module(**fields).compile(arch)
        assert compiled.cubin[:4] == b"\x7fELF"
        assert all(name.startswith("_Z") for name in compiled.lowered.values())


def test_every_op_is_a_torch_op_and_a_cujit_name() -> None:
    torch = pytest.importorskip("torch")
    for fn in OPS:
        name = fn.op.schema.name  # type: ignore[attr-defined]
        packet = fn.op.torch_op  # type: ignore[attr-defined]
        assert getattr(torch.ops.cujit, name) is packet
        # cujit.<name> is the op's module
        assert getattr(cujit, name) is sys.modules[f"cujit.{name}"]
        assert getattr(sys.modules[f"cujit.{name}"], name) is fn


def test_rotary_plan() -> None:
    # (vec, block_x, block_y, heads_per_block)
    assert rotary_plan(4097, 80, 128, 128, 2, True) == (8, 8, 16, 80)  # whole tokens per block, 5 passes of 16
    assert rotary_plan(16, 80, 128, 128, 2, True) == (8, 8, 16, 16)  # a row of heads per block
    assert rotary_plan(4097, 80, 128, 128, 2, False) == (8, 16, 16, 80)
    assert rotary_plan(7, 2, 64, 128, 4, True) == (4, 8, 2, 2)
    assert rotary_plan(5, 3, 1026, 1026, 4, True) == (1, 256, 1, 1)  # the kernel loops over the wider span
    assert rotary_plan(5, 3, 66, 66, 4, False) == (2, 33, 3, 3)
    assert [rows_for(heads, 8) for heads in (40, 50, 80, 96)] == [8, 8, 16, 32]  # fewest idle rows, then widest


def test_rotary_staged_form() -> None:
    # Chunks under 8 bytes, or pointers that do not allow them, take the staged form while a head fits 24 KB.
    assert staged_form(1, 2, 241, True) and staged_form(2, 2, 66, True) and staged_form(8, 2, 128, False)
    assert not staged_form(8, 2, 128, True) and not staged_form(4, 2, 72, True)  # 16- and 8-byte chunks
    assert not staged_form(1, 4, STAGED_BYTES // 4 + 1, False)  # a head past the shared memory: element-wise
    # (heads per block, shared bytes): whole tokens from 1024 tokens on, as many heads as fit 24 KB ...
    assert staged_plan(4097, 21, 241, 2) == (21, 21 * 241 * 2 + 48)
    assert staged_plan(4097, 80, 128, 4) == (40, 40 * 128 * 4 + 48)  # 40 KB of heads: two groups
    # ... and below it about 1024 blocks: 205 groups asked for at 5 tokens, one head a block.
    assert staged_plan(5, 40, 128, 2) == (1, 128 * 2 + 48)
    assert staged_plan(100, 40, 128, 2) == (4, 4 * 128 * 2 + 48)  # 11 groups asked for: 10 of 4 heads


def test_kv_plan() -> None:
    assert kv_plan(8 * 128, 2) == (8, 64)  # 128 chunks: 64 threads x 2 chunks of k and of v
    assert kv_plan(32 * 256, 2) == (8, 256)
    assert kv_plan(15, 2) == (1, 32)
    assert kv_plan(4 * 80, 4) == (4, 64)


def test_quant_plans() -> None:
    assert per_token_plan(4097, 4096, 2) == (128, 4)
    assert per_token_plan(4097, 4103, 2) == (128, 4)  # the row path: 512 whole vectors, 7 values besides
    assert per_token_plan(16, 4097, 2) == (512, 1)
    assert per_token_plan(4097, 7168, 2) == (256, 4)
    assert per_token_plan(16, 4096, 2) == (512, 1)  # few tokens: one vector per thread
    assert per_token_plan(4097, 65536, 2) == (1024, 4)  # longer rows re-read what the registers cannot hold
    assert per_token_plan(1, 100, 4) == (32, 1)
    assert group_plan(4097, 128, 2) == (128, 1, 8)  # 16 lanes per group, one group per thread at any count
    assert group_plan(1, 128, 2) == (128, 1, 8)
    assert group_plan(4097, 1024, 4) == (128, 1, 4)  # 256 chunks: 32 lanes x 8, one group per thread
    threads, vecs, blocks, partials = per_tensor_plan(4097 * 4096, 2, True)
    assert (threads, vecs, partials) == (256, 4, 256) and blocks == -(-4097 * 4096 // 8192)
    assert per_tensor_plan(4097 * 4096, 2, False) == (128, 1, -(-4097 * 4096 // 1024), 256)  # static: 128 x 1
    assert per_tensor_plan(0, 2, False) == (128, 1, 1, 1)  # one block still writes the scale
    # A dynamic scale over few values: one block that holds them all, no partial maxima.
    assert per_tensor_plan(0, 2, True) == (128, 1, 1, 0)
    assert per_tensor_plan(4096, 2, True) == (512, 1, 1, 0) and per_tensor_plan(8192, 2, True) == (1024, 1, 1, 0)
    assert per_tensor_plan(4096, 4, True) == (1024, 1, 1, 0) and per_tensor_plan(4097, 4, True) == (128, 1, 9, 1)
    assert per_tensor_plan(8193, 2, True) == (128, 1, 9, 1)
    assert per_tensor_plan(5, 4, False) == (128, 1, 1, 1)
    # The row path: a contiguous x is one row (its values // 8 + 2 chunks), a strided one hidden // 8 + 2 a row.
    assert split_chunks(33, 4000, 4000, 2) == 132000 // 8 + 2
    assert split_chunks(33, 4000, 4097, 2) == 33 * (4000 // 8 + 2)
    assert split_chunks(1, 4000, 9999, 4) == 4000 // 4 + 2 and split_chunks(0, 4000, 4097, 2) == 0
    assert per_tensor_row_plan(33, 4000, 4097, 2) == (128, 1, 130, 9)
    assert per_tensor_row_plan(4097, 4097, 4097, 2) == (256, 4, -(-(4097 * 4097 // 8 + 2) // 1024), 256)
    assert per_tensor_row_plan(0, 4096, 4096, 2) == (128, 1, 1, 1)  # one block still writes the scale


@pytest.mark.parametrize(("dtype", "neox", "head_size", "rotary_dim"),
                         [("bf16_t", "true", 128, 128), ("bf16_t", "false", 128, 128), ("fp32_t", "true", 64, 64),
                          ("fp16_t", "true", 256, 64), ("bf16_t", "false", 96, 32), ("fp32_t", "true", 1026, 1026),
                          ("bf16_t", "true", 80, 40)])
def test_fused_plan_matches_the_kernel_geometry(tmp_path: Path, dtype: str, neox: str, head_size: int,
                                                rotary_dim: int) -> None:
    itemsize = {"bf16_t": 2, "fp16_t": 2, "fp32_t": 4}[dtype]
    block_x, _, _ = fused_plan(4097, 48, rotary_dim, head_size, itemsize, neox == "true")
    probe = tmp_path / "geometry.cuh"
    probe.write_text(
        f'#include "{KERNELS / "rotary_kv_cache.cuh"}"\n'
        f"using G = rotary_kv_cache_detail::Geometry<{dtype}, {neox}, {head_size}, {rotary_dim}>;\n"
        f"static_assert(G::kChunks == {block_x} || (G::kChunks > 256 && {block_x} == 256), \"block_x\");\n"
        "__global__ void probe(int* p) { p[0] = G::kVec; }\n")
    cujit.load_jit("geometry_probe", cuda_files=[probe], cuda_wrappers=[("probe", "probe")]).compile("sm_90")


def _cpu(*shape: int, dtype: str = "bfloat16") -> object:
    torch = pytest.importorskip("torch")
    return torch.zeros(*shape, dtype=getattr(torch, dtype))


def test_cpu_tensors_are_refused_by_the_device_check() -> None:
    positions = _cpu(4, dtype="int64")
    with pytest.raises(cujit.TensorMatchError, match=r"'positions': device: expected cuda"):
        rotary_embedding(positions, _cpu(4, 256), _cpu(4, 128), _cpu(16, 128, dtype="float32"))
    with pytest.raises(cujit.TensorMatchError, match=r"'k': device: expected cuda"):
        store_kv_cache(_cpu(4, 2, 64), _cpu(4, 2, 64), _cpu(8, 2, 64), _cpu(8, 2, 64), positions)
    for fn in (per_token_quant_fp8, per_tensor_quant_fp8, per_token_group_quant_fp8):
        with pytest.raises(cujit.TensorMatchError, match=r"'x': device: expected cuda"):
            fn(_cpu(4, 256))
    with pytest.raises(cujit.TensorMatchError, match=r"'positions': device: expected cuda"):
        rotary_embedding_with_kv_cache(positions, _cpu(4, 4, 64), _cpu(4, 2, 64), _cpu(4, 2, 64),
                                       _cpu(16, 64, dtype="float32"), _cpu(8, 2, 64), _cpu(8, 2, 64), positions)


def test_scalars_of_the_wrong_type_are_refused() -> None:
    positions = _cpu(4, dtype="int64")
    with pytest.raises(TypeError, match="is_neox"):
        rotary_embedding(positions, _cpu(4, 256), _cpu(4, 128), _cpu(16, 128), is_neox=1)
    with pytest.raises(TypeError, match="group_size"):
        per_token_group_quant_fp8(_cpu(4, 256), "128")
    with pytest.raises(TypeError, match="column_major_scales"):
        per_token_group_quant_fp8(_cpu(4, 256), 128, column_major_scales=None)


def test_three_dimensional_views_must_have_contiguous_heads() -> None:
    q = _cpu(4, 8, 64).transpose(0, 1).contiguous().transpose(0, 1)  # type: ignore[attr-defined]
    with pytest.raises(cujit.TensorMatchError, match=r"q: expected a 3-D view whose heads are contiguous"):
        rotary_embedding(_cpu(4, dtype="int64"), q, _cpu(4, 2, 64), _cpu(16, 64))
    with pytest.raises(cujit.CujitError, match=r"head_size: expected one head size .* got \[32, 64\]"):
        rotary_embedding(_cpu(4, dtype="int64"), _cpu(4, 8, 64), _cpu(4, 2, 64), _cpu(16, 64), head_size=32)


# The launch path of each op, run on a CPU machine against the stub driver of tests/stub_cuda.py. The ops must be
# declared while the stub is the backend, so this runs in a fresh process. Each op's instantiation is loaded
# (compiled for sm_90) first, then called through its generated fast path only (its generic path is replaced by
# one that fails): the checks must accept the inputs, pick the expected instantiation, and pack the expected grid,
# block and kernel arguments.
STUB_SCRIPT = r'''
import torch
import cujit
from cujit._runtime import ops as ops_module
from tests.stub_cuda import FakeCudaTensor, bind_fakes, stub_backend

f16, f32, i64 = torch.float16, torch.float32, torch.int64

with stub_backend() as stub:
    from cujit.per_tensor_quant_fp8 import per_tensor_quant_fp8
    from cujit.per_token_group_quant_fp8 import per_token_group_quant_fp8
    from cujit.per_token_quant_fp8 import per_token_quant_fp8
    from cujit.rotary_embedding import rotary_embedding, rows_for
    from cujit.rotary_embedding_with_kv_cache import rotary_embedding_with_kv_cache
    from cujit.store_kv_cache import ONE_TOKEN_BLOCKS, store_kv_cache

    allocated = []

    def fake(t):
        return FakeCudaTensor(t, 0, stub)

    def empty(shape, dtype, device, strides=None):
        t = torch.empty(shape, dtype=dtype) if strides is None else torch.empty_strided(shape, strides, dtype=dtype)
        allocated.append(fake(t))
        return allocated[-1]

    def prepare(fn, fields):
        op = fn.op
        bind_fakes(op.env, stub)
        op.env["_torch_empty"] = lambda shape, dtype, device: empty(shape, dtype, device)
        op.env["_torch_empty_strided"] = lambda shape, strides, dtype, device: empty(shape, dtype, device, strides)

        def slow(*args, **kwargs):
            raise AssertionError(f"{op.name}: the fast path refused the call")

        op.env["_slow"] = slow
        key = tuple(ops_module._normalise(fields[f]) for f in op.fields)
        loaded = op._loaded(key, 0)
        return loaded if isinstance(loaded, tuple) else (loaded,)

    def launches(fn, kernels, *args, **kwargs):
        out = []
        for _ in range(2):  # the same packing on every call
            before = len(stub.launches)
            result = fn(*args, **kwargs)
            names = {k.function: k for k in kernels}
            got = [(l.grid, l.block, l.values(names[l.function].params)) for l in stub.launches[before:]]
            assert {l.function for l in stub.launches[before:]} <= set(names), stub.launches[before:]
            out.append(got)
        assert out[0][:1] and [g[:2] for g in out[0]] == [g[:2] for g in out[1]], out
        return out[1], result

    # rotary_embedding: fp16 rows of a fused qkv view, fp32 cache, 5 tokens, 8 + 2 heads of 64.
    kernels = prepare(rotary_embedding, dict(dtype="float16", cs_dtype="float32", pos_dtype="int64", is_neox=True,
                                             vec=8, staged=False))
    qkv = torch.randn(5, 12 * 64, dtype=f16)
    pos, q, k, cache = fake(torch.zeros(5, dtype=i64)), fake(qkv[:, :512]), fake(qkv[:, 512:640]), fake(
        torch.randn(100, 64))
    [(grid, block, values)], _ = launches(rotary_embedding.op.function, kernels, pos, q, k, cache, head_size=64)
    assert grid == (5, 1, 1) and block == (4, 10, 1), (grid, block)
    assert values == [pos.data_ptr(), q.data_ptr(), k.data_ptr(), cache.data_ptr(), 768, 768, 8, 2, 64, 64, 100,
                      10], values
    kernels = prepare(rotary_embedding, dict(dtype="float16", cs_dtype="float16", pos_dtype="int64", is_neox=False,
                                             vec=8, staged=False))
    [(grid, block, values)], _ = launches(rotary_embedding.op.function, kernels, pos, q, k,
                                          fake(torch.randn(100, 32, dtype=f16)), is_neox=False, head_size=64)
    assert grid == (5, 1, 1) and block == (4, 10, 1) and values[4:] == [768, 768, 8, 2, 64, 32, 100, 10], values
    # Views one element into their rows take the staged form: at 5 tokens a block of 256 per head.
    kernels = prepare(rotary_embedding, dict(dtype="float16", cs_dtype="float32", pos_dtype="int64", is_neox=True,
                                             vec=1, staged=True))
    qkv1 = torch.randn(5, 12 * 64 + 1, dtype=f16)
    q1, k1 = fake(qkv1[:, 1:513]), fake(qkv1[:, 513:641])
    [(grid, block, values)], _ = launches(rotary_embedding.op.function, kernels, pos, q1, k1, cache, head_size=64)
    assert grid == (5, 10, 1) and block == (256, 1, 1), (grid, block)
    assert values == [pos.data_ptr(), q1.data_ptr(), k1.data_ptr(), cache.data_ptr(), 769, 769, 8, 2, 64, 64, 100,
                      1], values
    # 2-D q and k without head_size: the fast path refuses, the generic path says why; nothing is launched.
    before = len(stub.launches)
    try:
        rotary_embedding.op.function(pos, q, k, cache)
    except AssertionError as exc:
        assert "the fast path refused" in str(exc), exc
    else:
        raise AssertionError("rotary_embedding without head_size took the fast path")
    try:
        rotary_embedding.op.call_slow(pos, q, k, cache)
    except cujit.CujitError as exc:
        assert "head_size: expected the head size for 2-D q and k" in str(exc), exc
    else:
        raise AssertionError("rotary_embedding without head_size was not refused")
    assert len(stub.launches) == before, stub.launches[before:]

    # store_kv_cache: k and v as views of one [tokens, 2, heads, size] tensor, paged fp16 caches.
    kernels = prepare(store_kv_cache, dict(dtype="float16", cache_dtype="float16", slot_dtype="int64", vec=8,
                                           group=32))
    kv = torch.randn(5, 2, 2, 64, dtype=f16)
    k, v = fake(kv[:, 0]), fake(kv[:, 1])
    kc, vc = fake(torch.empty(4, 16, 2, 64, dtype=f16)), fake(torch.empty(4, 16, 2, 64, dtype=f16))
    slots = fake(torch.arange(5))
    [(grid, block, values)], _ = launches(store_kv_cache, kernels, k, v, kc, vc, slots)
    assert grid == (5, 1, 1) and block == (32, 1, 1), (grid, block)  # few tokens: a block of one token each
    assert values == [k.data_ptr(), v.data_ptr(), kc.data_ptr(), vc.data_ptr(), slots.data_ptr(), 0, 0, 256, 256,
                      128, 64, 5], values
    # Past ONE_TOKEN_BLOCKS tokens, blocks of 256 threads: 8 tokens each.
    many = ONE_TOKEN_BLOCKS + 3
    kv_many = torch.randn(many, 2, 2, 64, dtype=f16)
    caches = [fake(torch.empty(many, 2, 64, dtype=f16)) for _ in range(2)]
    [(grid, block, values)], _ = launches(store_kv_cache, kernels, fake(kv_many[:, 0]), fake(kv_many[:, 1]),
                                          *caches, fake(torch.arange(many)))
    assert grid == (-(-many // 8), 1, 1) and block == (256, 1, 1), (grid, block)

    # per_token_quant_fp8: fp16 [3, 4096] with a scale bound; q and scales allocated.
    kernels = prepare(per_token_quant_fp8, dict(dtype="float16", threads=512, vecs=1, row_path=False))
    x, ub = fake(torch.randn(3, 4096, dtype=f16)), fake(torch.ones(1))
    [(grid, block, values)], (q, scales) = launches(per_token_quant_fp8, kernels, x, scale_ub=ub)
    assert grid == (3, 1, 1) and block == (512, 1, 1), (grid, block)
    assert tuple(q.shape) == (3, 4096) and q.dtype == torch.float8_e4m3fn and tuple(scales.shape) == (3, 1)
    assert values == [x.data_ptr(), q.data_ptr(), scales.data_ptr(), ub.data_ptr(), 4096, 4096], values
    # The row path (the kernel's kRows): rows one element past a 16-byte boundary, then an out that starts one
    # byte in; the same plan and grid.
    kernels = prepare(per_token_quant_fp8, dict(dtype="float16", threads=512, vecs=1, row_path=True))
    x = fake(torch.randn(3, 4097, dtype=f16)[:, 1:])
    [(grid, block, values)], (q, scales) = launches(per_token_quant_fp8, kernels, x)
    assert grid == (3, 1, 1) and block == (512, 1, 1), (grid, block)
    assert values == [x.data_ptr(), q.data_ptr(), scales.data_ptr(), 0, 4097, 4096], values
    aligned = fake(torch.randn(3, 4096, dtype=f16))
    out = fake(torch.empty(3 * 4096 + 1, dtype=torch.uint8)[1:].view(torch.float8_e4m3fn).view(3, 4096))
    [(grid, _, values)], _ = launches(per_token_quant_fp8, kernels, aligned, out=out)
    assert grid == (3, 1, 1) and values[:2] == [aligned.data_ptr(), out.data_ptr()], values

    # per_tensor_quant_fp8: partial maxima, then the quantization, at every size; static: one launch.
    kernels = prepare(per_tensor_quant_fp8, dict(dtype="float16", threads=128, vecs=1, row_path=False))
    x = fake(torch.randn(33, 4096, dtype=f16)[:, :4000])
    [(g1, b1, v1), (g2, b2, v2)], (q, scale) = launches(per_tensor_quant_fp8, kernels, x)
    partials = allocated[-1]
    assert g1 == (9, 1, 1) and b1 == (512, 1, 1) and g2 == (129, 1, 1) and b2 == (128, 1, 1), (g1, b1, g2, b2)
    assert v1 == [x.data_ptr(), partials.data_ptr(), 4096, 4000, 132000], v1
    assert v2 == [x.data_ptr(), q.data_ptr(), partials.data_ptr(), 0, scale.data_ptr(), 4096, 4000, 132000, 9], v2
    static = fake(torch.full((1,), 0.5))
    [(g2, _, v2)], (q, scale) = launches(per_tensor_quant_fp8, kernels, x, static)  # static: no maxima to take
    assert v2[3] == static.data_ptr() and g2 == (129, 1, 1)
    small = fake(torch.randn(4, 4096, dtype=f16))
    [(g3, b3, v3), (g4, b4, v4)], (q, scale) = launches(per_tensor_quant_fp8, kernels, small)  # dynamic, small
    partials = allocated[-1]
    assert g3 == (1, 1, 1) and b3 == (512, 1, 1) and v3 == [small.data_ptr(), partials.data_ptr(), 4096, 4096,
                                                            16384], v3
    assert g4 == (16, 1, 1) and b4 == (128, 1, 1) and v4[:3] == [small.data_ptr(), q.data_ptr(),
                                                                 partials.data_ptr()], (g4, v4)
    # One token, dynamic: one kernel of one block that holds every value (no partial maxima: partials 0).
    kernels = prepare(per_tensor_quant_fp8, dict(dtype="float16", threads=512, vecs=1, row_path=False))
    one = fake(torch.randn(1, 4096, dtype=f16))
    [(g5, b5, v5)], (q, scale) = launches(per_tensor_quant_fp8, kernels, one)
    assert g5 == (1, 1, 1) and b5 == (512, 1, 1), (g5, b5)
    assert v5[:2] == [one.data_ptr(), q.data_ptr()] and v5[3:] == [0, scale.data_ptr(), 4096, 4096, 4096, 0], v5
    # The row path: rows 4097 apart, one element in (33 rows of 4000 // 8 + 2 chunks: 130 blocks of 128, 9
    # partial maxima), then a contiguous x one element in (one row of 132000 // 8 + 2 chunks: 129 blocks).
    kernels = prepare(per_tensor_quant_fp8, dict(dtype="float16", threads=128, vecs=1, row_path=True))
    x = fake(torch.randn(33, 4097, dtype=f16)[:, 1:4001])
    [(g1, b1, v1), (g2, b2, v2)], (q, scale) = launches(per_tensor_quant_fp8, kernels, x)
    partials = allocated[-1]
    assert g1 == (9, 1, 1) and b1 == (512, 1, 1) and g2 == (130, 1, 1) and b2 == (128, 1, 1), (g1, b1, g2, b2)
    assert v1 == [x.data_ptr(), partials.data_ptr(), 4097, 4000, 132000], v1
    assert v2 == [x.data_ptr(), q.data_ptr(), partials.data_ptr(), 0, scale.data_ptr(), 4097, 4000, 132000, 9], v2
    x = fake(torch.randn(33 * 4000 + 1, dtype=f16)[1:].view(33, 4000))
    [(g1, _, _), (g2, _, v2)], (q, scale) = launches(per_tensor_quant_fp8, kernels, x)
    assert g1 == (9, 1, 1) and g2 == (129, 1, 1) and v2[5:8] == [4000, 4000, 132000], (g1, g2, v2)

    # per_token_group_quant_fp8: column-major scales are allocated with strides (1, tokens).
    kernels = prepare(per_token_group_quant_fp8, dict(dtype="float16", group_size=128, threads=128, vecs=1,
                                                      row_path=False))
    x = fake(torch.randn(7, 1024, dtype=f16))
    [(grid, block, values)], (q, scales) = launches(per_token_group_quant_fp8, kernels, x, 128,
                                                     column_major_scales=True)
    assert grid == (7, 1, 1) and block == (128, 1, 1), (grid, block)  # 8 groups per block
    assert tuple(scales.shape) == (7, 8) and scales.stride() == (1, 7), scales.stride()
    assert values == [x.data_ptr(), q.data_ptr(), scales.data_ptr(), 1024, 1024, 56, 8, 2**31, 2, 1, 7], values
    # The row path for x[:, 1:] (groups one element past a 16-byte boundary): the same geometry and grid.
    kernels = prepare(per_token_group_quant_fp8, dict(dtype="float16", group_size=128, threads=128, vecs=1,
                                                      row_path=True))
    x = fake(torch.randn(7, 1025, dtype=f16)[:, 1:])
    [(grid, block, values)], (q, scales) = launches(per_token_group_quant_fp8, kernels, x, 128)
    assert grid == (7, 1, 1) and block == (128, 1, 1), (grid, block)
    assert values == [x.data_ptr(), q.data_ptr(), scales.data_ptr(), 1025, 1024, 56, 8, 2**31, 2, 8, 1], values
    # An aligned x and an out 4 bytes past a 16-byte boundary: fp32 groups of 1024 store 32 bytes a thread on the
    # vector path (16-byte accesses), so they take the row path; fp32 groups of 128 (4 bytes a thread) do not.
    def out_at(offset, tokens, hidden):
        raw = torch.empty(tokens * hidden + 64, dtype=torch.uint8)
        start = offset - raw.data_ptr() % 16 + 16
        return fake(raw[start:start + tokens * hidden].view(torch.float8_e4m3fn).view(tokens, hidden))

    x32 = fake(torch.randn(3, 2048, dtype=f32))
    kernels = prepare(per_token_group_quant_fp8, dict(dtype="float32", group_size=1024, threads=128, vecs=1,
                                                      row_path=True))
    [(grid, _, values)], _ = launches(per_token_group_quant_fp8, kernels, x32, 1024, out=out_at(4, 3, 2048))
    assert grid == (2, 1, 1) and values[1] % 16 == 4, (grid, values)
    kernels = prepare(per_token_group_quant_fp8, dict(dtype="float32", group_size=128, threads=128, vecs=1,
                                                      row_path=False))
    [(grid, _, values)], _ = launches(per_token_group_quant_fp8, kernels, x32, 128, out=out_at(4, 3, 2048))
    assert grid == (12, 1, 1) and values[1] % 16 == 4, (grid, values)

    # rotary_embedding_with_kv_cache: 3-D views of one qkv tensor, 8 + 2 + 2 heads of 64.
    kernels = prepare(rotary_embedding_with_kv_cache, dict(dtype="float16", cs_dtype="float32",
                                                           cache_dtype="float16", pos_dtype="int64",
                                                           slot_dtype="int64", is_neox=True, D=64, R=64))
    qkv = torch.randn(5, 12, 64, dtype=f16)
    q, k, v = fake(qkv[:, :8]), fake(qkv[:, 8:10]), fake(qkv[:, 10:])
    [(grid, block, values)], _ = launches(rotary_embedding_with_kv_cache, kernels, pos, q, k, v, cache, kc, vc,
                                          slots)
    assert grid == (5, 1, 1) and block == (4, 12, 1), (grid, block)
    assert values == [pos.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), cache.data_ptr(), kc.data_ptr(),
                      vc.data_ptr(), slots.data_ptr(), 0, 0, 768, 768, 768, 8, 2, 100, 64, 12], values
print("ALL OK")
'''


def test_launch_paths_against_the_stub_driver() -> None:
    pytest.importorskip("torch")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", STUB_SCRIPT], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=600, check=False)
    assert out.returncode == 0 and "ALL OK" in out.stdout, out.stdout + out.stderr[-4000:]
