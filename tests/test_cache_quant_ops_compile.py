"""The rotary, KV-cache and FP8 ops without a GPU: every precompiled instance compiles for sm_80 and sm_90, the
launch plans are what the kernels expect, and inputs that need no GPU to judge are refused with clear messages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import cujit
from cujit.fp8_quant import (
    group_plan,
    per_tensor_plan,
    per_tensor_quant_fp8,
    per_token_group_quant_fp8,
    per_token_plan,
    per_token_quant_fp8,
)
from cujit.rotary_embedding import launch_plan as rotary_plan
from cujit.rotary_embedding import rotary_embedding
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
        # cujit.<name> is the op, or its module once imported, which calls the op
        assert getattr(cujit, name) in (fn, sys.modules[f"cujit.{name}"])
        assert getattr(sys.modules[f"cujit.{name}"], name) is fn


def test_rotary_plan() -> None:
    # (vec, block_x, block_y, heads_per_block)
    assert rotary_plan(4097, 80, 128, 128, 2, True) == (8, 8, 32, 80)  # whole tokens per block
    assert rotary_plan(16, 80, 128, 128, 2, True) == (8, 8, 32, 32)  # a row of heads per block
    assert rotary_plan(4097, 80, 128, 128, 2, False) == (8, 16, 16, 80)
    assert rotary_plan(7, 2, 64, 128, 4, True) == (4, 8, 2, 2)
    assert rotary_plan(5, 3, 1026, 1026, 4, True) == (1, 256, 1, 1)  # the kernel loops over the wider span
    assert rotary_plan(5, 3, 66, 66, 4, False) == (2, 33, 3, 3)


def test_kv_plan() -> None:
    assert kv_plan(8 * 128, 2) == (8, 64)  # 128 chunks: 64 threads x 2 chunks of k and of v
    assert kv_plan(32 * 256, 2) == (8, 256)
    assert kv_plan(15, 2) == (1, 32)
    assert kv_plan(4 * 80, 4) == (4, 64)


def test_quant_plans() -> None:
    assert per_token_plan(4096, 2) == (128, 4)
    assert per_token_plan(7168, 2) == (256, 4)
    assert per_token_plan(65536, 2) == (1024, 4)  # longer rows re-read what the registers cannot hold
    assert per_token_plan(100, 4) == (32, 1)
    assert group_plan(128, 2) == 64  # 16 lanes per group, 4 groups per thread
    assert group_plan(1024, 4) == 8  # 256 chunks: 32 lanes x 8, one group per thread
    blocks, chunk = per_tensor_plan(4097 * 4096)
    assert blocks == 1024 and chunk % 16 == 0 and (blocks - 1) * chunk < 4097 * 4096 <= blocks * chunk
    assert per_tensor_plan(0) == (0, 16)
    assert per_tensor_plan(5) == (1, 16)


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
