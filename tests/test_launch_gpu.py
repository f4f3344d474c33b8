"""The launch path on a GPU: packing by parameter type, streams, ordering, graphs, limits, faults, devices."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import pytest

import cujit
from cujit.add_constant import add_constant
from tests.conftest import trapped_launch

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
KERNELS = str(Path(__file__).parent / "kernels" / "launch_test.cuh")


@functools.cache
def _module() -> cujit.JitModule:
    names = ["scalars", "exact_float", "by_value", "spin_then_set", "copy_one", "reverse_smem", "trap_now"]
    return cujit.load_jit(
        "launch_test",
        cuda_files=[KERNELS],
        cuda_wrappers=[*((n, n) for n in names), ("fill_f32", "fill<float>"), ("fill_i64", "fill<int64_t>")],
    )


def test_scalars_packed_by_parameter_type() -> None:
    out = torch.zeros(8, device="cuda")
    cujit.LaunchKernel(1, 1)(_module().scalars, out, 1.5, 2.25, -7, 200, True, 2**40, 0.5, 3.0)
    torch.cuda.synchronize()
    assert out.tolist() == [1.5, 2.25, -7.0, 200.0, 1.0, float(2**40), 0.5, 3.0]


def test_python_float_is_float32_for_a_float_parameter() -> None:
    out = torch.zeros(1, dtype=torch.float64, device="cuda")
    cujit.LaunchKernel(1, 1)(_module().exact_float, out, 0.1)
    torch.cuda.synchronize()
    assert out.item() == float(np.float32(0.1)) != 0.1


def test_numpy_scalars() -> None:
    out = torch.zeros(8, device="cuda")
    cujit.LaunchKernel(1, 1)(_module().scalars, out, np.float32(1.5), np.float64(2.0), np.int32(-3), np.uint8(4),
                             np.bool_(False), np.int64(5), np.float16(0.25), 1.0)
    torch.cuda.synchronize()
    assert out.tolist() == [1.5, 2.0, -3.0, 4.0, 0.0, 5.0, 0.25, 1.0]


def test_by_value_record() -> None:
    class Pair(ctypes.Structure):
        _fields_ = (("a", ctypes.c_int32), ("b", ctypes.c_float))

    out = torch.zeros(2, device="cuda")
    cujit.LaunchKernel(1, 1)(_module().by_value, out, Pair(9, 0.5))
    torch.cuda.synchronize()
    assert out.tolist() == [9.0, 0.5]
    with pytest.raises(cujit.LaunchError, match=r"argument 1 \(Pair\): expected 8 bytes, got 4"):
        cujit.LaunchKernel(1, 1)(_module().by_value, out, b"1234")


def test_pack_errors_name_kernel_and_parameter() -> None:
    out = torch.zeros(8, device="cuda")
    k = _module().scalars
    with pytest.raises(cujit.LaunchError, match=r"scalars: argument 3 \(int\): cannot pass 2147483648"):
        cujit.LaunchKernel(1, 1)(k, out, 1.0, 1.0, 2**31, 0, True, 0, 0.0, 0.0)
    with pytest.raises(cujit.LaunchError, match=r"scalars: argument 1 \(float\): cannot pass 'x' of type str"):
        cujit.LaunchKernel(1, 1)(k, out, "x", 1.0, 1, 0, True, 0, 0.0, 0.0)
    with pytest.raises(cujit.LaunchError, match=r"expected 9 arguments, got 2: argument 2 \(double\) is missing"):
        cujit.LaunchKernel(1, 1)(k, out, 1.0)
    with pytest.raises(cujit.LaunchError, match=r"argument 0 \(float\*\) is a torch tensor on cpu"):
        cujit.LaunchKernel(1, 1)(k, torch.zeros(8), 1.0, 1.0, 1, 0, True, 0, 0.0, 0.0)


def test_every_stream_kind() -> None:
    cupy = pytest.importorskip("cupy")
    k = _module().fill_f32
    out = torch.zeros(1000, device="cuda")
    ts = torch.cuda.Stream()
    cs = cupy.cuda.Stream(non_blocking=True)

    class Protocol:
        def __cuda_stream__(self) -> tuple[int, int]:
            return (0, ts.cuda_stream)

    for i, stream in enumerate([ts, cs, ts.cuda_stream, Protocol()]):
        cujit.LaunchKernel(4, 256, stream=stream)(k, out, float(i + 1), 1000)
        torch.cuda.synchronize()
        cs.synchronize()
        assert (out == i + 1).all()
    with pytest.raises(TypeError, match=r"stream: expected a torch\.cuda\.Stream"):
        cujit.LaunchKernel(1, 1, stream="default")(k, out, 1.0, 1)


def test_current_stream_orders_after_long_kernel() -> None:
    m = _module()
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    seen = torch.full((1,), -1, dtype=torch.int32, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        cujit.LaunchKernel(1, 1)(m.spin_then_set, flag, 200_000_000, 42)  # ~0.1 s of busy waiting
        cujit.LaunchKernel(1, 1)(m.copy_one, seen, flag)  # queued behind it on the same (current) stream
        done = torch.cuda.Event()
        done.record(s)
    other = torch.cuda.Stream()
    other.wait_event(done)
    with torch.cuda.stream(other):
        result = seen.clone()
    other.synchronize()
    assert result.item() == 42


def test_cupy_current_stream_is_used() -> None:
    cupy = pytest.importorskip("cupy")
    m = _module()
    flag = cupy.zeros(1, dtype=cupy.int32)
    seen = cupy.full(1, -1, dtype=cupy.int32)
    with cupy.cuda.Stream(non_blocking=True) as s:
        cujit.LaunchKernel(1, 1)(m.spin_then_set, flag, 100_000_000, 7)
        cujit.LaunchKernel(1, 1)(m.copy_one, seen, flag)
        s.synchronize()
    assert int(seen[0]) == 7


def test_torch_graph_capture_and_replay() -> None:
    x = torch.randint(-100, 100, (4097,), dtype=torch.int32, device="cuda")
    y = torch.empty_like(x)
    add_constant(x, 21, out=y)  # warm
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        add_constant(x, 21, out=y)
    x.copy_(torch.randint(-100, 100, (4097,), dtype=torch.int32, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, x + 21, rtol=0, atol=0)


def test_first_call_inside_graph_capture() -> None:
    x = torch.randint(-100, 100, (1000,), dtype=torch.int32, device="cuda")
    y = torch.empty_like(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        add_constant(x, 98765, out=y)  # never launched before: compiled and loaded during capture
    x.fill_(5)
    graph.replay()
    torch.cuda.synchronize()
    assert (y == 98770).all()


def test_cupy_stream_capture() -> None:
    cupy = pytest.importorskip("cupy")
    x = cupy.arange(5000, dtype=cupy.int32)
    y = cupy.empty_like(x)
    add_constant(x, 3, out=y)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        add_constant(x, 3, out=y)
        graph = s.end_capture()
    x += 10
    graph.launch(s)
    s.synchronize()
    cupy.testing.assert_array_equal(y, x + 3)


def test_launch_configuration_errors() -> None:
    k = _module().fill_f32
    out = torch.zeros(16, device="cuda")
    with pytest.raises(cujit.LaunchError, match=r"block \(2048, 1, 1\) has 2048 threads, over this kernel's limit"):
        cujit.LaunchKernel(1, 2048)(k, out, 1.0, 16)
    with pytest.raises(cujit.LaunchError, match=r"grid dimension 0 is 0"):
        cujit.LaunchKernel(0, 32)(k, out, 1.0, 16)
    too_much = r"shared memory 1048576 bytes \(\+ 0 static\) exceeds the limit of \d+"
    with pytest.raises(cujit.LaunchError, match=too_much):
        cujit.LaunchKernel(1, 32, shared_mem=1 << 20)(_module().reverse_smem, out, out, 1)


def test_dynamic_shared_memory_above_48k() -> None:
    m = _module()
    inp = torch.arange(256, dtype=torch.float32, device="cuda")
    out = torch.zeros_like(inp)
    stride = 96  # 256 * 96 * 4 bytes = 96 KiB
    cujit.LaunchKernel(1, 256, shared_mem=256 * stride * 4)(m.reverse_smem, out, inp, stride)
    torch.cuda.synchronize()
    torch.testing.assert_close(out, inp.flip(0))


def test_64bit_indexing() -> None:
    n = 2**31 + 5
    x = torch.empty(n, dtype=torch.int32, device="cuda")
    x[:8] = torch.arange(8, dtype=torch.int32)
    x[-8:] = torch.arange(8, dtype=torch.int32) - 50
    y = torch.zeros_like(x)
    add_constant(x, 1, out=y)
    torch.cuda.synchronize()
    assert y[:8].tolist() == list(range(1, 9))
    assert y[-8:].tolist() == [v + 1 for v in range(-50, -42)]
    idx = torch.randint(0, n, (10_000,), device="cuda")
    torch.testing.assert_close(y[idx], x[idx] + 1, rtol=0, atol=0)
    del x, y
    torch.cuda.empty_cache()


def test_empty_input_launches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(0, dtype=torch.int32, device="cuda")
    add_constant(x, 4)  # compiles nothing either: the kernel is resolved but never loaded

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("launched on an empty input")

    monkeypatch.setattr(cujit.Kernel, "launch", fail)
    assert add_constant(x, 4).shape == (0,)


def test_device_check_reports_asynchronous_fault() -> None:
    out = trapped_launch(
        f"m = cujit.load_jit('trap', cuda_files=[{KERNELS!r}], cuda_wrappers=[('t', 'trap_now')])",
        "cujit.LaunchKernel(1, 1)(m.t)",
    )
    assert "LAUNCH_ERROR a kernel on cuda:0 failed asynchronously" in out, out


def test_many_threads_make_the_first_call_at_once() -> None:
    import threading

    x = torch.randint(-100, 100, (100_003,), dtype=torch.int32, device="cuda")
    before = cujit.cache_stats()["compiles"]
    barrier = threading.Barrier(16)
    results: list[torch.Tensor | BaseException] = [None] * 16  # type: ignore[list-item]

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = add_constant(x, 4242)
            torch.cuda.current_stream().synchronize()
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cujit.cache_stats()["compiles"] == before + 1
    for r in results:
        assert isinstance(r, torch.Tensor), r
        torch.testing.assert_close(r, x + 4242, rtol=0, atol=0)


def test_resolve_device_is_current_torch_stream() -> None:
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert cujit.LaunchKernel.resolve_device(0) == s.cuda_stream
        assert cujit.LaunchKernel.resolve_device("cuda:0") == s.cuda_stream
        assert cujit.LaunchKernel.resolve_device(torch.device("cuda", 0)) == s.cuda_stream


@pytest.mark.gpu(count=2)
def test_second_gpu_while_current_is_first() -> None:
    torch.cuda.set_device(0)
    x = torch.randint(-100, 100, (100_003,), dtype=torch.int32, device="cuda:1")
    y = add_constant(x, 8)
    assert y.device == torch.device("cuda", 1)
    torch.testing.assert_close(y, x + 8, rtol=0, atol=0)
    assert torch.cuda.current_device() == 0
    x0 = torch.randint(-100, 100, (17,), dtype=torch.int32, device="cuda:0")
    torch.testing.assert_close(add_constant(x0, 8), x0 + 8, rtol=0, atol=0)


@pytest.mark.gpu(count=2)
def test_arguments_on_two_gpus_raise() -> None:
    x = torch.zeros(10, dtype=torch.int32, device="cuda:0")
    y = torch.zeros(10, dtype=torch.int32, device="cuda:1")
    # src binds the device; out, checked after it, is the one that disagrees
    with pytest.raises(cujit.TensorMatchError,
                       match=r"'out': device: expected device = cuda:0 \(bound by 'src' device\), got cuda:1"):
        add_constant(x, 1, out=y)
    k = _module().copy_one
    with pytest.raises(cujit.LaunchError, match="argument 1 is on cuda:1 but earlier tensor arguments are on cuda:0"):
        cujit.LaunchKernel(1, 1)(k, x, y)


@pytest.mark.gpu(count=2)
def test_cupy_arrays_on_second_gpu() -> None:
    cupy = pytest.importorskip("cupy")
    with cupy.cuda.Device(1):
        x = cupy.arange(1000, dtype=cupy.int32)
    y = add_constant(x, 2)
    assert y.device.id == 1
    with cupy.cuda.Device(1):
        cupy.testing.assert_array_equal(y, x + 2)
