"""The op API on a CPU machine: schemas, declarations and their errors, and the generated launch code run against a
stub driver (packing, streams, devices, outputs, refused inputs launching nothing)."""

from __future__ import annotations

import inspect
import pickle
import struct
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
import torch

import cujit
from cujit._runtime import op_generic
from cujit._runtime import ops as ops_module
from cujit._runtime.schema import parse_schema
from tests import op_decls
from tests.stub_cuda import FakeCudaTensor, StubBackend, bind_fakes, count_slow, fake

KERNELS = Path(__file__).parent / "kernels"


@pytest.fixture
def ops(stub: StubBackend) -> SimpleNamespace:
    declared = op_decls.declare()
    for fn in vars(declared).values():
        bind_fakes(fn.op.env, stub)
        fn.slow = count_slow(fn)
    return declared



def decode(stub: StubBackend, op: Any, index: int = -1) -> list[Any]:
    """The arguments packed for a launch of ``op`` (its only kernel), read from the stub's record."""
    launched = stub.launches[index]
    loaded = next(v for v in op.op.table.values())
    return launched.values(loaded.params)


# ------------------------------------------------------------------------------------------------ schemas
def test_schema_roles_defaults_and_torch_forms() -> None:
    s = parse_schema("ns::f(Tensor x, Tensor? w=None, float eps=1e-6, *, bool g=False, str mode='a', "
                     "Tensor(a!)? out=None) -> Tensor")
    assert [(p.name, p.role) for p in s.params] == [("x", "input"), ("w", "input"), ("eps", "scalar"),
                                                    ("g", "scalar"), ("mode", "scalar"), ("out", "output")]
    assert s.params[2].default == 1e-6 and s.params[3].kw_only and s.params[4].default == "a"
    functional, out = s.torch_schemas()
    assert functional == "f(Tensor x, Tensor? w=None, float eps=1e-06, *, bool g=False, str mode='a') -> Tensor"
    assert out == ("f.out(Tensor x, Tensor? w=None, float eps=1e-06, *, bool g=False, str mode='a', "
                   "Tensor(a!) out) -> ()")
    inplace = parse_schema("ns::g(Tensor(a!) x, Tensor(b!) r, float eps) -> ()")
    assert inplace.torch_schemas() == ("g(Tensor(a!) x, Tensor(b!) r, float eps) -> ()", None)
    two = parse_schema("ns::h(Tensor x, *, Tensor(a!)? q=None, Tensor(b!)? s=None) -> (Tensor, Tensor)")
    assert two.torch_schemas()[0] == "h(Tensor x) -> (Tensor, Tensor)"
    assert two.torch_schemas()[1] == "h.out(Tensor x, *, Tensor(a!) q, Tensor(b!) s) -> ()"


