"""The MoE router, per-head norm and fused quantization ops without a GPU.

Every precompiled instance compiles (also covered for every shipped op by tests/test_compile_all.py); the plans
choose only precompiled instances; the generated launch code, run against the stub driver of tests/stub_cuda.py,
launches what the kernels expect; bad inputs are refused before anything is launched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import cujit
from cujit.topk_softmax import MAX_EXPERTS, topk_config, topk_softmax
from tests.stub_cuda import FakeCudaTensor, StubBackend, bind_fakes, stub_backend

torch = pytest.importorskip("torch")

OPS = {"topk_softmax": topk_softmax}


def _fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(cujit.DType.of(v).name if k == "dtype" else v) for k, v in fields.items()}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_precompiled_instance_compiles(name: str) -> None:
    for module in OPS[name].op.precompile_modules():
        assert module.compile("sm_90").cubin[:4] == b"\x7fELF"


@pytest.fixture
def stub() -> Iterator[StubBackend]:
    with stub_backend() as backend:
        yield backend


@pytest.fixture
def ops(stub: StubBackend) -> SimpleNamespace:
    declared = SimpleNamespace(**{name: fn.op.variant("cujit_stub_serving") for name, fn in OPS.items()})
    for fn in vars(declared).values():
        bind_fakes(fn.op.env, stub)
    return declared


def fake(stub: StubBackend, t: torch.Tensor) -> FakeCudaTensor:
    return FakeCudaTensor(t, 0, stub)


def _last(stub: StubBackend, fn: Any) -> tuple[tuple[Any, ...], list[Any]]:
    launched = stub.launches[-1]
    for key, loaded in fn.op.table.items():
        if loaded.function == launched.function:
            return key[:-1], launched.values(loaded.params)
    raise AssertionError("the last launch is not one of this op's kernels")


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
        key, values = _last(stub, fn)
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


def test_cpu_tensors_are_refused() -> None:
    with pytest.raises(cujit.TensorMatchError, match="'gating_output': device: expected cuda, got cpu:0"):
        topk_softmax(torch.randn(4, 64), 2)


def test_fake_tensors_give_output_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 64, dtype=torch.bfloat16, device="cuda")
        weights, ids = torch.ops.cujit.topk_softmax(x, 4, True)
        assert weights.shape == (5, 4) and weights.dtype == torch.float32 and ids.dtype == torch.int32
