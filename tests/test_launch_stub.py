"""The plain launch path (``LaunchKernel``, ``Kernel.launch``) on a CPU machine, against a stub driver: every
parameter type packed, the stream and device rules, context switching, and errors mapped to ``LaunchError``."""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cujit
from cujit._runtime import driver
from cujit._runtime import module as module_api
from tests.stub_cuda import FakeCudaTensor, StubBackend

KERNELS = Path(__file__).parent / "kernels"


class Pair(ctypes.Structure):
    _fields_ = (("a", ctypes.c_int32), ("b", ctypes.c_float))


def _all_types(stub: StubBackend) -> cujit.JitModule:
    module = cujit.load_jit("all_types", cuda_files=[KERNELS / "ops_test.cuh"],
                            cuda_wrappers=[("all_types", "all_types")])
    lowered = module.compile("sm_90").lowered["all_types"]
    stub.sizes[lowered] = [8, 1, 1, 2, 2, 4, 4, 8, 8, 4, 8, 1, 2, 2, 8]  # what cuFuncGetParamInfo reports
    return module


def test_every_parameter_type_is_packed_as_declared(stub: StubBackend) -> None:
    kernel = _all_types(stub).all_types
    stub.decoder = lambda launched: launched.values(kernel.on(0).params)
    out = FakeCudaTensor(torch.zeros(15, dtype=torch.float64), 0, stub)
    cujit.LaunchKernel(1, 1)(kernel, out, -5, 250, -300, 60000, -7, 4_000_000_000, -(2**40), 2**63 + 5, 0.1, 0.1,
                             True, 0.5, 1.3, Pair(9, 2.5))
    values = stub.decoded[-1]
    assert values[0] == out.data_ptr()
    assert values[1:9] == [-5, 250, -300, 60000, -7, 4_000_000_000, -(2**40), 2**63 + 5]
    assert values[9] == struct.unpack("f", struct.pack("f", 0.1))[0]  # a float parameter gets a float32
    assert values[10] == 0.1  # a double stays a double
    assert values[11] is True
    assert values[12] == 0.5  # half, packed by struct's "e"
    assert values[13] == 0x3FA6  # bfloat16 bits of 1.3, rounded to nearest even
    assert values[14] == bytes(Pair(9, 2.5))
    # NumPy scalars and raw bits pass too
    cujit.LaunchKernel(1, 1)(kernel, out.data_ptr(), np.int8(-1), np.uint8(1), np.int16(2), np.uint16(3),
                             np.int32(4), np.uint32(5), np.int64(6), np.uint64(7), np.float32(8), np.float64(9),
                             np.bool_(True), np.float16(1.5), 0x3F80, b"\x01\x00\x00\x00\x00\x00\x80\x3f")
    values = stub.decoded[-1]
    assert values[1:11] == [-1, 1, 2, 3, 4, 5, 6, 7, 8.0, 9.0] and values[12:14] == [1.5, 0x3F80]


@pytest.mark.parametrize(("index", "value", "message"), [
    (1, 128, r"argument 1 \(signed char\): cannot pass 128"),
    (2, -1, r"argument 2 \(unsigned char\): cannot pass -1"),
    (5, 2**31, r"argument 5 \(int\): cannot pass 2147483648"),
    (9, "x", r"argument 9 \(float\): cannot pass 'x' of type str"),
    (14, b"123", r"argument 14 \(Pair\): expected 8 bytes, got 3"),
    (14, 5, r"argument 14 \(Pair\) is passed by value: expected bytes or a buffer of 8 bytes, got int"),
    (0, -4, r"argument 0 \(double\*\): a pointer cannot be -4"),
    (0, "ptr", r"argument 0 \(double\*\): expected a CUDA tensor, a raw pointer \(int\) or None, got str"),
])
def test_values_that_cannot_be_packed_launch_nothing(stub: StubBackend, index: int, value: Any, message: str) -> None:
    kernel = _all_types(stub).all_types
    args: list[Any] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9.0, 10.0, True, 0.5, 1.0, Pair(1, 1.0)]
    args[index] = value
    with pytest.raises(cujit.LaunchError, match=message):
        cujit.LaunchKernel(1, 1)(kernel, *args)
    assert not stub.launches