@pytest.mark.parametrize(("text", "message"), [
    ("f(Tensor x) -> Tensor", "expected 'namespace::name(parameters) -> returns'"),
    ("ns::f(Tensor x, double y) -> ()", "cannot read parameter 'double y'"),
    ("ns::f(Tensor x, int(a!) y) -> ()", "only tensors can be written"),
    ("ns::f(Tensor x, int y=None) -> ()", "default None needs an optional type"),
    ("ns::f(Tensor x, int y=1.5) -> ()", "default 1.5 is not a int"),
    ("ns::f(Tensor x, int y=1, int z) -> ()", "parameter z without a default follows one with a default"),
    ("ns::f(Tensor x, *, Tensor(a!)? out=1) -> Tensor", "default 1 is not a Tensor"),
    ("ns::f(Tensor x, *, Tensor(a!)? out=None) -> ()", "returns 0 tensor(s) but declares 1 output(s)"),
    ("ns::f(Tensor x) -> int", "returns: expected Tensor"),
    ("ns::f(Tensor x, Tensor x) -> ()", "parameter x appears twice"),
    ("ns::f(int n) -> ()", "needs at least one tensor that is not an output"),
])
def test_schema_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(cujit.CujitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_schema(text)


# ------------------------------------------------------------------------------------------------ declarations
def _declare(**changes: Any) -> Any:
    n = cujit.SymbolicSize("n")
    m = cujit.TensorMatcher([n]).with_dtype("float32")
    declaration: dict[str, Any] = {
        "source": KERNELS / "ops_test.cuh", "kernel": "axpy<fp32_t>", "tensors": {"y": m, "x": m},
        "grid": "cdiv(n, 256)", "block": 256, "args": ("y", "x", "a", "n"),
    }
    declaration.update(changes)
    schema = declaration.pop("schema", "decl::axpy(Tensor(a!) y, Tensor x, float a) -> ()")
    return cujit.op(schema, **declaration)


@pytest.mark.parametrize(("changes", "message"), [
    ({"args": ("y", "x", "alpha", "n")}, "args: unknown name 'alpha'"),
    ({"grid": "cdiv(m, 256)"}, r"grid: unknown name 'm' \(names available here: a, n, x, y\)"),
    ({"values": {"v": "w + 1", "w": "n"}}, r"values\['v'\]: unknown name 'w'"),
    ({"tensors": {"y": cujit.TensorMatcher([4])}}, "no TensorMatcher for x"),
    ({"kernel": "axpy<{y}>"}, r"kernel: \{y\} is a tensor"),
    ({"kernel": "axpy<{zz}>"}, r"kernel: \{zz\} must be a scalar parameter, an input symbol or a value"),
    ({"values": {"a": "1"}}, "'a' is both a parameter and a value"),
    ({"values": {"_x": "1"}}, "value name '_x' cannot be used"),
    ({"values": {"prod": "1"}}, "value name 'prod' cannot be used"),
    ({"source": "nope.cuh"}, "source .*nope.cuh not found"),
    ({"launches": [cujit.Launch(kernel="k", grid=1, block=1, args=())]}, "give either launches"),
    ({"kernel": None}, "missing kernel"),
    ({"values": {"v": "n +"}}, r"values\['v'\]: 'n \+' is not a Python expression"),
    ({"values": {"v": lambda *args: 1}}, "must name its parameters"),
    ({"grid": (1, 2, 3, 4)}, "expected 1 to 3 dimensions"),
    ({"tensors": {"y": cujit.TensorMatcher([-1]).with_device("cpu"), "x": cujit.TensorMatcher([-1])}},
     "op tensors are CUDA tensors"),
])
def test_declaration_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(cujit.CujitError, match=message):
        _declare(**changes)


def test_outputs_must_be_allocatable() -> None:
    n, k = cujit.SymbolicSize("n"), cujit.SymbolicSize("k")
    with pytest.raises(cujit.CujitError, match="output 'out': dimension symbol 'k' is bound by no input"):
        cujit.op("decl::f(Tensor x, *, Tensor(a!)? out=None) -> Tensor", source=KERNELS / "ops_test.cuh",
                 kernel="k", tensors={"x": cujit.TensorMatcher([n]), "out": cujit.TensorMatcher([k])},
                 grid=1, block=1, args=())
    with pytest.raises(cujit.CujitError, match="output 'out': give its dtype"):
        cujit.op("decl::f(Tensor x, *, Tensor(a!)? out=None) -> Tensor", source=KERNELS / "ops_test.cuh",
                 kernel="k", tensors={"x": cujit.TensorMatcher([n]), "out": cujit.TensorMatcher([n])},
                 grid=1, block=1, args=())
    with pytest.raises(cujit.CujitError, match="symbol 'k' of an optional tensor must also appear in a required"):
        cujit.op("decl::f(Tensor x, Tensor? s=None) -> ()", source=KERNELS / "ops_test.cuh", kernel="k",
                 tensors={"x": cujit.TensorMatcher([n]), "s": cujit.TensorMatcher([k])}, grid=1, block=1, args=())


def test_a_value_may_define_an_output_dimension() -> None:
    n, half = cujit.SymbolicSize("n"), cujit.SymbolicSize("half")
    f32 = ("float32",)
    fn = cujit.op("decl::halve(Tensor x, *, Tensor(a!)? out=None) -> Tensor", source=KERNELS / "ops_test.cuh",
                  kernel="axpy<fp32_t>", tensors={"x": cujit.TensorMatcher([n]).with_dtype(*f32),
                                                  "out": cujit.TensorMatcher([half]).with_dtype(*f32)},
                  values={"half": "n // 2"}, checks=[("n % 2 == 0", "x must have an even length")],
                  grid=1, block=1, args=("out", "x", "n", "half"))
    assert fn.op.defined_outputs == {"half"}


def test_a_declaration_made_again_reuses_the_generated_rule_text() -> None:
    from cujit._runtime import rules

    n = cujit.SymbolicSize("n")

    def declare(name: str, rule: Any) -> Any:
        return cujit.op(f"decl::{name}(Tensor x) -> ()", source=KERNELS / "ops_test.cuh", kernel="axpy<fp32_t>",
                        tensors={"x": cujit.TensorMatcher([n]).with_dtype("float32")}, values={"half": rule},
                        checks=[("n % 2 == 0 and aligned(x, 16)", "x must have an even length")], grid=1, block=1,
                        args=("x", "n", "half"))

    declare("again_a", "n // 2")
    before = dict(rules._EMITTED)
    declare("again_b", "n // 2")
    assert rules._EMITTED == before  # every expression of the second op was emitted before


def test_call_rules_of_the_same_text_keep_their_own_callables(stub: StubBackend) -> None:
    """The generated text of a call rule is shared; the callable behind it is each op's own."""
    two = _declare(schema="decl::two(Tensor(a!) y, Tensor x, float a) -> ()", values={"blocks": (lambda n: 2, "n")},
                   grid="blocks")
    three = _declare(schema="decl::three(Tensor(a!) y, Tensor x, float a) -> ()",
                     values={"blocks": (lambda n: 3, "n")}, grid="blocks")
    y, x = fake(stub, torch.zeros(8)), fake(stub, torch.ones(8))
    for fn, blocks in ((two, 2), (three, 3)):
        bind_fakes(fn.op.env, stub)
        fn(y, x, 1.0)  # the generic path (compile and load)
        assert stub.launches[-1].grid == (blocks, 1, 1)
        slow = count_slow(fn)
        fn(y, x, 1.0)  # the generated one
        assert stub.launches[-1].grid == (blocks, 1, 1) and slow == []


# ------------------------------------------------------------------------------------------------ the fast path
def test_strided_rows_pack_pointers_sizes_strides_and_a_float32(stub: StubBackend, ops: SimpleNamespace) -> None:
    base = torch.randn(4, 40)
    x, w, out = fake(stub, base[:, :33]), fake(stub, torch.randn(33)), fake(stub, torch.empty(4, 48)[:, :33])
    for _ in range(2):  # the first call takes the generic path (compile and load), the second the generated one
        assert ops.scale_rows(x, w, 0.1, out=out) is out
        values = decode(stub, ops.scale_rows)
        assert values[:3] == [out.data_ptr(), x.data_ptr(), w.data_ptr()]
        assert values[3:7] == [4, 33, 40, 48]
        assert values[7] == struct.unpack("f", struct.pack("f", 0.1))[0]  # packed as float32, never a double
    assert len(ops.scale_rows.slow) == 1  # the second call took the generated path
    assert [launched.grid for launched in stub.launches] == [(4, 1, 1)] * 2
    assert [launched.block for launched in stub.launches] == [(128, 1, 1)] * 2
    assert all(launched.stream == 7000 for launched in stub.launches)  # torch's current stream of cuda:0


def test_outputs_are_allocated_contiguous_with_their_stride_symbols(stub: StubBackend, ops: SimpleNamespace) -> None:
    x, w = fake(stub, torch.randn(3, 50)[:, :20]), fake(stub, torch.randn(20))
    for _ in range(2):
        out = ops.scale_rows(x, w)
        assert tuple(out.shape) == (3, 20) and out.stride() == (20, 1)
        assert decode(stub, ops.scale_rows)[:7] == [out.data_ptr(), x.data_ptr(), w.data_ptr(), 3, 20, 50, 20]
    assert len(ops.scale_rows.slow) == 1


def test_out_may_be_the_input(stub: StubBackend, ops: SimpleNamespace) -> None:
    x, w = fake(stub, torch.randn(3, 8)), fake(stub, torch.randn(8))
    for _ in range(2):
        assert ops.scale_rows(x, w, out=x) is x
        assert decode(stub, ops.scale_rows)[:2] == [x.data_ptr(), x.data_ptr()]
    assert len(ops.scale_rows.slow) == 1


@pytest.mark.parametrize("case", ["dtype", "rank", "width", "last-stride", "weight", "device", "cpu", "scalar"])
def test_refused_inputs_launch_nothing(stub: StubBackend, ops: SimpleNamespace, case: str) -> None:
    x, w, out = fake(stub, torch.randn(3, 8)), fake(stub, torch.randn(8)), fake(stub, torch.empty(3, 8))
    ops.scale_rows(x, w, out=out)
    ops.scale_rows(x, w, out=out)  # loaded and warm
    before = len(stub.launches)
    bad: dict[str, tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]] = {
        "dtype": ((fake(stub, torch.randn(3, 8, dtype=torch.float64)), w), {}, cujit.TensorMatchError,
                  "'x': dtype: expected float32 or float16 or bfloat16, got float64"),
        "rank": ((fake(stub, torch.randn(3, 8, 1)), w), {}, cujit.TensorMatchError,
                 "'x': rank: expected 2 dimensions, got 3"),
        "width": ((x, w), {"out": fake(stub, torch.empty(3, 7))}, cujit.TensorMatchError,
                  r"'out': dimension 1: expected C = 8 \(bound by 'x' dimension 1\), got 7"),
        "last-stride": ((fake(stub, torch.randn(8, 3).t()), w), {}, cujit.TensorMatchError,
                        "'x': stride 1: expected 1, got 3"),
        "weight": ((x, fake(stub, torch.randn(8, dtype=torch.float16))), {}, cujit.TensorMatchError,
                   r"'w': dtype: expected dtype = float32 \(bound by 'x' dtype\), got float16"),
        "device": ((x, fake(stub, torch.randn(8), device=1)), {}, cujit.TensorMatchError,
                   r"'w': device: expected device = cuda:0 \(bound by 'x' device\), got cuda:1"),
        "cpu": ((torch.randn(3, 8), torch.randn(8)), {}, cujit.TensorMatchError,
                "'x': device: expected cuda, got cpu:0"),
        "scalar": ((x, w, "0.5"), {}, TypeError, "argument alpha: expected float, got '0.5' of type str"),
    }
    args, kwargs, error, message = bad[case]
    with pytest.raises(error, match=message):
        ops.scale_rows(*args, **kwargs)
    assert len(stub.launches) == before


