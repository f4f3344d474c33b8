"""``silu_and_mul(x, *, out=None)``: ``silu(x[..., :d]) * x[..., d:]`` for a contiguous [..., 2d] tensor.

Computed in fp32 from the stored values and rounded once, for float32, float16 and bfloat16 (torch's
``F.silu(a) * b`` rounds ``silu(a)`` to the storage dtype first, so it can differ by one unit in the last place).
The kernel is ``silu_and_mul_kernel`` in ``cujit/kernels/activation.cuh``; this module also holds the choice of its
template parameters (:func:`activation_config`), which ``gelu_and_mul`` shares.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cujit

__all__ = [
    "GATED_ARGS",
    "GATED_CHECK",
    "GATED_GRID",
    "GATED_TENSORS",
    "GATED_VALUES",
    "ActivationConfig",
    "activation_config",
    "activation_precompile",
    "silu_and_mul",
]


class ActivationConfig(NamedTuple):
    """The template parameters of one activation kernel instantiation."""

    block: int  #: threads per block
    vecs: int  #: 16-byte output vectors per thread


def activation_config(d: int, dtype: Any) -> ActivationConfig:
    """The kernel configuration for outputs of ``d`` values per row of ``dtype``.

    One 16-byte output vector per thread (two 16-byte loads), 256 threads per block, whatever the shape: the grid
    covers the whole tensor, so the row length changes nothing but the tail. At 40 registers or fewer a thread
    (the kernel's launch bounds), six such blocks are resident per SM: 1536 threads x 32 bytes = 48 KB of loads in
    flight, above the 25-30 KB an H100 or H200 SM needs to reach full bandwidth; two vectors a thread add nothing
    but registers, and a grid-stride loop measured slower for the same memory-bound shape (add_constant).
    """
    del d, dtype  # the same for every shape until measurements say otherwise
    return ActivationConfig(256, 1)


def activation_precompile(*variants: dict[str, Any]) -> list[dict[str, Any]]:
    """Every instantiation :func:`activation_config` chooses, for each dtype and each of ``variants``."""
    configs = {activation_config(d, dtype) for d in (1, 1 << 20) for dtype in ("float32", "float16", "bfloat16")}
    return [
        {"dtype": dtype, **variant, **c._asdict()}
        for dtype in ("float32", "float16", "bfloat16")
        for variant in variants or ({},)
        for c in sorted(configs)
    ]


_FLOATS = ("float32", "float16", "bfloat16")
_LEAD = cujit.SymbolicShape("lead")
_TWO_D, _D = cujit.SymbolicSize("two_d"), cujit.SymbolicSize("D")
_DTYPE = cujit.SymbolicDType("dtype")


#: What every gated activation op declares alike (gelu_and_mul too): x [..., 2d] and out [..., d] of one float
#: dtype, the row count, the configuration, the check of the last dimension, the grid and the kernel arguments.
GATED_TENSORS = {
    "x": cujit.TensorMatcher([_LEAD, _TWO_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
    "out": cujit.TensorMatcher([_LEAD, _D]).with_dtype(*_FLOATS, symbol=_DTYPE),
}
GATED_VALUES = {
    "D": "two_d // 2",
    "rows": "prod(lead)",
    "config": (activation_config, "D", "dtype"),
    "block": "config.block",
    "vecs": "config.vecs",
}
GATED_CHECK = ("two_d % 2 == 0", "x: the last dimension must be even (2 * d)")
GATED_GRID = "cdiv(rows * D, block * vecs * (16 // dtype.itemsize))"
GATED_ARGS = ("out", "x", "rows", "D")

silu_and_mul = cujit.op(
    "cujit::silu_and_mul(Tensor x, *, Tensor(a!)? out=None) -> Tensor",
    source="kernels/activation.cuh",
    kernel="silu_and_mul_kernel<{dtype}, {block}, {vecs}>",
    tensors=GATED_TENSORS,
    values=GATED_VALUES,
    checks=[GATED_CHECK],
    grid=GATED_GRID,
    block="block",
    args=GATED_ARGS,
    precompile=activation_precompile(),
    pdl=True,
)