def test_argument_count_is_checked(stub: StubBackend) -> None:
    kernel = _all_types(stub).all_types
    with pytest.raises(cujit.LaunchError, match=r"expected 15 arguments, got 2: argument 2 \(unsigned char\) is "
                                                r"missing"):
        cujit.LaunchKernel(1, 1)(kernel, 0, 1)
    with pytest.raises(cujit.LaunchError, match=r"1 argument\(s\) too many"):
        cujit.LaunchKernel(1, 1)(kernel, *range(16))


def test_check_args_needs_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "device_count", lambda: 0)
    kernel = cujit.load_jit("all_types", cuda_files=[KERNELS / "ops_test.cuh"],
                            cuda_wrappers=[("all_types", "all_types")]).all_types
    packed = kernel.check_args(torch.zeros(3), 1, 2, 3, 4, 5, 6, 7, 8, 9.0, 10.0, True, 0.5, 1.0, Pair(1, 1.0))
    assert len(packed) >= 8 + 8 + 8 + 8 + 8 + 2
    with pytest.raises(cujit.LaunchError, match=r"argument 8 \(unsigned long long\): cannot pass -1"):
        kernel.check_args(None, 1, 2, 3, 4, 5, 6, 7, -1, 9.0, 10.0, True, 0.5, 1.0, Pair(1, 1.0))
    with pytest.raises(cujit.LaunchError, match="expected 15 arguments, got 1"):
        kernel.check_args(None)
    with pytest.raises(cujit.LaunchError, match=r"argument 7 \(long long\): cannot pass '4' of type str"):
        kernel.check_args(None, 1, 2, 3, 4, 5, 6, "4", 8, 9.0, 10.0, True, 0.5, 1.0, Pair(1, 1.0))


def test_a_struct_of_unknown_size_is_refused(stub: StubBackend) -> None:
    kernel = cujit.load_jit("all_types", cuda_files=[KERNELS / "ops_test.cuh"],
                            cuda_wrappers=[("all_types", "all_types")]).all_types
    with pytest.raises(cujit.LaunchError, match=r"parameter 14 \(Pair\) is a struct passed by value, and this "
                                                "driver does not report its size"):
        cujit.LaunchKernel(1, 1)(kernel, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9.0, 10.0, True, 0.5, 1.0, Pair(1, 1.0))


def _fill() -> cujit.Kernel:
    module = cujit.load_jit("launch_test", cuda_files=[KERNELS / "launch_test.cuh"],
                            cuda_wrappers=[("fill", "fill<float>")])
    return module.fill


def test_stream_rules(stub: StubBackend) -> None:
    kernel = _fill()
    out = FakeCudaTensor(torch.zeros(4), 0, stub)

    class Protocol:
        def __cuda_stream__(self) -> tuple[int, int]:
            return (0, 4242)

    class TorchLike:
        cuda_stream = 17

    class CupyLike:
        ptr = 19

    for stream, expected in ((None, 7000), (123, 123), (Protocol(), 4242), (TorchLike(), 17), (CupyLike(), 19)):
        cujit.LaunchKernel(1, 1, stream=stream)(kernel, out, 1.0, 4)
        assert stub.launches[-1].stream == expected
    with pytest.raises(TypeError, match=r"stream: expected a torch\.cuda\.Stream, a cupy\.cuda\.Stream, an object "
                                        r"with __cuda_stream__ or a raw handle \(int\), got str"):
        cujit.LaunchKernel(1, 1, stream="default")(kernel, out, 1.0, 4)


def test_device_of_the_tensors_and_its_context(stub: StubBackend) -> None:
    kernel = _fill()
    on_one = FakeCudaTensor(torch.zeros(4), 1, stub)
    stub.ctx = stub.primary_context(0)
    cujit.LaunchKernel(1, 1)(kernel, on_one, 1.0, 4)
    launched = stub.launches[-1]
    assert launched.ctx == 1001 and launched.stream == 7001 and stub.ctx == 1000
    cujit.LaunchKernel(1, 1)(kernel, 0, 1.0, 4)  # no tensor: the current device
    assert stub.launches[-1].ctx == 1000 and stub.launches[-1].stream == 7000
    stub.current = 1
    cujit.LaunchKernel(1, 1)(kernel, None, 1.0, 0)
    assert stub.launches[-1].stream == 7001
    assert sorted(device for device, _ in stub.loaded) == [0, 1]