def test_template_scalars_are_fenced_by_exact_type(stub: StubBackend) -> None:
    n = cujit.SymbolicShape("shape")
    i32 = cujit.TensorMatcher([n]).with_dtype("int32")
    fn = cujit.op("fenced::addc(Tensor src, int constant, *, Tensor(a!)? out=None) -> Tensor",
                  source=KERNELS.parent.parent / "cujit" / "kernels" / "add_constant.cuh",
                  kernel="add_constant_kernel<{constant}>",
                  tensors={"src": i32, "out": i32}, values={"n": "prod(shape)"}, grid="cdiv(n, 1024)", block=256,
                  args=("out", "src", "n"))
    bind_fakes(fn.op.env, stub)
    x, y = fake(stub, torch.arange(10, dtype=torch.int32)), fake(stub, torch.empty(10, dtype=torch.int32))
    fn(x, 1, out=y)
    with pytest.raises(TypeError, match="argument constant: expected int, got True of type bool"):
        fn(x, True, out=y)  # True == 1 must not find the instantiation of 1
    with pytest.raises(TypeError, match=r"argument constant: expected int, got 1\.0"):
        fn(x, 1.0, out=y)
    assert list(fn.op.table) == [(1, 0)]


def test_devices_streams_and_contexts(stub: StubBackend, ops: SimpleNamespace) -> None:
    x, w = fake(stub, torch.randn(2, 8), device=1), fake(stub, torch.randn(8), device=1)
    out = fake(stub, torch.empty(2, 8), device=1)
    stub.ctx = stub.primary_context(0)  # another device's context is current
    for _ in range(2):
        ops.scale_rows(x, w, out=out)
        launched = stub.launches[-1]
        assert launched.stream == 7001 and launched.ctx == 1001
        assert stub.ctx == 1000  # restored
    assert [device for device, _ in stub.loaded] == [1] and len(ops.scale_rows.slow) == 1


def test_a_thread_without_a_context_keeps_the_one_launched_in(stub: StubBackend, ops: SimpleNamespace) -> None:
    x, w = fake(stub, torch.randn(2, 8)), fake(stub, torch.randn(8))
    stub.ctx = 0
    ops.scale_rows(x, w, out=x)
    assert stub.ctx == 1000


