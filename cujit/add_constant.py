"""``add_constant(src, constant, *, out=None)``: ``src + constant`` for int32 CUDA tensors of any shape.

The guide's running example. The constant is a template argument, so each value compiles its own instantiation
once; the kernel moves one 16-byte vector per thread (cujit/kernels/add_constant.cuh).
"""

from __future__ import annotations

import cujit

shape = cujit.SymbolicShape("shape")
int32 = cujit.TensorMatcher([shape]).with_dtype("int32")

add_constant = cujit.op(
    "cujit::add_constant(Tensor src, int constant, *, Tensor(a!)? out=None) -> Tensor",
    source="kernels/add_constant.cuh",
    kernel="add_constant_kernel<{constant}>",
    tensors={"src": int32, "out": int32},
    checks=[("-2**31 <= constant < 2**31", "constant must fit in int32")],
    values={"n": "prod(shape)"},
    grid="cdiv(n, 1024)",  # 256 threads x one vector of 4 int32 each
    block=256,
    args=("out", "src", "n"),
    precompile=[{"constant": c} for c in (-1, 1, 2, 3)],
)