def test_tensors_on_two_devices_are_refused(stub: StubBackend) -> None:
    module = cujit.load_jit("launch_test", cuda_files=[KERNELS / "launch_test.cuh"],
                            cuda_wrappers=[("copy_one", "copy_one")])
    a, b = FakeCudaTensor(torch.zeros(1, dtype=torch.int32), 0, stub), FakeCudaTensor(
        torch.zeros(1, dtype=torch.int32), 1, stub)
    with pytest.raises(cujit.LaunchError, match="argument 1 is on cuda:1 but earlier tensor arguments are on cuda:0"):
        cujit.LaunchKernel(1, 1)(module.copy_one, a, b)
    assert not stub.launches


def test_driver_failures_become_launch_errors(stub: StubBackend) -> None:
    kernel = _fill()
    stub.fail = "CUDA_ERROR_INVALID_VALUE"
    with pytest.raises(cujit.LaunchError, match=r"block \(2048, 1, 1\) has 2048 threads, over this kernel's limit of "
                                                r"1024"):
        cujit.LaunchKernel(1, 2048)(kernel, 0, 1.0, 4)
    with pytest.raises(cujit.LaunchError, match=r"grid dimension 0 is 0, expected 1 to 2147483647"):
        cujit.LaunchKernel(0, 32)(kernel, 0, 1.0, 4)
    with pytest.raises(cujit.LaunchError, match="grid: expected an int or a tuple of 1 to 3 ints, got 'x'"):
        cujit.LaunchKernel("x", 32)(kernel, 0, 1.0, 4)


def test_large_shared_memory_raises_the_kernel_limit_once(stub: StubBackend) -> None:
    kernel = _fill()
    cujit.LaunchKernel(1, 32, shared_mem=100_000)(kernel, 0, 1.0, 4)
    cujit.LaunchKernel(1, 32, shared_mem=90_000)(kernel, 0, 1.0, 4)
    assert list(stub.smem_limits.values()) == [100_000]
    with pytest.raises(cujit.LaunchError, match=r"shared memory 300000 bytes \(\+ 0 static\) exceeds the limit of "
                                                r"232448 bytes per block on cuda:0"):
        cujit.LaunchKernel(1, 32, shared_mem=300_000)(kernel, 0, 1.0, 4)


def test_device_check_and_resolve_device(stub: StubBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    cujit.device_check()
    stub.fail = "an illegal address was encountered"
    with pytest.raises(cujit.LaunchError, match="a kernel on cuda:1 failed asynchronously"):
        cujit.device_check("cuda:1")
    assert cujit.LaunchKernel.resolve_device("cuda:1") == 7001
    monkeypatch.setattr(driver, "device_count", lambda: 0)
    with pytest.raises(cujit.LaunchError, match="no CUDA device is available"):
        cujit.device_check()


def test_unrelated_modules_compile_at_the_same_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NVRTC must not run under a process-wide lock: count how many compiles are in flight at once.
    from cujit._runtime import cache

    active, most = [0], [0]
    guard = threading.Lock()
    real = cache.compile_nvrtc

    def slow_compile(sources: Any, arch: str, *more: Any) -> Any:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.3)
        try:
            return real(sources, arch, *more)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(cache, "compile_nvrtc", slow_compile)
    modules = []
    for i in range(2):
        path = tmp_path / f"k{i}.cuh"
        path.write_text(f"__global__ void k{i}(int* p) {{ p[0] = {i}; }}\n")
        modules.append(cujit.load_jit(f"k{i}", cuda_files=[path], cuda_wrappers=[("k", f"k{i}")]))
    threads = [threading.Thread(target=m.compile, args=("sm_90",)) for m in modules]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2
    assert module_api._LOADED_GUARD.acquire(blocking=False)  # no lock is left held
    module_api._LOADED_GUARD.release()
