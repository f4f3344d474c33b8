"""The op API on a GPU: results against torch, CuPy arrays, torch.library (opcheck), torch.compile and CUDA graphs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest

import cujit
from cujit.add_constant import add_constant
from tests import op_decls

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}


@pytest.fixture(scope="module")
def ops() -> SimpleNamespace:
    return op_decls.declare("cujit_gpu_test")


def _scale_rows_ref(x: Any, w: Any, alpha: float) -> Any:
    return (x.float() * w.float() * torch.tensor(alpha, dtype=torch.float32)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_strided_rows_outputs_and_aliasing(ops: SimpleNamespace, dtype: Any) -> None:
    base = torch.randn(37, 300, device="cuda", dtype=dtype)
    x, w = base[:, 5:260], torch.randn(255, device="cuda", dtype=dtype)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(ops.scale_rows(x, w, 0.5), _scale_rows_ref(x, w, 0.5), rtol=rtol, atol=atol)
    out = torch.full((37, 400), float("nan"), device="cuda", dtype=dtype)[:, :255]
    assert ops.scale_rows(x, w, 0.5, out=out) is out
    torch.testing.assert_close(out, _scale_rows_ref(x, w, 0.5), rtol=rtol, atol=atol)
    expected = _scale_rows_ref(x, w, 2.0)
    ops.scale_rows(x, w, 2.0, out=x)  # in place, on a strided view
    torch.testing.assert_close(x, expected, rtol=rtol, atol=atol)


def test_several_outputs_in_place_optional_and_two_launches(ops: SimpleNamespace) -> None:
    x = torch.randn(9, 77, device="cuda")
    mins, maxs = ops.minmax_rows(x)
    torch.testing.assert_close(mins, x.min(dim=1).values)
    torch.testing.assert_close(maxs, x.max(dim=1).values)
    y, z = torch.randn(3, 5, 7, device="cuda"), torch.randn(3, 5, 7, device="cuda")
    expected = y + 0.25 * z
    assert ops.axpy(y, z, 0.25) is None
    torch.testing.assert_close(y, expected)
    v, scale = torch.randn(1001, device="cuda"), torch.tensor([3.0], device="cuda")
    torch.testing.assert_close(ops.maybe_scaled(v, scale), v * 3.0)
    torch.testing.assert_close(ops.maybe_scaled(v), v)
    big = torch.rand(100_000, device="cuda")
    torch.testing.assert_close(ops.total(big), big.sum().reshape(1), rtol=1e-4, atol=1e-2)


def test_weights_as_parameters_take_the_fast_path(ops: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(4, 64, device="cuda"), torch.nn.Parameter(torch.randn(64, device="cuda"))
    ops.scale_rows(x, w)  # compiles and loads
    slow: list[Any] = []
    env = ops.scale_rows.op.env
    monkeypatch.setitem(env, "_slow", lambda *args, **kwargs: slow.append(args))
    with torch.no_grad():
        ops.scale_rows(x, w)
    assert not slow


def test_cupy_arrays(ops: SimpleNamespace) -> None:
    cupy = pytest.importorskip("cupy")
    x, w = cupy.random.randn(8, 40, dtype=cupy.float32), cupy.random.randn(40, dtype=cupy.float32)
    for _ in range(2):  # the generic path first, then the generated CuPy path
        out = ops.scale_rows(x, w, 3.0)
        assert isinstance(out, cupy.ndarray)
        cupy.testing.assert_allclose(out, x * w * 3.0, rtol=1e-5, atol=1e-5)
    y = cupy.arange(10, dtype=cupy.int32)
    assert bool((add_constant(y, 4) == y + 4).all())


def test_opcheck_on_every_declared_feature(ops: SimpleNamespace) -> None:
    x, w = torch.randn(5, 33, device="cuda"), torch.randn(33, device="cuda")
    for handle, args, kwargs in [
        (torch.ops.cujit_gpu_test.scale_rows.default, (x, w, 0.5), {}),
        (torch.ops.cujit_gpu_test.scale_rows.out, (x, w, 0.5), {"out": torch.empty_like(x)}),
        (torch.ops.cujit_gpu_test.minmax_rows.default, (x,), {}),
        (torch.ops.cujit_gpu_test.axpy.default, (torch.randn(2, 9, device="cuda"), torch.randn(2, 9, device="cuda"),
                                                 2.0), {}),
        (torch.ops.cujit_gpu_test.maybe_scaled.default, (w, torch.ones(1, device="cuda")), {}),
        (torch.ops.cujit_gpu_test.total.default, (w,), {}),
        (torch.ops.cujit.add_constant.default, (torch.arange(50, dtype=torch.int32, device="cuda"), 7), {}),
        (torch.ops.cujit.add_constant.out, (torch.arange(50, dtype=torch.int32, device="cuda"), 7),
         {"out": torch.empty(50, dtype=torch.int32, device="cuda")}),
    ]:
        torch.library.opcheck(handle, args, kwargs)


def test_compiled_function_with_allocating_and_in_place_ops_matches_eager(ops: SimpleNamespace) -> None:
    def f(x: Any, w: Any, y: Any) -> Any:
        h = ops.scale_rows(x, w, 0.5)              # allocating
        ops.axpy(y, h, 2.0)                          # in place
        out = torch.empty_like(h)
        ops.scale_rows(h, w, 3.0, out=out)           # into a given output
        return add_constant(torch.arange(8, dtype=torch.int32, device=x.device), 5), out + 1

    x, w = torch.randn(16, 96, device="cuda"), torch.randn(96, device="cuda")
    y_eager, y_compiled = torch.randn(16, 96, device="cuda"), None
    y_compiled = y_eager.clone()
    expected = f(x, w, y_eager)
    compiled = torch.compile(f, fullgraph=True)
    got = compiled(x, w, y_compiled)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(y_compiled, y_eager)


def test_compiled_function_replays_in_a_cuda_graph_with_new_data(ops: SimpleNamespace) -> None:
    x, w = torch.randn(8, 64, device="cuda"), torch.randn(64, device="cuda")
    compiled = torch.compile(lambda a, b: ops.scale_rows(a, b, 2.0) + 1, fullgraph=True, backend="aot_eager")
    compiled(x, w)  # compile and load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(x, w)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        w.copy_(torch.randn_like(w))
        graph.replay()
        torch.testing.assert_close(out, x * w * 2.0 + 1, rtol=1e-5, atol=1e-5)


def test_first_call_inside_a_cuda_graph_capture(ops: SimpleNamespace) -> None:
    x = torch.arange(4096, dtype=torch.int32, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = add_constant(x, 123_457)  # a new instantiation: compiled and loaded during the capture
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, x + 123_457)


def test_first_call_inside_torch_compile_with_a_cold_cache(tmp_path: Any) -> None:
    code = textwrap.dedent("""
        import torch, cujit
        from cujit.add_constant import add_constant
        f = torch.compile(lambda x: add_constant(x, 41) * 2, fullgraph=True)
        x = torch.arange(100, dtype=torch.int32, device="cuda")
        assert torch.equal(f(x), (x + 41) * 2)
        print("compiles", cujit.cache_stats()["compiles"])
    """)
    env = {**os.environ, "CUJIT_CACHE_DIR": str(tmp_path / "cold")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiles 1" in out.stdout


def test_refused_inputs_touch_nothing(ops: SimpleNamespace) -> None:
    x, w = torch.randn(4, 16, device="cuda"), torch.randn(16, device="cuda")
    out = torch.full((4, 16), 7.0, device="cuda")
    for args, kwargs in [((x, w.half()), {"out": out}), ((x, torch.randn(15, device="cuda")), {"out": out}),
                         ((x.t(), w), {"out": out}), ((x, w.cpu()), {"out": out}),
                         ((x, w), {"out": torch.empty(4, 16, device="cuda", dtype=torch.float16)})]:
        with pytest.raises(cujit.TensorMatchError):
            ops.scale_rows(*args, **kwargs)
    torch.cuda.synchronize()
    assert bool((out == 7.0).all())


@pytest.mark.gpu(count=2)
def test_tensors_on_the_second_gpu(ops: SimpleNamespace) -> None:
    x, w = torch.randn(6, 50, device="cuda:1"), torch.randn(50, device="cuda:1")
    for _ in range(2):
        out = ops.scale_rows(x, w, 1.5)
        assert out.device == x.device
        torch.testing.assert_close(out, x * w * 1.5)
    with torch.cuda.device(1):
        torch.testing.assert_close(ops.scale_rows(x, w, 1.5), x * w * 1.5)


def test_a_declaration_made_again_compiles_too() -> None:
    again = op_decls.declare("cujit_gpu_test")  # a reloaded module, a notebook cell run twice
    x, w = torch.randn(4, 32, device="cuda"), torch.randn(32, device="cuda")
    compiled = torch.compile(lambda a, b: again.scale_rows(a, b, 3.0) - 1, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, w), x * w * 3.0 - 1)
