"""Host time per call of ops, side by side with torch's own small ops, and what ``torch.library`` adds.

Rows (one GPU, 4096 values, median of interleaved rounds; every ratio compares two things measured in the same
run): the shipped ``add_constant`` against ``torch.add`` and ``x + 3``; an op declared the way the guide declares
``scale`` against ``torch.mul``; the same op called through ``torch.ops`` (the dispatcher); and, as anchors for that
cost, a ``torch.library.custom_op`` and a ``Library.define`` + ``impl`` op around the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["per_call_rows"]

_SCALE = """
#include <cujit/base.cuh>
#include <cujit/types.cuh>
template <typename T>
__global__ void scale_kernel(T* y, const T* x, float alpha, uint64_t n) {
  for (uint64_t i : cujit::grid_stride(n)) y[i] = cujit::from_float<T>(cujit::to_float(x[i]) * alpha);
}
"""


def _scale_op(folder: Path) -> Any:
    import cujit

    source = folder / "percall_scale.cuh"
    source.write_text(_SCALE)
    shape, dtype = cujit.SymbolicShape("shape"), cujit.SymbolicDType("dtype")
    floats = cujit.TensorMatcher([shape]).with_dtype("float32", "float16", "bfloat16", symbol=dtype)
    return cujit.op(
        "cujit_bench::scale(Tensor x, float alpha, *, Tensor(a!)? out=None) -> Tensor",
        source=source, kernel="scale_kernel<{dtype}>", tensors={"x": floats, "out": floats},
        values={"n": "prod(shape)"}, grid="min(cdiv(n, 256), 4096)", block=256, args=("out", "x", "alpha", "n"),
    )


def per_call_rows(interleaved: Callable[..., dict[str, float]],
                  row: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Measure and print the rows; ``interleaved`` and ``row`` are the bench harness's timer and printer."""
    import tempfile

    import torch

    import cujit
    from cujit.add_constant import add_constant

    rows: list[dict[str, Any]] = []
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
        launch = cujit.LaunchKernel(4, 256)

        @torch.library.custom_op("cujit_bench::anchor_custom_op", mutates_args=("out",))
        def anchor_custom_op(src: torch.Tensor, constant: int, out: torch.Tensor) -> None:
            add_constant(src, constant, out=out)

        library = torch.library.Library("cujit_bench", "FRAGMENT")
        library.define("anchor_library(Tensor src, int constant, Tensor(a!) out) -> ()")
        library.impl("anchor_library", lambda src, constant, out: add_constant(src, constant, out=out), "CUDA")
        anchor_library = torch.ops.cujit_bench.anchor_library.default

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
        }, sync)
        torch_out, plus = times["torch_add_out"], times["torch_plus"]
        rows.append(row("torch.add(x, 3, out=y)", torch_out, "us"))
        rows.append(row("x + 3", plus, "us"))
        rows.append(row("add_constant(x, 3, out=y), direct call", times["ours_out"], "us",
                        times["ours_out"] / torch_out, "torch.add(out=)"))
        rows.append(row("add_constant(x, 3), allocates", times["ours"], "us", times["ours"] / plus, "x + 3"))
        rows.append(row("torch.mul(f, 0.5, out=g)", times["torch_mul_out"], "us"))
        rows.append(row("guide's scale op: scale(f, 0.5, out=g)", times["scale_out"], "us",
                        times["scale_out"] / times["torch_mul_out"], "torch.mul(out=)"))
        rows.append(row("torch.ops.cujit.add_constant.out (dispatcher)", times["dispatcher_out"], "us",
                        times["dispatcher_out"] / torch_out, "torch.add(out=)"))
        rows.append(row("torch.ops.cujit.add_constant (dispatcher, allocates)", times["dispatcher"], "us",
                        times["dispatcher"] / plus, "x + 3"))
        rows.append(row("anchor: torch.library.custom_op around add_constant", times["custom_op"], "us",
                        times["custom_op"] / torch_out, "torch.add(out=)"))
        rows.append(row("anchor: Library.define + impl around add_constant", times["library"], "us",
                        times["library"] / torch_out, "torch.add(out=)"))
        rows.append(row("LaunchKernel(4, 256)(kernel, y, x, n), plain launch", times["launch"], "us",
                        times["launch"] / torch_out, "torch.add(out=)"))
        del library
    return rows
