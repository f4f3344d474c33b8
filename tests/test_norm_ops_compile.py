"""The norm and activation ops without a GPU.

- The selection rules choose only precompiled instantiations, and only ones that hold the row. (Every
  instantiation is compiled for sm_80 and sm_90 by tests/test_compile_all.py, which finds the shipped ops itself.)
- The generated launch code, run against the stub driver of tests/stub_cuda.py: which kernel path each layout
  takes, the grid, the block and the packed arguments, and refused inputs launching nothing. The stub runs
  variants of the shipped ops under a namespace of their own, so that the real ops stay bound to the real driver.
- CPU tensors are refused by the real ops' device check, with the message that names it.
"""

from __future__ import annotations

import math
import struct
from types import SimpleNamespace
from typing import Any

import pytest

import cujit
from cujit.fused_add_rms_norm import fused_add_rms_norm
from cujit.gelu_and_mul import gelu_and_mul
from cujit.rms_norm import (
    FUSED_SCALAR_CONFIGS,
    PATH_PHASED,
    PATH_SCALAR,
    PATH_TILED,
    PATH_VECTOR,
    SCALAR_CONFIGS,
    VECTOR_CONFIGS,
    norm_config,
    rms_norm,
)
from cujit.silu_and_mul import BLOCK as ROW_BLOCK
from cujit.silu_and_mul import SEGMENT_VECS, activation_config, row_layout, silu_and_mul
from tests.stub_cuda import StubBackend, bind_fakes, count_slow, fake, last_launch

torch = pytest.importorskip("torch")

OPS = {"rms_norm": rms_norm, "fused_add_rms_norm": fused_add_rms_norm, "silu_and_mul": silu_and_mul,
       "gelu_and_mul": gelu_and_mul}
DTYPES = ("float32", "float16", "bfloat16")


def _lanes(dtype: str) -> int:
    return 16 // torch.empty(0, dtype=getattr(torch, dtype)).element_size()


def _as_fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(cujit.DType.of(v).name if k == "dtype" else v) for k, v in fields.items()}


# ------------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize("name", ["rms_norm", "fused_add_rms_norm"])
def test_norm_rule_chooses_precompiled_configurations_that_hold_the_row(name: str) -> None:
    instances = [_as_fields(f) for f in OPS[name].op.instances()]
    assert len(instances) == len({tuple(sorted(f.items())) for f in instances})  # each once
    hidden_sizes = sorted({*range(1, 300), *(2**k + d for k in range(8, 17) for d in (-1, 0, 1)), 5120, 40000,
                           2**20})
    for dtype in DTYPES:
        lanes = _lanes(dtype)
        for vector in (True, False):
            fused = name == "fused_add_rms_norm"
            configs = VECTOR_CONFIGS if vector else FUSED_SCALAR_CONFIGS if fused else SCALAR_CONFIGS
            for hidden in hidden_sizes:
                if vector and hidden % lanes:
                    continue
                c = norm_config(hidden, dtype, vector, fused=fused)
                for gemma in (False, True):
                    fields = _as_fields({"dtype": dtype, "gemma": gemma, "config": c})
                    assert fields in instances, (hidden, dtype, vector, c)
                assert c.block % c.row_threads == 0 and c.block % 32 == 0 and c.block <= 1024
                capacity = c.row_threads * c.vecs * lanes
                if c.path == PATH_TILED:
                    assert all(rt * v * lanes < hidden for rt, v in configs), (hidden, dtype, c)
                else:
                    assert c.path == (PATH_VECTOR if vector else PATH_SCALAR)
                    assert capacity >= hidden, (hidden, dtype, c)
                    # the smallest configuration that holds the row
                    assert all(rt * v * lanes < hidden for rt, v in configs if rt * v * lanes < capacity)


@pytest.mark.parametrize("name", ["silu_and_mul", "gelu_and_mul"])
def test_activation_rule_chooses_precompiled_configurations(name: str) -> None:
    instances = [_as_fields(f) for f in OPS[name].op.instances()]
    for dtype in DTYPES:
        for d in (1, 7, 64, 4097, 8192, 1 << 20):
            for vector in (True, False):
                c = activation_config(d, dtype, vector)
                assert c.row_path is not vector
                assert any(f["dtype"] == dtype and f["block"] == str(c.block) and f["vecs"] == str(c.vecs)
                           and f["row_path"] == str(c.row_path) for f in instances), (dtype, d, vector)
    if name == "gelu_and_mul":
        assert {f["tanh"] for f in instances} == {"False", "True"}


