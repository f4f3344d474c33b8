"""``per_tensor_quant_fp8(x, scale=None) -> (q, scale)``: FP8 (e4m3) quantization with one scale for the tensor.

Static with ``scale`` (a device float32 tensor [1], returned as a copy); dynamic without: scale = max(amax / 448,
1 / (448 * 512)) over the whole tensor, computed on the device by two kernels (partial maxima per chunk, then the
scale and the quantization of the same chunks in reverse order, so that the chunks read last by the first kernel
are still in L2), with no host sync. The rule, bit for bit: cujit/fp8_quant.py.
"""

from __future__ import annotations

import cujit

from .fp8_quant import SIZE_CHECK, cached, one_float, per_tensor_plan, q_matcher, x_matcher

__all__ = ["per_tensor_quant_fp8"]


def _tensor_plan(T: int, H: int) -> tuple[int, int]:
    return cached(per_tensor_plan, T * H)  # type: ignore[no-any-return]


per_tensor_quant_fp8 = cujit.op(
    "cujit::per_tensor_quant_fp8(Tensor x, Tensor? scale=None, *, Tensor(a!)? out=None, "
    "Tensor(b!)? scale_out=None) -> (Tensor, Tensor)",
    source="kernels/fp8_quant.cuh",
    launches=[
        # The partial maxima (none for a static scale: no launch).
        cujit.Launch(kernel="per_tensor_amax_kernel<{dtype}>", grid="0 if scale is not None else max(blocks, 1)",
                     block=256,
                     args=("x", "partials", "scale", "XS", "H", "total", "chunk")),
        # The scale (given, or from the partial maxima), then q, chunks in reverse order.
        cujit.Launch(kernel="per_tensor_quant_fp8_kernel<{dtype}>", grid="max(blocks, 1)", block=256,
                     args=("x", "out", "partials", "scale", "scale_out", "XS", "H", "total", "chunk", "blocks")),
    ],
    tensors={"x": x_matcher, "scale": one_float, "out": q_matcher, "scale_out": one_float},
    values={"total": "T * H", "plan": _tensor_plan, "blocks": "plan[0]", "chunk": "plan[1]"},
    scratch={"partials": ("float32", ["max(blocks, 1)"])},
    checks=[SIZE_CHECK],
    precompile=[{"dtype": d} for d in ("bfloat16", "float16")],
)
