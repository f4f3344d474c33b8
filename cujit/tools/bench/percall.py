"""Host time per call of ops, side by side with torch's own small ops, and what ``torch.library`` adds.

Rows (one GPU, 4096 values, median of interleaved rounds; every ratio compares two things measured in the same
run): the shipped ``add_constant`` against ``torch.add`` and ``x + 3``; an op declared the way the guide declares
``scale`` against ``torch.mul``; the same ops through ``torch.ops`` (the dispatcher); as anchors for that cost, a
``torch.library.custom_op`` and a ``Library.define`` + ``impl`` op around the same function; and the launch routes
below an op: a plain ``LaunchKernel``, CuPy's ``RawKernel`` call and ``cuLaunchKernel`` with everything prebuilt
(the floor any Python launch pays).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import interleaved, per_call_us

__all__ = ["percall_section"]

_SCALE = """
#include <cujit/base.cuh>
#include <cujit/types.cuh>
template <typename T>
__global__ void scale_kernel(T* y, const T* x, float alpha, uint64_t n) {
  for (uint64_t i : cujit::grid_stride(n)) y[i] = cujit::from_float<T>(cujit::to_float(x[i]) * alpha);
}
"""


def _scale_op(folder: Path) -> Any:
    """The guide's ``scale`` op, declared in a folder of its own as a user would."""
    import cujit

    source = folder / "scale.cuh"
    source.write_text(_SCALE)
    shape, dtype = cujit.SymbolicShape("shape"), cujit.SymbolicDType("dtype")
    floats = cujit.TensorMatcher([shape]).with_dtype("float32", "float16", "bfloat16", symbol=dtype)
    return cujit.op(
        "cujit_bench::scale(Tensor x, float alpha, *, Tensor(a!)? out=None) -> Tensor",
        source=source, kernel="scale_kernel<{dtype}>", tensors={"x": floats, "out": floats},
        values={"n": "prod(shape)"}, grid="min(cdiv(n, 256), 4096)", block=256, args=("out", "x", "alpha", "n"),
    )


