"""Ops over the kernels of tests/kernels/ops_test.cuh, one per feature of the op API; shared by the CPU tests (under
a stub driver) and the GPU tests. Declared by a function, because an op binds the driver in use when declared."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import cujit

SOURCE = "kernels/ops_test.cuh"
FLOATS = ("float32", "float16", "bfloat16")


def _threads(C: int) -> int:
    return 32 if C <= 32 else 128


def declare(namespace: str = "cujit_test") -> SimpleNamespace:
    T, C = cujit.SymbolicSize("T"), cujit.SymbolicSize("C")
    XS, OS = cujit.SymbolicSize("x_stride"), cujit.SymbolicSize("out_stride")
    dtype = cujit.SymbolicDType("dtype")

    def rows(stride: Any) -> cujit.TensorMatcher:
        return cujit.TensorMatcher([T, C]).with_strides([stride, 1]).with_dtype(*FLOATS, symbol=dtype)

    scale_rows = cujit.op(
        f"{namespace}::scale_rows(Tensor x, Tensor w, float alpha=1.0, *, Tensor(a!)? out=None) -> Tensor",
        source=SOURCE,
        kernel="scale_rows<{dtype}>",
        tensors={"x": rows(XS), "w": cujit.TensorMatcher([C]).with_dtype(symbol=dtype), "out": rows(OS)},
        values={"threads": _threads},
        grid="T", block="threads",
        args=("out", "x", "w", "T", "C", "x_stride", "out_stride", "alpha"),
        precompile=[{"dtype": d} for d in FLOATS],
    )

    R, K = cujit.SymbolicSize("R"), cujit.SymbolicSize("K")
    xdt = cujit.SymbolicDType("xdt")
    f32 = cujit.TensorMatcher([R]).with_dtype("float32")
    minmax_rows = cujit.op(
        f"{namespace}::minmax_rows(Tensor x, *, Tensor(a!)? mins=None, Tensor(b!)? maxs=None) -> (Tensor, Tensor)",
        source=SOURCE,
        kernel="minmax_rows<{xdt}>",
        tensors={"x": cujit.TensorMatcher([R, K]).with_dtype(*FLOATS, symbol=xdt), "mins": f32, "maxs": f32},
        grid="R", block=32,
        args=("mins", "maxs", "x", "R", "K"),
        precompile=[{"xdt": d} for d in FLOATS],
    )

    batch, vdt = cujit.SymbolicShape("batch"), cujit.SymbolicDType("vdt")
    vec = cujit.TensorMatcher([batch]).with_dtype(*FLOATS, symbol=vdt)
    axpy = cujit.op(
        f"{namespace}::axpy(Tensor(a!) y, Tensor x, float a) -> ()",
        source=SOURCE,
        kernel="axpy<{vdt}>",
        tensors={"y": vec, "x": vec},
        values={"n": "prod(batch)"},
        grid="min(cdiv(n, 256), 1024)", block=256,
        args=("y", "x", "a", "n"),
    )

    N = cujit.SymbolicSize("N")
    mdt = cujit.SymbolicDType("mdt")
    flat = cujit.TensorMatcher([N]).with_dtype(*FLOATS, symbol=mdt)
    maybe_scaled = cujit.op(
        f"{namespace}::maybe_scaled(Tensor x, Tensor? scale=None, *, Tensor(a!)? out=None) -> Tensor",
        source=SOURCE,
        kernel="maybe_scaled<{mdt}, {scaled}>",
        tensors={"x": flat, "scale": cujit.TensorMatcher([1]).with_dtype("float32"), "out": flat},
        values={"scaled": "scale is not None"},
        grid="min(cdiv(N, 256), 1024)", block=256,
        args=("out", "x", "scale", "N"),
    )

    S = cujit.SymbolicSize("S")
    total = cujit.op(
        f"{namespace}::total(Tensor x, *, Tensor(a!)? out=None) -> Tensor",
        source=SOURCE,
        tensors={"x": cujit.TensorMatcher([S]).with_dtype("float32"),
                 "out": cujit.TensorMatcher([1]).with_dtype("float32")},
        values={"blocks": "max(1, min(cdiv(S, 256), 64))"},
        scratch={"partials": ("float32", ["blocks"])},
        launches=[
            cujit.Launch(kernel="partial_sums", grid="blocks", block=256, args=("partials", "x", "S")),
            cujit.Launch(kernel="finish_sum", grid=1, block=64, args=("out", "partials", "blocks")),
        ],
    )
    return SimpleNamespace(scale_rows=scale_rows, minmax_rows=minmax_rows, axpy=axpy, maybe_scaled=maybe_scaled,
                           total=total)
