"""``gelu_and_mul(x, approximate="none", *, out=None)``: ``gelu(x[..., :d]) * x[..., d:]`` for a [..., 2d] tensor.

``approximate="none"`` is the exact GELU (with erf), ``"tanh"`` the tanh approximation, as in
``torch.nn.functional.gelu``. Computed in fp32 from the stored values and rounded once, for float32, float16 and
bfloat16 contiguous tensors. The kernel is ``gelu_and_mul_kernel`` in ``cujit/kernels/activation.cuh``, with the
configurations of :func:`cujit.silu_and_mul.activation_config`.
"""

from __future__ import annotations

import cujit

from .silu_and_mul import GATED_ARGS, GATED_CHECK, GATED_GRID, GATED_TENSORS, GATED_VALUES, activation_precompile

__all__ = ["gelu_and_mul"]

gelu_and_mul = cujit.op(
    "cujit::gelu_and_mul(Tensor x, str approximate='none', *, Tensor(a!)? out=None) -> Tensor",
    source="kernels/activation.cuh",
    kernel="gelu_and_mul_kernel<{dtype}, {tanh}, {row_path}, {block}, {vecs}>",
    tensors=GATED_TENSORS,
    values={**GATED_VALUES, "tanh": "approximate == 'tanh'"},
    checks=[("approximate in ('none', 'tanh')", "approximate must be 'none' or 'tanh'"), GATED_CHECK],
    grid=GATED_GRID,
    block="block",
    args=GATED_ARGS,
    precompile=activation_precompile({"tanh": False}, {"tanh": True}),
    pdl=True,
)