def percall_section(rows: list[dict[str, Any]], row: Callable[..., dict[str, Any]]) -> None:
    """Measure and print the rows, appending them to ``rows``."""
    import cupy
    import torch

    import cujit
    from cujit.add_constant import add_constant

    print("host time per call, 4096 values (median of 15 interleaved rounds of 2000 calls)", flush=True)
    sync = torch.cuda.synchronize
    x = torch.randint(-1000, 1000, (4096,), dtype=torch.int32, device="cuda")
    y = torch.empty_like(x)
    f = torch.randn(4096, device="cuda")
    g = torch.empty_like(f)
    with tempfile.TemporaryDirectory() as folder:
        scale = _scale_op(Path(folder))
        add_constant(x, 3, out=y)
        scale(f, 0.5, out=g)
        handle = torch.ops.cujit.add_constant
        kernel = add_constant.op.module(constant=3).add_constant
        launch = cujit.LaunchKernel(4, 256)  # 4 blocks x 256 threads x one vector of 4 values

        @torch.library.custom_op("cujit_bench::anchor_custom_op", mutates_args=("out",),
                                 schema="(Tensor src, int constant, Tensor(a!) out) -> ()")
        def anchor_custom_op(src: torch.Tensor, constant: int, out: torch.Tensor) -> None:
            add_constant(src, constant, out=out)

        library = torch.library.Library("cujit_bench", "FRAGMENT")
        library.define("anchor_library(Tensor src, int constant, Tensor(a!) out) -> ()")
        def anchor_kernel(src: torch.Tensor, constant: int, out: torch.Tensor) -> None:
            add_constant(src, constant, out=out)

        library.impl("anchor_library", anchor_kernel, "CUDA")
        anchor_library = torch.ops.cujit_bench.anchor_library.default

        # CuPy's RawKernel on the same source, with the pointers read once: what CuPy users write by hand.
        source = (Path(cujit.__file__).parent / "kernels" / "add_constant.cuh").read_text()
        include = str(Path(cujit.__file__).parent / "include")
        stand_ins = str(Path(cujit.__file__).parent / "include_nvrtc")  # <cstddef> and friends under NVRTC
        raw = cupy.RawModule(code=source, options=("-std=c++17", f"-I{include}", f"-I{stand_ins}"),
                             name_expressions=["add_constant_kernel<3>"]).get_function("add_constant_kernel<3>")
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
        px, py, n = x.data_ptr(), y.data_ptr(), cupy.uint64(4096)
        # The floor: cuLaunchKernel through CuPy's binding with the parameters packed once.
        loaded = kernel.on(x.get_device())
        buf, addr = loaded.buffer()
        loaded.pack_into(buf, 0, py, px, 4096)
        from cupy.cuda import driver

        handle_stream = torch.cuda.current_stream().cuda_stream

        times = interleaved({
            "torch_add_out": lambda: torch.add(x, 3, out=y),
            "torch_plus": lambda: x + 3,
            "ours_out": lambda: add_constant(x, 3, out=y),
            "ours": lambda: add_constant(x, 3),
            "torch_mul_out": lambda: torch.mul(f, 0.5, out=g),
            "scale_out": lambda: scale(f, 0.5, out=g),
            "dispatcher_out": lambda: handle.out(x, 3, out=y),
            "dispatcher": lambda: handle.default(x, 3),
            "custom_op": lambda: anchor_custom_op(x, 3, y),
            "library": lambda: anchor_library(x, 3, y),
            "launch": lambda: launch(kernel, y, x, 4096),
            "raw": lambda: raw((4,), (256,), (py, px, n), stream=stream),
            "floor": lambda: driver.launchKernel(loaded.function, 4, 1, 1, 256, 1, 1, 0, handle_stream, addr, 0),
            "empty": lambda: torch.empty_like(x),
        }, sync)
        torch_out, plus = times["torch_add_out"], times["torch_plus"]
        against = "torch.add(out=)"
        rows.append(row("torch.add(x, 3, out=y)", torch_out, "us"))
        rows.append(row("x + 3", plus, "us"))
        rows.append(row("add_constant(x, 3, out=y), direct call", times["ours_out"], "us",
                        times["ours_out"] / torch_out, against))
        rows.append(row("add_constant(x, 3), allocates", times["ours"], "us", times["ours"] / plus, "x + 3"))
        rows.append(row("torch.mul(f, 0.5, out=g)", times["torch_mul_out"], "us"))
        rows.append(row("the guide's scale op: scale(f, 0.5, out=g)", times["scale_out"], "us",
                        times["scale_out"] / times["torch_mul_out"], "torch.mul(out=)"))
        rows.append(row("torch.ops.cujit.add_constant.out (dispatcher)", times["dispatcher_out"], "us",
                        times["dispatcher_out"] / torch_out, against))
        rows.append(row("torch.ops.cujit.add_constant (dispatcher, allocates)", times["dispatcher"], "us",
                        times["dispatcher"] / plus, "x + 3"))
        rows.append(row("anchor: torch.library.custom_op around add_constant", times["custom_op"], "us",
                        times["custom_op"] / torch_out, against))
        rows.append(row("anchor: Library.define + impl around add_constant", times["library"], "us",
                        times["library"] / torch_out, against))
        rows.append(row("LaunchKernel(4, 256)(kernel, y, x, n), plain launch", times["launch"], "us",
                        times["launch"] / torch_out, against))
        rows.append(row("CuPy RawKernel call, pointers read once", times["raw"], "us", times["raw"] / torch_out,
                        against))
        rows.append(row("cuLaunchKernel through CuPy, everything prebuilt (floor)", times["floor"], "us",
                        times["floor"] / torch_out, against))
        rows.append(row("torch.empty_like(x) alone", times["empty"], "us"))
        xc, yc = cupy.asarray(x), cupy.empty(4096, dtype=cupy.int32)
        ours_cupy = per_call_us(lambda: add_constant(xc, 3, out=yc), cupy.cuda.runtime.deviceSynchronize)
        rows.append(row("add_constant(cupy x, 3, out=y)", ours_cupy, "us"))
        del library