@pytest.mark.parametrize("itemsize", [2, 4])
def test_row_layout_covers_each_row_with_groups_that_hold_it(itemsize: int) -> None:
    """Segments tile the row; a group is a power of two dividing the block, with a thread per element of the
    head and the tail; a segment's 16-byte vectors take one round of the group (one vector more at most)."""
    lanes = 16 // itemsize
    full = ROW_BLOCK * SEGMENT_VECS
    for d in sorted({*range(1, 5000), *(k * full * lanes + e for k in range(1, 20) for e in range(-lanes, lanes + 2)),
                     30000, 30001, 65535, 65536, 1 << 20}):
        group, seg, segs = row_layout(d, itemsize)
        assert group & (group - 1) == 0 and ROW_BLOCK % group == 0, d
        assert (segs - 1) * seg < d <= segs * seg, d
        if segs == 1:
            assert seg == d and d // lanes <= group * SEGMENT_VECS and group >= min(d, lanes), d
            assert group == 1 or (group // 2) * SEGMENT_VECS < d // lanes or group // 2 < min(d, lanes), d  # smallest
        else:
            assert group == ROW_BLOCK and seg % lanes == 0 and seg // lanes <= full + 1, d
            assert d // lanes > full, d  # a row that fits one round is never cut


# ------------------------------------------------------------------------------------------------ the stub
@pytest.fixture
def ops(stub: StubBackend) -> SimpleNamespace:
    # Variants declared under the stub, in a namespace of their own: the real ops stay bound to the real driver.
    declared = SimpleNamespace(**{name: fn.op.variant("cujit_stub") for name, fn in OPS.items()})
    for fn in vars(declared).values():
        bind_fakes(fn.op.env, stub)
        fn.slow = count_slow(fn)
    return declared


def _f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def test_rms_norm_takes_the_path_the_layout_allows(stub: StubBackend, ops: SimpleNamespace) -> None:
    f16 = torch.float16
    cases = [
        # (x, weight, out, expected path, block, rows per block)
        (torch.randn(5, 4096, dtype=f16), torch.randn(4096, dtype=f16), None, PATH_VECTOR, 128, 1),
        (torch.randn(5, 4104, dtype=f16)[:, :4096], torch.randn(4096, dtype=f16), None, PATH_VECTOR, 128, 1),
        # x or out out of phase with the other: element loads hold 4096 values in the phased path's 256 x 2 tile
        (torch.randn(5, 4097, dtype=f16)[:, 1:], torch.randn(4096, dtype=f16), None, PATH_SCALAR, 256, 1),
        (torch.randn(5, 4096, dtype=f16), torch.randn(4097, dtype=f16)[1:], None, PATH_SCALAR, 256, 1),
        (torch.randn(5, 4096, dtype=f16), torch.randn(4096, dtype=f16), torch.empty(5, 4097, dtype=f16)[:, 1:],
         PATH_SCALAR, 256, 1),
        # 4097 values: only the phased path holds the row in 256 x 2 (512 whole vectors, the head and tail besides)
        (torch.randn(9, 4097, dtype=f16), torch.randn(4097, dtype=f16), None, PATH_PHASED, 256, 1),
        (torch.randn(3, 40000, dtype=f16), torch.randn(40000, dtype=f16), None, PATH_TILED, 1024, 1),
        (torch.randn(37, 64, dtype=torch.float32), torch.randn(64), None, PATH_VECTOR, 128, 8),
        (torch.randn(37, 64, dtype=f16), torch.randn(64, dtype=f16), None, PATH_VECTOR, 128, 16),
    ]
    for x, w, out, path, block, rows_per_block in cases:
        fx, fw = fake(stub, x), fake(stub, w)
        fout = None if out is None else fake(stub, out)
        for second in (False, True):  # the generic path (compile and load), then the generated one
            generic = len(ops.rms_norm.slow)
            result = ops.rms_norm(fx, fw, 1e-5, out=fout)
            assert not second or len(ops.rms_norm.slow) == generic
            key, values = last_launch(stub, ops.rms_norm)
            assert key[2:3] == (path,) and key[3] == block, (x.shape, x.stride(), key)
            rows, hidden = x.shape
            out_stride = hidden if fout is None else fout.stride()[0]
            assert values == [result.data_ptr(), fx.data_ptr(), fw.data_ptr(), rows, hidden, x.stride(0), out_stride,
                              _f32(1e-5)]
            assert stub.launches[-1].grid == (math.ceil(rows / rows_per_block), 1, 1)
            assert stub.launches[-1].block == (block, 1, 1)
            assert stub.launches[-1].pdl  # sm_90: launched with programmatic dependent launch


def test_rms_norm_in_place_gemma_and_refusals(stub: StubBackend, ops: SimpleNamespace) -> None:
    x, w = fake(stub, torch.randn(4, 1000, dtype=torch.float16)), fake(stub, torch.randn(1000, dtype=torch.float16))
    for _ in range(2):
        assert ops.rms_norm(x, w, gemma=True, out=x) is x
        key, values = last_launch(stub, ops.rms_norm)
        assert key[1] is True and values[:2] == [x.data_ptr(), x.data_ptr()]
    assert len(ops.rms_norm.slow) == 1
    before = len(stub.launches)
    overlapping = fake(stub, torch.empty(5000, dtype=torch.float16).as_strided((4, 1000), (999, 1)))
    with pytest.raises(cujit.CujitError, match="out: rows overlap"):
        ops.rms_norm(x, w, out=overlapping)
    with pytest.raises(cujit.TensorMatchError, match="'weight': dimension 0"):
        ops.rms_norm(x, fake(stub, torch.randn(999, dtype=torch.float16)))
    with pytest.raises(TypeError, match="argument eps: expected float"):
        ops.rms_norm(x, w, "1e-6")
    with pytest.raises(TypeError, match="argument gemma: expected bool"):
        ops.rms_norm(x, w, gemma=1)
    assert len(stub.launches) == before
    empty = ops.rms_norm(fake(stub, torch.randn(0, 1000, dtype=torch.float16)), w)
    assert tuple(empty.shape) == (0, 1000) and len(stub.launches) == before


def test_fused_add_rms_norm_paths_arguments_and_refusals(stub: StubBackend, ops: SimpleNamespace) -> None:
    f16 = torch.float16
    w = fake(stub, torch.randn(8192, dtype=f16))
    cases = [
        (torch.randn(7, 8192, dtype=f16), torch.randn(7, 8192, dtype=f16), PATH_VECTOR, 256),
        (torch.randn(7, 8200, dtype=f16)[:, :8192], torch.randn(7, 8192, dtype=f16), PATH_VECTOR, 256),
        # x out of phase with residual: element loads hold 8192 values with 1024 threads a row (over
        # FUSED_ELEMENT_THREADS), but the row fills their whole tile (over FUSED_FILL): element loads
        (torch.randn(7, 8193, dtype=f16)[:, 1:], torch.randn(7, 8192, dtype=f16), PATH_SCALAR, 1024),
    ]
    for x, residual, path, block in cases:
        fx, fr = fake(stub, x), fake(stub, residual)
        for second in (False, True):
            generic = len(ops.fused_add_rms_norm.slow)
            assert ops.fused_add_rms_norm(fx, fr, w, 1e-6) is None
            assert not second or len(ops.fused_add_rms_norm.slow) == generic
            key, values = last_launch(stub, ops.fused_add_rms_norm)
            assert key[2] == path and key[3] == block
            assert values == [fx.data_ptr(), fr.data_ptr(), w.data_ptr(), 7, 8192, x.stride(0), residual.stride(0),
                              _f32(1e-6)]
            assert stub.launches[-1].grid == (7, 1, 1)
    before = len(stub.launches)
    fx = fake(stub, torch.randn(7, 8192, dtype=f16))
    with pytest.raises(cujit.CujitError, match="x and residual must be different tensors"):
        ops.fused_add_rms_norm(fx, fx, w)
    with pytest.raises(cujit.TensorMatchError, match="'residual': dtype"):
        ops.fused_add_rms_norm(fx, fake(stub, torch.randn(7, 8192)), w)
    with pytest.raises(cujit.TensorMatchError, match="'residual': stride 1: expected 1"):
        ops.fused_add_rms_norm(fx, fake(stub, torch.randn(7, 16384, dtype=f16)[:, ::2]), w)
    with pytest.raises(cujit.CujitError, match="residual: rows overlap"):
        ops.fused_add_rms_norm(fx, fake(stub, torch.empty(80000, dtype=f16).as_strided((7, 8192), (100, 1))), w)
    assert len(stub.launches) == before


def _gated_launch(stub: StubBackend, fn: Any, x: Any, extra: tuple[Any, ...], out: Any = None) -> tuple[Any, bool]:
    """Call fn, check the grid, block and arguments of its launch against the plan; (out, whether the row path)."""
    out = fn(x, *extra, out=out)
    lanes = 16 // x.t.element_size()
    d = x.shape[-1] // 2
    rows = math.prod(x.shape[:-1])
    key, values = last_launch(stub, fn)
    vector = d % lanes == 0 and x.data_ptr() % 16 == 0 and out.data_ptr() % 16 == 0
    config = activation_config(d, x.dtype, vector)
    assert key[-3:] == (config.row_path, config.block, config.vecs)
    if vector:
        assert values[:4] == [out.data_ptr(), x.data_ptr(), rows, d]
        assert stub.launches[-1].grid == (math.ceil(rows * d / (config.block * config.vecs * lanes)), 1, 1)
    else:
        group, seg, segs = row_layout(d, x.t.element_size())
        assert values == [out.data_ptr(), x.data_ptr(), rows, d, group, seg, segs]
        assert stub.launches[-1].grid == (math.ceil(rows * segs / (config.block // group)), 1, 1)
    assert stub.launches[-1].block == (config.block, 1, 1) and stub.launches[-1].pdl
    return out, not vector


@pytest.mark.parametrize("name", ["silu_and_mul", "gelu_and_mul"])
def test_activations_shapes_grid_and_arguments(stub: StubBackend, ops: SimpleNamespace, name: str) -> None:
    fn = getattr(ops, name)
    extra = ("tanh",) if name == "gelu_and_mul" else ()
    for dtype, shape in ((torch.float16, (3, 2, 2 * 4096)), (torch.float32, (5, 2 * 1000)), (torch.float16, (6,))):
        x = fake(stub, torch.randn(shape, dtype=dtype))
        d = shape[-1] // 2
        for second in (False, True):
            generic = len(fn.slow)
            out, row_path = _gated_launch(stub, fn, x, extra)
            assert not second or len(fn.slow) == generic
            assert tuple(out.shape) == (*shape[:-1], d)
            assert row_path == (d == 3)  # 3 values: not whole vectors
            if name == "gelu_and_mul":
                assert last_launch(stub, fn)[0][1] is True  # tanh
    before = len(stub.launches)
    x = fake(stub, torch.randn(4, 64, dtype=torch.float16))
    with pytest.raises(cujit.CujitError, match="the last dimension must be even"):
        fn(fake(stub, torch.randn(4, 63, dtype=torch.float16)))
    with pytest.raises(cujit.TensorMatchError, match="'out': dimension 1"):
        fn(x, *extra, out=fake(stub, torch.empty(4, 64, dtype=torch.float16)))
    with pytest.raises(cujit.TensorMatchError, match="'x'"):
        fn(fake(stub, torch.randn(4, 128, dtype=torch.float16)[:, ::2]))
    if name == "gelu_and_mul":
        with pytest.raises(cujit.CujitError, match="approximate must be 'none' or 'tanh'"):
            fn(x, "exact")
        fn(x)
        assert last_launch(stub, fn)[0][1] is False
    assert len(stub.launches) == before + (name == "gelu_and_mul")


@pytest.mark.parametrize("name", ["silu_and_mul", "gelu_and_mul"])
def test_activations_take_the_row_path_for_odd_widths_and_misaligned_tensors(stub: StubBackend,
                                                                             ops: SimpleNamespace, name: str) -> None:
    """The vector path only for d of whole vectors with x and out 16-byte aligned; every other call the row path,
    with the layout of row_layout and a grid that covers its segments."""
    fn = getattr(ops, name)
    extra = ("none",) if name == "gelu_and_mul" else ()
    for dtype in (torch.float32, torch.float16):  # the stub's tensors have no bf16; its itemsize is fp16's
        lanes = 16 // torch.empty(0, dtype=dtype).element_size()
        for rows, d in ((7, 4096), (7, 4095), (7, 4097), (3, 2881), (5, 1), (5, 7), (2, 30000), (65, 64)):
            base = torch.randn(rows * 2 * d + 1, dtype=dtype)
            aligned = fake(stub, base[:-1].view(rows, 2 * d))
            shifted = fake(stub, base[1:].view(rows, 2 * d))  # one element past a 16-byte boundary
            assert aligned.data_ptr() % 16 == 0
            _, row_path = _gated_launch(stub, fn, aligned, extra)
            assert row_path == (d % lanes != 0)
            _, row_path = _gated_launch(stub, fn, shifted, extra)
            assert row_path
            storage = torch.empty(rows * d + 1, dtype=dtype)
            _, row_path = _gated_launch(stub, fn, aligned, extra, out=fake(stub, storage[1:].view(rows, d)))
            assert row_path


# ------------------------------------------------------------------------------------------------ real ops, CPU
def test_cpu_tensors_are_refused_by_the_device_check() -> None:
    x, weight = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    calls = [
        lambda: rms_norm(x, weight),
        lambda: rms_norm(x, weight, 1e-5, gemma=True, out=torch.empty_like(x)),
        lambda: fused_add_rms_norm(x, torch.randn_like(x), weight),
        lambda: silu_and_mul(x),
        lambda: gelu_and_mul(x, "tanh"),
    ]
    for call in calls:
        with pytest.raises(cujit.TensorMatchError, match="'x': device: expected cuda, got cpu:0"):
            call()


def test_cujit_names_are_the_op_modules() -> None:
    assert cujit.rms_norm.rms_norm is rms_norm and cujit.fused_add_rms_norm.fused_add_rms_norm is fused_add_rms_norm
    assert cujit.silu_and_mul.silu_and_mul is silu_and_mul and cujit.gelu_and_mul.gelu_and_mul is gelu_and_mul
    assert str(torch.ops.cujit.rms_norm.default._schema) == (
        "cujit::rms_norm(Tensor x, Tensor weight, float eps=9.9999999999999995e-07, *, bool gemma=False) -> Tensor")


def test_fake_tensors_give_output_shapes_without_a_gpu() -> None:
    """What torch.compile sees: the fake implementations, on fake CUDA tensors, with fixed and symbolic sizes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv())
    dynamic = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.DYNAMIC])
    symbolic = mode.from_tensor(torch.empty(4, 64, dtype=torch.bfloat16, device="meta"), symbolic_context=dynamic)
    symbolic.fake_device = torch.device("cuda", 0)  # a CPU-only torch cannot move a fake tensor to CUDA
    with mode:
        fixed = torch.empty(4, 64, dtype=torch.bfloat16, device="cuda")
        for x in (fixed, symbolic):
            w = torch.empty(x.shape[1], dtype=torch.bfloat16, device="cuda")
            for y in (torch.ops.cujit.rms_norm(x, w, 1e-6, gemma=True), rms_norm(x, w)):
                assert y.shape == x.shape and y.device.type == "cuda" and y.dtype == torch.bfloat16
            assert torch.ops.cujit.fused_add_rms_norm(x, torch.empty_like(x), w, 1e-6) is None
            half = (x.shape[0], x.shape[1] // 2)
            for y in (torch.ops.cujit.silu_and_mul(x), torch.ops.cujit.gelu_and_mul(x, "tanh"), gelu_and_mul(x)):
                assert tuple(y.shape) == half and y.dtype == torch.bfloat16
            out = torch.empty(half, dtype=torch.bfloat16, device="cuda")
            assert torch.ops.cujit.silu_and_mul.out(x, out=out) is None
