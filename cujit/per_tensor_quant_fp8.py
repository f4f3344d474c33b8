"""``per_tensor_quant_fp8(x, scale=None) -> (q, scale)``: FP8 (e4m3) quantization with one scale for the tensor.

Static with ``scale`` (a device float32 tensor [1], returned as a copy): one kernel. Dynamic without: scale =
max(amax / 448, 1 / (448 * 512)) over the whole tensor, computed on the device with no host sync: for a few
thousand values in one kernel of one block, which holds them all while it reduces their maximum; beyond, in two kernels:
partial maxima over tiles read front to back, then the scale and the quantization, blocks in reverse order so that
the values read last by the first kernel are read first, from L2. Plans: cujit.fp8_quant.per_tensor_plan. The
rule, bit for bit: cujit/fp8_quant.py. When x's pointer (or, for a strided x, its rows) is not 16-byte aligned,
both kernels take the row path: each row (all of x, when contiguous) split at its own 16-byte boundaries, 16-byte
loads between them (cujit.fp8_quant.TENSOR_ROW_PATH, per_tensor_row_plan).
"""

from __future__ import annotations

from typing import Any

import cujit

from .fp8_quant import (
    AMAX_THREADS,
    SIZE_CHECK,
    TENSOR_ROW_PATH,
    one_float,
    per_tensor_plan,
    per_tensor_row_plan,
    q_matcher,
    tensor_launch,
    x_matcher,
)

__all__ = ["per_tensor_quant_fp8"]


def _precompiled() -> list[dict[str, Any]]:
    """bf16 and fp16, small and large tensors, static and dynamic scales, on both paths."""
    found = []
    for d, itemsize in (("bfloat16", 2), ("float16", 2)):
        for total in (4096, 1 << 24):
            for dynamic in (False, True):
                threads, vecs, *_ = per_tensor_plan(total, itemsize, dynamic)
                found.append({"dtype": d, "threads": threads, "vecs": vecs, "row_path": False})
            threads, vecs, *_ = per_tensor_row_plan(total // 4096, 4096, 4097, itemsize)
            found.append({"dtype": d, "threads": threads, "vecs": vecs, "row_path": True})
        # A dynamic scale over a few tokens: one block of 128 to 1024 threads.
        found += [{"dtype": d, "threads": t, "vecs": 1, "row_path": False} for t in (128, 256, 512, 1024)]
    return [dict(t) for t in dict.fromkeys(tuple(f.items()) for f in found)]


per_tensor_quant_fp8 = cujit.op(
    "cujit::per_tensor_quant_fp8(Tensor x, Tensor? scale=None, *, Tensor(a!)? out=None, "
    "Tensor(b!)? scale_out=None) -> (Tensor, Tensor)",
    source="kernels/fp8_quant.cuh",
    launches=[
        # Dynamic: the partial maxima.
        cujit.Launch(kernel=f"per_tensor_amax_kernel<{{dtype}}, {AMAX_THREADS}, {{row_path}}>",
                     grid="partials if scale is None else 0", block=AMAX_THREADS,
                     args=("x", "partial_max", "XS", "H", "total")),
        # The scale (given, or from the partial maxima), then q, blocks in reverse order.
        cujit.Launch(kernel="per_tensor_quant_fp8_kernel<{dtype}, {threads}, {vecs}, true, {row_path}>",
                     grid="blocks", block="threads",
                     args=("x", "out", "partial_max", "scale", "scale_out", "XS", "H", "total", "partials")),
    ],
    tensors={"x": x_matcher, "scale": one_float, "out": q_matcher, "scale_out": one_float},
    values={
        "total": "T * H",
        "lanes": "16 // dtype.itemsize",
        "row_path": TENSOR_ROW_PATH,
        "plan": (tensor_launch, "T", "H", "XS", "dtype.itemsize", "scale is None", "row_path"),
        "threads": "plan[0]",
        "vecs": "plan[1]",
        "blocks": "plan[2]",
        "partials": "plan[3]",
    },
    scratch={"partial_max": ("float32", ["partials"])},
    checks=[SIZE_CHECK],
    precompile=_precompiled,
)
