"""``gelu_and_mul(x, approximate="none", *, out=None)``: ``gelu(x[..., :d]) * x[..., d:]`` for a [..., 2d] tensor.

``approximate="none"`` is the exact GELU (with erf), ``"tanh"`` the tanh approximation, as in
``torch.nn.functional.gelu``. Computed in fp32 from the stored values and rounded once, for float32, float16 and
bfloat16 contiguous tensors. The kernel is ``gelu_and_mul_kernel`` in ``cujit/kernels/activation.cuh``, with the
configurations of :func:`cujit.silu_and_mul.activation_config`.
"""

from __future__ import annotations

from typing import Any

import cujit

from .silu_and_mul import ActivationConfig, activation_config, activation_precompile

__all__ = ["gelu_and_mul"]

_FLOATS = ("float32", "float16", "bfloat16")
_LEAD = cujit.SymbolicShape("lead")
_TWO_D, _D = cujit.SymbolicSize("two_d"), cujit.SymbolicSize("D")
_DTYPE = cujit.SymbolicDType("dtype")


def _config(D: int, dtype: Any) -> ActivationConfig:
    return activation_config(D, dtype)


gelu_and_mul = cujit.op(
    "cujit::gelu_and_mul(Tensor x, str approximate='none', *, Tensor(a!)? out=None) -> Tensor",
    source="kernels/activation.cuh",
    kernel="gelu_and_mul_kernel<{dtype}, {tanh}, {block}, {vecs}>",
    tensors={
        "x": cujit.TensorMatcher([_LEAD, _TWO_D]).with_dtype(*_FLOATS, symbol=_DTYPE),
        "out": cujit.TensorMatcher([_LEAD, _D]).with_dtype(*_FLOATS, symbol=_DTYPE),
    },
    values={
        "D": "two_d // 2",
        "rows": "prod(lead)",
        "tanh": "approximate == 'tanh'",
        "config": _config,
        "block": "config.block",
        "vecs": "config.vecs",
    },
    checks=[
        ("approximate in ('none', 'tanh')", "approximate must be 'none' or 'tanh'"),
        ("two_d % 2 == 0", "x: the last dimension must be even (2 * d)"),
    ],
    grid="cdiv(rows * D, block * vecs * (16 // dtype.itemsize))",
    block="block",
    args=("out", "x", "rows", "D"),
    precompile=activation_precompile({"tanh": False}, {"tanh": True}),
    pdl=True,
)