def test_several_outputs_in_place_and_optional_tensors(stub: StubBackend, ops: SimpleNamespace,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    x = fake(stub, torch.randn(3, 5))
    for _ in range(2):
        mins, maxs = ops.minmax_rows(x)
        assert tuple(mins.shape) == (3,) and maxs.dtype == torch.float32
        assert decode(stub, ops.minmax_rows) == [mins.data_ptr(), maxs.data_ptr(), x.data_ptr(), 3, 5]
    given = fake(stub, torch.empty(3)), fake(stub, torch.empty(3))
    assert ops.minmax_rows(x, mins=given[0], maxs=given[1]) == given
    assert len(ops.minmax_rows.slow) == 1

    y, z = fake(stub, torch.zeros(2, 3, 4)), fake(stub, torch.ones(2, 3, 4))
    for _ in range(2):
        assert ops.axpy(y, z, 0.5) is None
        assert decode(stub, ops.axpy)[3] == 24 and stub.launches[-1].grid == (1, 1, 1)

    v, scale = fake(stub, torch.ones(300)), fake(stub, torch.ones(1))
    table = ops.maybe_scaled.op.table
    for _ in range(2):
        out = ops.maybe_scaled(v, scale)
        values = stub.launches[-1].values(table[(cujit.DType.of("float32"), True, 0)].params)
        assert values[2] == scale.data_ptr() and values[3] == 300 and out is not None
    for _ in range(2):
        ops.maybe_scaled(v)
        values = stub.launches[-1].values(table[(cujit.DType.of("float32"), False, 0)].params)
        assert values[2] == 0  # the absent tensor: a null pointer
    assert len(table) == 2  # one instantiation each
    assert len(ops.axpy.slow) == 1 and len(ops.maybe_scaled.slow) == 2


def test_two_launches_share_a_stream_and_a_scratch_buffer(stub: StubBackend, ops: SimpleNamespace,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    allocated: list[FakeCudaTensor] = []

    def allocate(library: str, shape: tuple[int, ...], strides: Any, dtype: cujit.DType, dev: int) -> Any:
        allocated.append(fake(stub, torch.empty(shape, dtype=getattr(torch, dtype.name)), dev))
        return allocated[-1]

    monkeypatch.setattr(op_generic, "allocate", allocate)
    ops.total.op.env["_torch_empty"] = lambda shape, dtype, device: allocate("torch", shape, None,
                                                                              cujit.DType.of(dtype), device)
    x, out = fake(stub, torch.ones(1000)), fake(stub, torch.empty(1))
    for _ in range(2):
        ops.total(x, out=out)
        first, second = stub.launches[-2:]
        assert first.grid == (4, 1, 1) and second.grid == (1, 1, 1) and first.stream == second.stream
        k1, _ = ops.total.op.table[(0,)]
        scratch = allocated[-1]
        assert first.values(k1.params) == [scratch.data_ptr(), x.data_ptr(), 1000]
        assert tuple(scratch.shape) == (4,)
    assert len(ops.total.slow) == 1


def test_an_empty_grid_launches_and_compiles_nothing(stub: StubBackend, ops: SimpleNamespace) -> None:
    before = cujit.cache_stats()["compiles"]
    out = ops.scale_rows(fake(stub, torch.randn(0, 8)), fake(stub, torch.randn(8)))
    assert tuple(out.shape) == (0, 8) and not stub.launches
    assert cujit.cache_stats()["compiles"] == before


def test_a_launch_the_driver_refuses_is_a_launch_error(stub: StubBackend, ops: SimpleNamespace) -> None:
    x, w = fake(stub, torch.randn(2, 8)), fake(stub, torch.randn(8))
    ops.scale_rows(x, w, out=x)
    stub.fail = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"
    with pytest.raises(cujit.LaunchError, match=r"launch of scale_rows<fp32_t> on cuda:0 failed: "
                                                r".*CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"):
        ops.scale_rows(x, w, out=x)


def test_argument_count_mismatch_with_the_kernel_is_named(stub: StubBackend) -> None:
    fn = _declare(args=("y", "x", "n"), schema="decl::short(Tensor(a!) y, Tensor x, float a) -> ()")
    bind_fakes(fn.op.env, stub)
    with pytest.raises(cujit.CujitError, match=r"the op passes 3 arguments \(y, x, n\) but axpy<fp32_t> takes 4"):
        fn(fake(stub, torch.ones(4)), fake(stub, torch.ones(4)), 1.0)


# ------------------------------------------------------------------------------------------------ args vs kernel
F32_BF16 = cujit.TensorMatcher([cujit.SymbolicSize("n")]).with_dtype("float32", "bfloat16")


@pytest.mark.parametrize(("changes", "message"), [
    # axpy<fp32_t>(float* y, const float* x, float a, int64_t n)
    ({"args": ("n", "x", "a", "y")}, r"decl::axpy: argument 'n' goes to parameter 0 \(float\*\) of axpy<fp32_t>: "
                                     r"expected a tensor \(a pointer parameter\), got a scalar \(symbol n, an int\)"),
    ({"args": ("y", "a", "x", "n")}, r"argument 'a' goes to parameter 1 \(const float\*\) of axpy<fp32_t>: "
                                     r"expected a tensor .*got a scalar \(parameter a of type float\)"),
    ({"args": ("y", "x", "y", "n")}, r"argument 'y' goes to parameter 2 \(float\) of axpy<fp32_t>: expected a "
                                     r"scalar of type float, got a tensor"),
    ({"kernel": "axpy<bf16_t>"}, r"argument 'y' goes to parameter 0 \(__nv_bfloat16\*\) of axpy<bf16_t>: expected "
                                 r"a tensor of bfloat16, got a tensor of float32"),
    ({"tensors": {"y": F32_BF16, "x": F32_BF16}},
     r"argument 'y' goes to parameter 0 \(float\*\) of axpy<fp32_t>: expected a tensor of float32, got a tensor "
     r"that may be bfloat16 \(its TensorMatcher allows float32 or bfloat16\)"),
    ({"tensors": {"y": cujit.TensorMatcher([cujit.SymbolicSize("n")]),
                  "x": cujit.TensorMatcher([cujit.SymbolicSize("n")])}},
     r"argument 'y' .*expected a tensor of float32, got a tensor of any dtype"),
])
def test_args_that_the_kernel_cannot_take_are_refused_before_any_launch(stub: StubBackend, changes: dict[str, Any],
                                                                        message: str) -> None:
    fn = _declare(**changes)
    bind_fakes(fn.op.env, stub)
    y, x = fake(stub, torch.ones(4)), fake(stub, torch.ones(4))
    for _ in range(2):  # refused again: a refused kernel never enters the table the fast path reads
        with pytest.raises(cujit.CujitError, match=message):
            fn(y, x, 1.0)
    assert not stub.launches and not fn.op.table


def test_args_are_checked_once_per_kernel_and_device(stub: StubBackend, ops: SimpleNamespace,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    check = ops_module.check_kernel_args

    def counting(op_name: str, expression: str, *rest: Any) -> None:
        calls.append(expression)
        check(op_name, expression, *rest)

    monkeypatch.setattr(ops_module, "check_kernel_args", counting)
    for device in (0, 0, 0, 1, 1):
        x, w = fake(stub, torch.randn(2, 8), device), fake(stub, torch.randn(8), device)
        ops.scale_rows(x, w, out=x)
        half = fake(stub, torch.randn(2, 8, dtype=torch.float16), device)
        ops.scale_rows(half, fake(stub, torch.randn(8, dtype=torch.float16), device), out=half)
    assert sorted(calls) == ["scale_rows<fp16_t>"] * 2 + ["scale_rows<fp32_t>"] * 2
    assert len(stub.launches) == 10


def test_two_launches_check_each_kernel_with_scratch_and_optional_tensors(stub: StubBackend,
                                                                         ops: SimpleNamespace) -> None:
    passed = ops.total.op._passed({})
    assert passed["partials"].dtypes == (cujit.DType.of("float32"),) and not passed["blocks"].tensor
    scaled = ops.maybe_scaled.op._passed({"mdt": cujit.DType.of("float16"), "scaled": True})
    assert scaled["scale"].dtypes == (cujit.DType.of("float32"),) and scaled["x"].dtypes == (cujit.DType.of("float16"),)


@pytest.mark.parametrize(("cpp", "dtype"), [
    ("float*", "float32"), ("const float*", "float32"), ("const __nv_bfloat16*", "bfloat16"), ("__half*", "float16"),
    ("long*", "int64"), ("const unsigned int*", "uint32"), ("__nv_fp8_e4m3*", "float8_e4m3fn"), ("bool*", "bool"),
    ("const unsigned char*", None), ("char*", None), ("void*", None), ("float**", None), ("uint4*", None),
])
def test_pointee_dtypes_that_cujit_knows(cpp: str, dtype: str | None) -> None:
    from cujit._runtime.op_args import pointee_dtype
    from cujit._runtime.signature import Param

    found = pointee_dtype(Param("pointer", 8, cpp, "Q"))
    assert (found.name if found is not None else None) == dtype


# ------------------------------------------------------------------------------------------------ sizes, rules
@pytest.mark.parametrize(("changes", "message"), [
    ({"grid": "n / 256"}, r"decl::axpy grid: n / 256 must be an int, got 0.015625 of type float"),
    ({"block": (256, "n / 4")}, r"decl::axpy block\[1\]: n / 4 must be an int, got 1.0 of type float"),
    ({"shared_mem": "n * 4.0"}, r"decl::axpy shared_mem: n \* 4.0 must be an int, got 16.0 of type float"),
    ({"grid": "n / 8 - 0.5"}, r"decl::axpy grid: n / 8 - 0.5 must be an int, got 0.0 of type float"),  # empty
    ({"values": {"v": "n.bit_lenght()"}, "grid": "v"},
     r"decl::axpy values\['v'\]: n.bit_lenght\(\) raised AttributeError: 'int' object has no attribute "
     r"'bit_lenght'"),
    ({"checks": [("n.real.imag.foo", "never")]}, r"decl::axpy checks\[0\]: n.real.imag.foo raised AttributeError"),
])
def test_sizes_must_be_ints_and_rule_errors_name_the_rule(stub: StubBackend, changes: dict[str, Any],
                                                          message: str) -> None:
    fn = _declare(**changes)
    bind_fakes(fn.op.env, stub)
    with pytest.raises(cujit.CujitError, match=message):
        fn(fake(stub, torch.ones(4)), fake(stub, torch.ones(4)), 1.0)
    assert not stub.launches and not fn.op.table


@pytest.mark.parametrize(("changes", "message"), [
    ({"block": 256.0}, r"decl::axpy block: 256.0 must be an int, got 256.0 of type float"),
    ({"grid": True}, r"decl::axpy grid: True must be an int, got True of type bool"),
    ({"shared_mem": 0.5}, r"decl::axpy shared_mem: 0.5 must be an int"),
])
def test_constant_sizes_must_be_ints(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(cujit.CujitError, match=message):
        _declare(**changes)


def test_a_size_or_value_going_wrong_later_is_refused_by_the_generated_path_alike(stub: StubBackend) -> None:
    def blocks(n: int) -> float:
        return n // 2 if n in (2, 4) else n / 2

    fn = _declare(values={"blocks": blocks, "ratio": "256 // (n - 5)"}, grid="blocks", shared_mem="4 * blocks")
    bind_fakes(fn.op.env, stub)

    def call(n: int) -> None:
        fn(fake(stub, torch.ones(n)), fake(stub, torch.ones(n)), 1.0)

    call(4)
    slow = count_slow(fn)
    call(2)
    assert len(stub.launches) == 2 and stub.launches[-1].grid == (1, 1, 1) and stub.launches[-1].smem == 4
    with pytest.raises(cujit.CujitError, match=r"decl::axpy grid: blocks must be an int, got 3.5 of type float"):
        call(7)
    with pytest.raises(cujit.CujitError, match=r"decl::axpy grid: blocks must be an int, got 0.0 of type float"):
        call(0)  # an empty grid launches nothing, and is refused all the same
    with pytest.raises(cujit.CujitError, match=r"decl::axpy values\['ratio'\]: 256 // \(n - 5\) raised "
                                               r"ZeroDivisionError"):
        call(5)
    assert not slow and len(stub.launches) == 2  # the generated path itself refused them, and launched nothing


def test_rules_may_use_comprehensions_and_lambdas(stub: StubBackend) -> None:
    fn = _declare(values={"v": "max([k for k in (1, n) if k > 0])", "w": "len({k: j for k, j in [(n, 1)]})",
                          "u": "(lambda m: m * w)(v)"}, grid="u")
    assert fn.op.values["v"].names == ("max", "n") and fn.op.values["u"].names == ("w", "v")
    bind_fakes(fn.op.env, stub)
    for _ in range(2):
        fn(fake(stub, torch.ones(6)), fake(stub, torch.ones(6)), 1.0)
        assert stub.launches[-1].grid == (6, 1, 1)


# ------------------------------------------------------------------------------------------------ the function
def test_generated_source_is_readable_and_shows_in_tracebacks(stub: StubBackend, ops: SimpleNamespace) -> None:
    source = inspect.getsource(ops.scale_rows)
    assert source.startswith("def scale_rows(x, w, alpha=_default_alpha, *, out=_default_out):")
    assert "_launch_kernel(" in source
    x, w = fake(stub, torch.randn(2, 8)), fake(stub, torch.randn(8))
    ops.scale_rows(x, w, out=x)
    stub.fail = "boom"
    try:
        ops.scale_rows(x, w, out=x)
    except cujit.LaunchError:
        text = traceback.format_exc()
    assert "<cujit op cujit_test::scale_rows" in text
    assert "raise _failed0(_exc, _k," in text  # the generated line itself is shown


def test_signature_and_registry(ops: SimpleNamespace) -> None:
    assert str(inspect.signature(ops.scale_rows)) == "(x, w, alpha=1.0, *, out=None)"
    assert ops.scale_rows.op in cujit.ops()
    assert ops.scale_rows.op.name == "cujit_test::scale_rows"
    assert ops.scale_rows.op.instances() == [{"dtype": "float32"}, {"dtype": "float16"}, {"dtype": "bfloat16"}]
    module = ops.scale_rows.op.module(dtype="bfloat16")
    assert module is ops.scale_rows.op.module(dtype=torch.bfloat16)
    assert module.scale_rows.expression == "scale_rows<bf16_t>"
    with pytest.raises(cujit.CujitError, match="expected the template fields dtype; missing dtype; unknown dtipe"):
        ops.scale_rows.op.module(dtipe="float32")


def test_shipped_ops_are_found_without_a_list() -> None:
    from cujit.tools.shipped import shipped_ops

    names = [o.name for o in shipped_ops()]
    assert "cujit::add_constant" in names
    assert cujit.add_constant is __import__("cujit.add_constant", fromlist=["add_constant"])


def test_op_functions_pickle_by_reference() -> None:
    from cujit.add_constant import add_constant

    assert pickle.loads(pickle.dumps(add_constant)) is add_constant


@pytest.mark.parametrize("first", ["import cujit.add_constant", "import cujit", "from cujit import add_constant",
                                   "from cujit.add_constant import add_constant"])
def test_cujit_dot_name_is_the_op_module_in_any_import_order(first: str) -> None:
    import subprocess
    import sys

    code = (f"{first}\nimport types\nimport cujit\nimport cujit.add_constant\nimport cujit.rms_norm as m\n"
            "from cujit.add_constant import add_constant\nfrom cujit import add_constant as module\n"
            "assert isinstance(cujit.add_constant, types.ModuleType) and module is cujit.add_constant\n"
            "assert cujit.add_constant.add_constant is add_constant\n"
            "assert add_constant.op.name == 'cujit::add_constant' and callable(m.norm_config)\n"
            "assert isinstance(cujit.silu_and_mul, types.ModuleType)\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_torch_ops_are_registered_from_the_declaration(ops: SimpleNamespace) -> None:
    handle = torch.ops.cujit_test.scale_rows
    assert str(handle.default._schema) == "cujit_test::scale_rows(Tensor x, Tensor w, float alpha=1.) -> Tensor"
    assert str(handle.out._schema) == ("cujit_test::scale_rows.out(Tensor x, Tensor w, float alpha=1., *, "
                                       "Tensor(a!) out) -> ()")
    assert str(torch.ops.cujit_test.axpy.default._schema) == "cujit_test::axpy(Tensor(a!) y, Tensor x, float a) -> ()"
    assert ops.scale_rows.op.torch_op is handle
    # The registered kernels are the op's own function: a CPU tensor gets its message.
    with pytest.raises(cujit.TensorMatchError, match="'x': device: expected cuda, got cpu:0"):
        handle(torch.randn(2, 3), torch.randn(3), 1.0)


def test_late_values_read_outputs_and_aligned_is_inlined(stub: StubBackend) -> None:
    T, C, XS, OS = (cujit.SymbolicSize(n) for n in ("T", "C", "x_stride", "out_stride"))
    dtype = cujit.SymbolicDType("dtype")

    def rows(stride: Any) -> cujit.TensorMatcher:
        return cujit.TensorMatcher([T, C]).with_strides([stride, 1]).with_dtype("float32", symbol=dtype)

    seen: list[tuple[Any, ...]] = []

    def threads(C: int, out_stride: int, vector: bool) -> int:
        seen.append((C, out_stride, vector))
        return 32 if vector else 64

    fn = cujit.op(
        "late::scale_rows(Tensor x, Tensor w, float alpha=1.0, *, Tensor(a!)? out=None) -> Tensor",
        source=KERNELS / "ops_test.cuh", kernel="scale_rows<{dtype}>",
        tensors={"x": rows(XS), "w": cujit.TensorMatcher([C]).with_dtype(symbol=dtype), "out": rows(OS)},
        values={"vector": "aligned(x, 16) and aligned(out, 16) and x_stride % 4 == 0 and out_stride % 4 == 0",
                "threads": threads},
        checks=[("out_stride >= C", "out: rows overlap")],
        grid="T", block="threads", args=("out", "x", "w", "T", "C", "x_stride", "out_stride", "alpha"),
    )
    assert fn.op.late_values == {"vector", "threads"} and fn.op.late_checks == {0}
    source = inspect.getsource(fn)
    assert "x.data_ptr() % 16 == 0" in source and "out.data_ptr() % 16 == 0" in source
    assert source.index("out = _torch_empty") < source.index("vector = ")
    bind_fakes(fn.op.env, stub)
    base = torch.zeros(3, 24)
    x, w = fake(stub, base[:, :8]), fake(stub, torch.ones(8))
    for _ in range(2):
        fn(x, w)  # allocated out: contiguous rows of 8
        assert stub.launches[-1].block == (32, 1, 1)  # rows 24 apart, aligned: vectors
        fn(x, w, out=fake(stub, torch.zeros(3, 9)[:, :8]))  # rows 9 apart: not vectors
        assert stub.launches[-1].block == (64, 1, 1)
    assert {s[1] for s in seen} == {8, 9}
    with pytest.raises(cujit.CheckError, match=r"late::scale_rows: out: rows overlap \(out_stride = 4, C = 8\)"):
        fn(x, w, out=fake(stub, torch.zeros(40).as_strided((3, 8), (4, 1))))


def test_a_variant_is_the_same_op_with_parts_changed(ops: SimpleNamespace) -> None:
    plain = ops.scale_rows.op.variant("cujit_variant", pdl=True)
    assert plain.op.name == "cujit_variant::scale_rows" and plain.op.pdl and not ops.scale_rows.op.pdl
    assert plain.op.instances() == ops.scale_rows.op.instances()
    with pytest.raises(cujit.CujitError, match="variant\\(\\): no part named colour"):
        ops.scale_rows.op.variant("x", colour=1)


def test_torch_imported_after_the_op_binds_on_the_first_call() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cujit.add_constant import add_constant\n"
        "assert 'torch' not in sys.modules\n"
        "env = add_constant.op.env\n"
        "import torch\n"
        "import cujit\n"
        "try:\n"
        "    add_constant(torch.zeros(3, dtype=torch.int32), 1)\n"
        "except cujit.TensorMatchError as exc:\n"
        "    assert 'device: expected cuda' in str(exc)\n"
        "assert env['_Tensor'] is torch.Tensor and env['_torch_empty_like'] is torch.empty_like\n"
        "assert hasattr(torch.ops.cujit, 'add_constant')\n"  # registered on that first call
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_importing_every_shipped_op_touches_no_driver() -> None:
    """Declaring an op binds no driver: with CuPy's driver bindings made unimportable, every op module imports."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        "for name in ('cupy.cuda.driver', 'cupy.cuda.runtime', 'cupy_backends.cuda.api.driver',\n"
        "             'cupy_backends.cuda.api.runtime'):\n"
        "    sys.modules[name] = None\n"  # importing any of them now fails
        "import torch\n"
        "import cujit\n"
        "from cujit._runtime import driver, ops\n"
        "for name in ops.shipped_module_names():\n"
        "    importlib.import_module(f'cujit.{name}')\n"
        "assert len(cujit.ops()) >= 11 and not driver._ACTIVE, driver._ACTIVE\n"
        "from cujit.add_constant import add_constant\n"
        "try:\n"
        "    add_constant(torch.zeros(3, dtype=torch.int32), 1)\n"
        "except cujit.TensorMatchError as exc:\n"
        "    assert 'device: expected cuda' in str(exc)\n"
        "assert not driver._ACTIVE\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "ok", out.stderr


# ------------------------------------------------------------------------------------------------ calls and fields
class _Plan(NamedTuple):
    threads: int
    kind: str


def test_call_values_and_attribute_fields(stub: StubBackend) -> None:
    T, C, XS, OS = (cujit.SymbolicSize(n) for n in ("T", "C", "x_stride", "out_stride"))
    dtype = cujit.SymbolicDType("dtype")

    def rows(stride: Any) -> cujit.TensorMatcher:
        return cujit.TensorMatcher([T, C]).with_strides([stride, 1]).with_dtype("float32", symbol=dtype)

    seen: list[tuple[Any, ...]] = []

    def plan_for(cols: int, kind: cujit.DType, wide: bool) -> _Plan:  # parameters named freely: passed in order
        seen.append((cols, kind.itemsize, wide))
        return _Plan(32 if wide else 64, kind.name)

    fn = cujit.op(
        "calls::scale_rows(Tensor x, Tensor w, float alpha=1.0, *, Tensor(a!)? out=None) -> Tensor",
        source=KERNELS / "ops_test.cuh", kernel="scale_rows<{plan.kind}>",
        tensors={"x": rows(XS), "w": cujit.TensorMatcher([C]).with_dtype(symbol=dtype), "out": rows(OS)},
        values={"plan": (plan_for, "C", "dtype", "C > 16")},
        grid="T", block="plan.threads", args=("out", "x", "w", "T", "C", "x_stride", "out_stride", "alpha"),
    )
    assert fn.op.fields == ("plan.kind",) and fn.op.values["plan"].names == ("C", "dtype")
    source = inspect.getsource(fn)
    assert "_value_plan(C, dtype, C > 16)" in source and "plan.kind" in source
    bind_fakes(fn.op.env, stub)
    fn.slow = count_slow(fn)
    x, w = fake(stub, torch.randn(3, 20)), fake(stub, torch.randn(20))
    for _ in range(2):
        fn(x, w)
        assert stub.launches[-1].block == (32, 1, 1)
    assert len(fn.slow) == 1  # the second call took the generated path
    assert list(fn.op.table) == [("float32", 0)] and set(seen) == {(20, 4, True)}
    fn(fake(stub, torch.randn(3, 8)), fake(stub, torch.randn(8)))
    assert stub.launches[-1].block == (64, 1, 1) and seen[-1] == (8, 4, False)
    # module() takes a dotted field by its root or by its whole name.
    assert fn.op.module(plan=_Plan(1, "bfloat16")) is fn.op.module(**{"plan.kind": "bfloat16"})
    with pytest.raises(cujit.CujitError, match=r"missing plan\.kind"):
        fn.op.module(kind="float32")
    with pytest.raises(cujit.CujitError, match="has no attribute 'kind'"):
        fn.op.module(plan=(1, "float32"))


def test_call_rules_are_worded_and_checked() -> None:
    def boom(n: int) -> int:
        raise ZeroDivisionError("no")

    fn = _declare(values={"v": (boom, "n + 1")}, grid="v")
    assert fn.op.values["v"].shown.endswith("boom(n + 1)")
    with pytest.raises(cujit.CujitError, match=r"decl::axpy values\['v'\]: .*boom\(n \+ 1\) raised ZeroDivisionError"):
        fn.op.values["v"].evaluate({"n": 3})
    with pytest.raises(cujit.CujitError, match="unknown name 'm'"):
        _declare(values={"v": (boom, "m")}, grid="v")
    with pytest.raises(TypeError, match="argument 1 of a call: expected a name, an expression string or a constant"):
        _declare(values={"v": (boom, [1])}, grid="v")
    with pytest.raises(cujit.CujitError, match=r"kernel: \{plan\.\} must be a name"):
        _declare(kernel="axpy<{plan.}>")
    # a grid given as one call, not as dimensions
    assert len(_declare(grid=(boom, "n")).op.launches[0].grid) == 1


def test_the_fake_computes_only_what_output_shapes_need() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, half = cujit.SymbolicSize("n"), cujit.SymbolicSize("half")
    f32 = ("float32",)
    planned: list[int] = []

    def plan(length: int) -> int:  # would fail on a symbolic size, and a traced call launches nothing anyway
        planned.append(length)
        return 256

    fn = cujit.op("fake::halve(Tensor x, *, Tensor(a!)? out=None) -> Tensor", source=KERNELS / "ops_test.cuh",
                  kernel="axpy<fp32_t>", tensors={"x": cujit.TensorMatcher([n]).with_dtype(*f32),
                                                  "out": cujit.TensorMatcher([half]).with_dtype(*f32)},
                  values={"quarter": "n // 4", "half": "quarter * 2", "threads": (plan, "n")},
                  grid=1, block="threads", args=("out", "x", "n", "half"))
    assert fn.op.shape_values == ("quarter", "half")
    with FakeTensorMode():
        out = fn.op.torch_op.default(torch.empty(12, device="cuda"))
    assert tuple(out.shape) == (6,) and out.device.type == "cuda"
    assert planned == []


def _halving_op(name: str) -> Any:
    n, half = cujit.SymbolicSize("n"), cujit.SymbolicSize("half")
    f32 = ("float32",)
    return cujit.op(f"{name}(Tensor x, *, Tensor(a!)? out=None) -> Tensor", source=KERNELS / "ops_test.cuh",
                    kernel="axpy<fp32_t>", tensors={"x": cujit.TensorMatcher([n]).with_dtype(*f32),
                                                    "out": cujit.TensorMatcher([half]).with_dtype(*f32)},
                    values={"half": "n // 2"}, grid=1, block=32, args=("out", "x", "n", "half"))


@pytest.mark.parametrize("registry", ["torch's registry", "the public function"])
def test_fake_implementations_are_registered_without_inspecting_the_caller(registry: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake goes into torch's registry directly (no inspect of the declaring frame); where that registry is not
    # as expected, torch.library.register_fake does it. Either way the functional and out forms trace on fakes.
    from torch._library import simple_registry
    from torch._subclasses.fake_tensor import FakeTensorMode

    public = torch.library.register_fake
    calls: list[str] = []

    def counting(qualname: str, fake: Any, **kwargs: Any) -> Any:
        calls.append(qualname)
        return public(qualname, fake, **kwargs)

    monkeypatch.setattr(torch.library, "register_fake", counting)
    name = "fakereg::halve_a" if registry == "torch's registry" else "fakereg::halve_b"
    if registry == "the public function":  # a registry whose register() takes other arguments than cujit passes
        original = simple_registry.FakeImplHolder.register

        def other_signature(self: Any, fake: Any, source: str, *args: Any, **kwargs: Any) -> Any:
            if source.endswith(")"):  # cujit's own call names the op in its source
                raise TypeError("register() got an unexpected keyword argument 'lib'")
            return original(self, fake, source, *args, **kwargs)

        monkeypatch.setattr(simple_registry.FakeImplHolder, "register", other_signature)
    fn = _halving_op(name)
    torch_op = fn.op.torch_op
    assert calls == ([] if registry == "torch's registry" else [name, f"{name}.out"])
    monkeypatch.undo()
    with FakeTensorMode():
        x = torch.empty(12, device="cuda")
        assert tuple(torch_op.default(x).shape) == (6,)
        out = torch.empty(6, device="cuda")
        assert torch_op.out(x, out=out) is None
