"""``python -m cujit demo``: the shortest proof that cujit works on this machine."""

from __future__ import annotations

import time

from .._runtime import cache, config, driver, toolchain
from .bench.timing import interleaved


def demo(arch: str | None = None) -> int:
    """Compile add_constant; on a GPU also run, check and time it. Returns the exit code."""
    from ..add_constant import add_constant

    if driver.device_count() == 0:
        target = config.check_arch(arch, "--arch") if arch else config.default_arch()
        start = time.perf_counter()
        compiled = add_constant.op.module(constant=3).compile(target)
        ms = (time.perf_counter() - start) * 1e3
        how = "compiled with NVRTC" if cache.cache_stats()["compiles"] else "loaded from the cache"
        print(f"add_constant_kernel<3> {how} for {target} in {ms:.0f} ms ({len(compiled.cubin)} bytes of machine code)")
        print("no CUDA GPU is visible here, so nothing was launched; on a GPU this demo also runs and times the kernel")
        return 0

    import cupy
    import numpy
    import torch

    device = torch.cuda.current_device()
    print(f"GPU: {torch.cuda.get_device_name(device)} ({driver.backend().arch_of(device)}), torch {torch.__version__}, "
          f"CuPy {cupy.__version__}")
    x = torch.randint(-(2**31), 2**31 - 1, (1 << 20,), dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    y = add_constant(x, 3)
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - start) * 1e3
    stats = cache.cache_stats()
    how = "compile + load + launch" if stats["compiles"] else "load from the disk cache + launch"
    ok_torch = bool(torch.equal(y, x + 3))
    # The CuPy check runs no CuPy kernel of its own (a copy in, a copy out, compared on the host), so that it tests
    # cujit even where CuPy's own kernels cannot compile (said below when that is the case).
    xh = numpy.random.default_rng(0).integers(-(2**31), 2**31 - 1, size=1 << 20, dtype=numpy.int32)
    yc = add_constant(cupy.asarray(xh), 3)
    ok_cupy = bool(numpy.array_equal(cupy.asnumpy(yc), xh + numpy.int32(3)))
    print(f"first call ({how}): {first_ms:.1f} ms")
    print(f"torch tensor result matches x + 3: {ok_torch}")
    print(f"CuPy array result matches x + 3: {ok_cupy}")
    if (problem := toolchain.cupy_headers_mismatch()) is not None:
        print(f"note: {problem}")
    small = x[:4096]
    out = torch.empty_like(small)
    sync = torch.cuda.synchronize
    times = interleaved({"ours": lambda: add_constant(small, 3, out=out),
                         "theirs": lambda: torch.add(small, 3, out=out)}, sync, rounds=5)
    ours, theirs = times["ours"], times["theirs"]
    print(f"per call, 4096 int32, host time: add_constant(x, 3, out=y) {ours:.2f} us, "
          f"torch.add(x, 3, out=y) {theirs:.2f} us ({ours / theirs:.2f}x)")
    return 0 if ok_torch and ok_cupy else 1
