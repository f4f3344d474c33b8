"""What one kernel launch costs from Python by each route, side by side in one run (GPU).

Every route launches the same compiled add_constant kernel with the same prebuilt parameters, so the differences
are the binding's own cost: CuPy's Cython `launchKernel`, ctypes with and without releasing the GIL, and
`cuLaunchKernelEx` with a packed launch configuration.
"""

from __future__ import annotations

import ctypes
import struct

import torch

from cujit.add_constant import add_constant
from cujit.tools.bench.timing import interleaved


def main() -> None:
    x = torch.arange(4096, dtype=torch.int32, device="cuda")
    y = torch.empty_like(x)
    add_constant(x, 3, out=y)
    kernel = add_constant.op.module(constant=3).add_constant
    loaded = kernel.on(0)
    buf, addr = loaded.buffer()
    loaded.pack_into(buf, 0, y.data_ptr(), x.data_ptr(), 4096)
    stream = torch.cuda.current_stream().cuda_stream
    func = loaded.function

    from cupy.cuda import driver

    cdll = ctypes.CDLL("libcuda.so.1")
    pydll = ctypes.PyDLL("libcuda.so.1")
    argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    c_launch = cdll.cuLaunchKernel
    c_launch.argtypes = argtypes
    p_launch = pydll.cuLaunchKernel
    p_launch.argtypes = argtypes
    ex = pydll.cuLaunchKernelEx
    ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    # CUlaunchConfig: gridDim xyz, blockDim xyz, sharedMemBytes (7 x uint32), hStream, attrs, numAttrs.
    config_layout = struct.Struct("=7I4xQQI4x")
    config = ctypes.create_string_buffer(config_layout.size)
    config_addr = ctypes.addressof(config)
    pack = config_layout.pack_into

    def cupy_route() -> None:
        driver.launchKernel(func, 4, 1, 1, 256, 1, 1, 0, stream, addr, 0)

    def ctypes_route() -> None:
        c_launch(func, 4, 1, 1, 256, 1, 1, 0, stream, addr, None)

    def pydll_route() -> None:
        p_launch(func, 4, 1, 1, 256, 1, 1, 0, stream, addr, None)

    def ex_route() -> None:
        pack(config, 0, 4, 1, 1, 256, 1, 1, 0, stream, 0, 0)
        ex(config_addr, func, addr, None)

    routes = {
        "torch.add(x, 3, out=y)": lambda: torch.add(x, 3, out=y),
        "CuPy driver.launchKernel": cupy_route,
        "ctypes CDLL cuLaunchKernel (releases the GIL)": ctypes_route,
        "ctypes PyDLL cuLaunchKernel (keeps the GIL)": pydll_route,
        "ctypes PyDLL cuLaunchKernelEx + packed config": ex_route,
        "cujit kernel.launch(4, 256, y, x, n)": lambda: kernel.launch(4, 256, y, x, 4096),
        "cujit add_constant(x, 3, out=y)": lambda: add_constant(x, 3, out=y),
    }
    try:
        from cuda.bindings import driver as cb

        cb_func = cb.CUfunction(func)
        cb_stream = cb.CUstream(stream)

        def bindings_route() -> None:
            cb.cuLaunchKernel(cb_func, 4, 1, 1, 256, 1, 1, 0, cb_stream, addr, 0)

        routes["cuda.bindings cuLaunchKernel"] = bindings_route
    except Exception as exc:  # cuda-python is optional here
        print(f"(cuda.bindings not usable: {exc})")
    times = interleaved(routes, torch.cuda.synchronize)
    base = times["torch.add(x, 3, out=y)"]
    print(f"launch routes on {torch.cuda.get_device_name()}, host us per call (median of 15 interleaved rounds)")
    for name, us in times.items():
        print(f"  {name:<50s} {us:6.2f} us  {us / base:5.2f} x torch.add")
    torch.cuda.synchronize()
    assert torch.equal(y, x + 3)


if __name__ == "__main__":
    main()
