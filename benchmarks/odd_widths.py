"""Rows of odd width, and rows that start one element in, for every shipped op that takes them (GPU).

    python benchmarks/odd_widths.py [--ops rms_norm silu_and_mul ...] [--quick] [--tokens 4097]
                                    [--dtype bfloat16] [--rounds 10]

Widths 4095, 4097, 2881 (= 2880 + 1) and 8192 (the aligned baseline), and 4096 and 8192 with x read through a view
that starts one element into each row (``x = base[:, 1:]`` of a tensor one column wider; ops that take only
contiguous x get a contiguous x that starts one element into its buffer instead). ``--quick``: 4097, 8192 and
4096 one element in, 5 rounds. ``--ops`` picks ops (default: all of ``OPS``).

For each op and width: the inputs are made once; cujit's op runs once and its output is checked against a torch
reference at the tolerances of the op's GPU tests (a width the op refuses is skipped, with the op's own message);
torch.compile of the plain reference (``dynamic=False``, compiled once for the row and reused) and Liger-Kernel,
where it has the op and is installed, run once and are checked against the reference at the serving benchmark's
tolerances (a wrong or failing contender is reported and not timed); then every contender and ``copy_`` are timed
interleaved in one run, each call alone after an L2 flush (cujit/tools/bench/timing.py: L2Flush, time_flushed).

``copy_``: ``dst.copy_(src)`` of two contiguous uint8 buffers of half the op's bytes each, so that it reads and
writes the op's bytes in total. The op's bytes: each input read once, each output written once (the formula is
printed above each table). Each cell is the median time of one call and copy_'s time over the contender's
(``x copy_``: 1.00x is the speed of a copy of the same bytes; higher is better). Contenders that move more bytes
than the op must (Liger's norms write an fp32 rstd per row) are not credited for them.

The last lines summarize each op: cujit's worst ``x copy_`` over the odd widths and over the offset rows, and
whether cujit is at least as fast as torch.compile and Liger (median against median) at every width.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cujit
from cujit.tools.bench import liger
from cujit.tools.bench import references as refs
from cujit.tools.bench.ops.activations import gated_act_bytes
from cujit.tools.bench.ops.contenders import EPS, MAX_POSITION, REL_TOL, Unavailable, compare, cujit_op, tol, upcast
from cujit.tools.bench.ops.fused_quant import (
    fused_add_rms_norm_quant_bytes,
    silu_and_mul_quant,
    silu_and_mul_quant_bytes,
)
from cujit.tools.bench.ops.norms import fused_add_rms_norm_bytes, rms_norm_bytes
from cujit.tools.bench.ops.quant import group_quant_bytes, per_token_quant_bytes
from cujit.tools.bench.ops.rotary import rotary_bytes
from cujit.tools.bench.timing import L2Flush, Timing, time_flushed

HERE = Path(__file__).resolve().parent
BLOCK = 256
FP8 = torch.float8_e4m3fn
#: Values per scale of the per-group quantizations.
GROUP = 128
#: Relative tolerances of the norm and activation GPU tests (tests/test_norms_gpu.py, tests/test_activations_gpu.py).
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
#: tests/test_rotary_gpu.py: one storage-dtype step at the magnitudes of rotated N(0, 1) values.
ROTARY_TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-5}
#: The floor of a dynamic FP8 scale (cujit/fp8_quant.py).
MIN_SCALE = 1 / (448 * 512)


@dataclass(frozen=True)
class Row:
    """One width: ``offset`` rows start one element into their buffer."""

    label: str
    width: int
    offset: bool = False

    @property
    def odd(self) -> bool:
        """An odd width read from an aligned buffer."""
        return not self.offset and self.width % 2 == 1


ROWS = (Row("4095", 4095), Row("4097", 4097), Row("2881", 2881), Row("8192", 8192),
        Row("4096, x[:, 1:]", 4096, True), Row("8192, x[:, 1:]", 8192, True))
QUICK_ROWS = (ROWS[1], ROWS[3], ROWS[4])


# -- contenders --------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One contender of a row: the timed call, its outputs (read after a call) and the reset of what it changes."""

    fn: Callable[[], Any]
    outputs: Callable[[], dict[str, torch.Tensor]]
    reset: Callable[[], None] | None = None


@dataclass
class Built:
    """A row's inputs made: its bytes, its contenders by column (a string says why one is absent), the checks."""

    nbytes: int
    entries: dict[str, Entry | str]
    check: Callable[[dict[str, torch.Tensor]], None]  # the main contender's outputs; AssertionError if wrong
    expected: dict[str, torch.Tensor]  # what the other contenders must produce ...
    loose: dict[str, float]  # ... within this relative error per output (the serving benchmark's; 0: bit-exact)


@dataclass(frozen=True)
class Op:
    """An op's table: its columns (the first is the op itself), how a row is built, what the table says first."""

    name: str
    title: str
    formula: str
    build: Callable[[Row, int, torch.dtype], Built]
    columns: tuple[str, ...] = ("cujit", "compile", "liger")
    notes: tuple[str, ...] = ()


@dataclass
class Result:
    """One row of a table: the timings (or why not) by column, or why the whole row was skipped."""

    row: Row
    copy_us: float = math.nan
    cells: dict[str, Timing | str] = field(default_factory=dict)  # a string: "n/a", "wrong" or "error"
    reasons: dict[str, str] = field(default_factory=dict)  # why a column is not timed, in full
    skipped: str = ""


def returning(call: Callable[[], Any], names: Sequence[str], reset: Callable[[], None] | None = None,
              extra: Callable[[], dict[str, torch.Tensor]] | None = None) -> Entry:
    """A contender whose call returns its outputs (one tensor or a tuple), with ``extra`` outputs it changed."""
    box: dict[str, Any] = {}

    def fn() -> None:
        box["out"] = call()

    def outputs() -> dict[str, torch.Tensor]:
        out = box["out"]
        got = dict(zip(names, out if isinstance(out, (tuple, list)) else (out,), strict=True))
        return {**got, **(extra() if extra is not None else {})}

    return Entry(fn, outputs, reset)


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of a fresh copy of ``fn``'s code: compiled once for the row's shapes, at its first call.

    A fresh code object per row, so that each row's compile is a first compile, never a recompile of another
    row's code counted against dynamo's limit (past which it would run eager without saying so).
    """
    fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(fresh, dynamic=False, fullgraph=True)


def liger_or_reason(factory: Callable[[], Any]) -> tuple[Any, str]:
    """``(factory(), "")`` for a Liger adapter of cujit/tools/bench/liger.py, or ``(None, "n/a: why not")``."""
    try:
        return factory(), ""
    except liger.Unavailable as exc:
        return None, f"n/a: {exc}"


def restore(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """A reset that copies each ``(dst, src)`` pair's source back into its destination."""
    def reset() -> None:
        for dst, src in pairs:
            dst.copy_(src)

    return reset


# -- inputs ------------------------------------------------------------------------------------------------------


def rows_of(tokens: int, width: int, offset: bool, dtype: torch.dtype, contiguous: bool = False) -> torch.Tensor:
    """Random [tokens, width] values; with ``offset``, rows that start one element in.

    ``base[:, 1:]`` of a tensor one column wider, or, with ``contiguous`` (for ops that take contiguous x only), a
    contiguous tensor that starts one element into its buffer.
    """
    if not offset:
        return torch.randn(tokens, width, device="cuda").to(dtype)
    if contiguous:
        return torch.randn(tokens * width + 1, device="cuda").to(dtype)[1:].view(tokens, width)
    return torch.randn(tokens, width + 1, device="cuda").to(dtype)[:, 1:]


def twin(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with its strides and its offset into its buffer (the same alignment), for in-place ops."""
    if t.is_contiguous() and t.storage_offset() == 0:
        return t.clone()
    buffer = torch.empty(t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype, device=t.device)
    out = buffer.as_strided(t.shape, t.stride(), t.storage_offset())
    out.copy_(t)
    return out


def offset_copy(t: torch.Tensor, offset: bool) -> torch.Tensor:
    """A contiguous copy of ``t``, starting one element into its buffer with ``offset``."""
    if not offset:
        return t.clone(memory_format=torch.contiguous_format)
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    out.copy_(t)
    return out


def weight_of(width: int, dtype: torch.dtype) -> torch.Tensor:
    """A norm weight: values in [0.5, 1.5)."""
    return (torch.rand(width, device="cuda") + 0.5).to(dtype)


# -- checks: the tolerances of the ops' GPU tests ----------------------------------------------------------------


def expect(condition: bool, what: str) -> None:
    """Raise AssertionError(``what``) unless ``condition``."""
    if not condition:
        raise AssertionError(what)


def close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    """``got`` within ``rtol``/``atol`` of ``want`` (compared in float64), as torch.testing.assert_close says."""
    expect(tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def same(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """``got`` equal to ``want`` in shape, dtype and every value."""
    expect(got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape),
           f"{name}: {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")
    bad = int((got != want).sum())
    expect(bad == 0, f"{name}: {bad} values differ")


def rms64(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm in float64 (tests/test_norms_gpu.py's reference)."""
    x64 = x.double()
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * weight.double()


def fp8_rule(values: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cujit/fp8_quant.py's rule, bit for bit: ``scale = max(amax / 448, floor)``, ``q = sat(values / scale)``.

    Divisions by tensors, as in tests/test_fp8_quant_gpu.py: torch divides by a Python number as a multiplication
    by its reciprocal, which is not the IEEE division of the rule.
    """
    scale = (amax / torch.full_like(amax, 448.0)).clamp(min=MIN_SCALE)
    return (values / scale).clamp(-448, 448).to(FP8), scale


def per_token_rule(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H] and scales [T, 1] by the rule, one scale per row."""
    xf = x.float()
    return fp8_rule(xf, xf.abs().amax(-1, keepdim=True))


def per_group_rule(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H] and row-major scales [T, H / group] by the rule, one scale per group."""
    tokens, hidden = x.shape
    groups = x.float().reshape(tokens, hidden // group, group)
    q, scale = fp8_rule(groups, groups.abs().amax(-1, keepdim=True))
    return q.reshape(tokens, hidden), scale.reshape(tokens, hidden // group)


def fp8_bytes(q: torch.Tensor) -> torch.Tensor:
    """The bytes of an fp8 tensor, both NaN encodings (0x7F, 0xFF) as 0x7F."""
    raw = q.contiguous().view(torch.uint8)
    return torch.where((raw & 0x7F) == 0x7F, torch.full_like(raw, 0x7F), raw)


def same_quantization(got: dict[str, torch.Tensor], q: torch.Tensor, scale: torch.Tensor) -> None:
    """Values byte for byte and scales exactly (tests/test_fp8_quant_gpu.py)."""
    expect(got["q"].dtype == FP8 and tuple(got["q"].shape) == tuple(q.shape),
           f"q: {got['q'].dtype} {tuple(got['q'].shape)}, expected {FP8} {tuple(q.shape)}")
    bad = int((fp8_bytes(got["q"]) != fp8_bytes(q)).sum())
    expect(bad == 0, f"q: {bad} bytes differ from the rule")
    same("scale", got["scale"], scale)


def dequantize(q: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """q times its scale, in float64, as [T, H]."""
    return (q.double().reshape(q.shape[0], -1, group) * scale.double().reshape(q.shape[0], -1, 1)).reshape(q.shape)


# -- the ops -----------------------------------------------------------------------------------------------------


@functools.cache
def _affine_module(dtype: torch.dtype) -> cujit.JitModule:
    alias = str(cujit.make_cpp_args(dtype))
    return cujit.load_jit("odd_widths", alias, cuda_files=[HERE / "odd_widths.cuh"],
                          cuda_wrappers=[("aligned_only", f"affine_aligned_only<{alias}>"),
                                         ("rows", f"affine_rows<{alias}>")])


def build_affine(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """The guide's y = x * a + b over rows (benchmarks/odd_widths.cuh), two kernel forms, addcmul and compile."""
    width = row.width
    module = _affine_module(dtype)
    x = rows_of(tokens, width, row.offset, dtype)
    a, b = torch.randn(width, device="cuda").to(dtype), torch.randn(width, device="cuda").to(dtype)
    launch = cujit.LaunchKernel(tokens, BLOCK)

    def kernel(name: str) -> Entry:
        out = torch.full((tokens, width), math.nan, device="cuda", dtype=dtype)
        return Entry(lambda: launch(getattr(module, name), out, x, a, b, width, x.stride(0), out.stride(0)),
                     lambda: {"y": out})

    y = torch.full((tokens, width), math.nan, device="cuda", dtype=dtype)
    expected = {"y": (x.float() * a.float() + b.float()).to(dtype)}
    f = compiled(lambda x, a, b: x * a + b)
    return Built(
        (2 * tokens * width + 2 * width) * dtype.itemsize,
        {"rows.cuh": kernel("rows"), "aligned only": kernel("aligned_only"),
         "addcmul": Entry(lambda: torch.addcmul(b, x, a, out=y), lambda: {"y": y}),
         "compile": returning(lambda: f(x, a, b), ["y"])},
        lambda got: close("y", got["y"], expected["y"], 1e-2, 1e-2),
        expected, {"y": tol(dtype)})


def build_rms_norm(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """rms_norm(x, weight, eps, out=out) into a contiguous out."""
    op = cujit_op("rms_norm")
    x, weight = rows_of(tokens, row.width, row.offset, dtype), weight_of(row.width, dtype)
    out = torch.full((tokens, row.width), math.nan, device="cuda", dtype=dtype)
    f = compiled(lambda x, w: refs.rms_norm(x, w, EPS))
    entries: dict[str, Entry | str] = {
        "cujit": Entry(lambda: op(x, weight, EPS, out=out), lambda: {"out": out}),
        "compile": returning(lambda: f(x, weight), ["out"]),
    }
    fn, why = liger_or_reason(lambda: liger.rms_norm(EPS))
    entries["liger"] = why or returning(lambda: fn(x, weight), ["out"])
    return Built(rms_norm_bytes(tokens, row.width, dtype.itemsize), entries,
                 lambda got: close("out", got["out"], rms64(x, weight), RTOL[dtype], 1e-6),
                 {"out": refs.rms_norm(upcast(x), upcast(weight), EPS)}, {"out": tol(dtype)})


def build_fused_add_rms_norm(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """fused_add_rms_norm(x, residual, weight, eps) in place; x offset in the offset rows, residual contiguous."""
    op = cujit_op("fused_add_rms_norm")
    x, weight = rows_of(tokens, row.width, row.offset, dtype), weight_of(row.width, dtype)
    residual = rows_of(tokens, row.width, False, dtype)
    total = x + residual  # torch rounds the sum to the storage dtype, as the op does
    want_x, want_r = upcast(x), upcast(residual)
    refs.fused_add_rms_norm(want_x, want_r, upcast(weight), EPS)

    def inplace(call: Callable[[torch.Tensor, torch.Tensor], Any]) -> Entry:
        xc, rc = twin(x), twin(residual)
        return Entry(lambda: call(xc, rc), lambda: {"x": xc, "residual": rc}, restore([(xc, x), (rc, residual)]))

    def check(got: dict[str, torch.Tensor]) -> None:
        same("residual", got["residual"], total)
        close("x", got["x"], rms64(total, weight), RTOL[dtype], 1e-6)

    f = compiled(lambda x, r, w: refs.fused_add_rms_norm(x, r, w, EPS))
    entries: dict[str, Entry | str] = {
        "cujit": inplace(lambda xc, rc: op(xc, rc, weight, EPS)),
        "compile": inplace(lambda xc, rc: f(xc, rc, weight)),
    }
    fn, why = liger_or_reason(lambda: liger.fused_add_rms_norm(EPS))
    entries["liger"] = why or returning(lambda: fn(x, residual, weight), ["x", "residual"])  # out of place
    return Built(fused_add_rms_norm_bytes(tokens, row.width, dtype.itemsize), entries, check,
                 {"x": want_x, "residual": want_r}, {"x": tol(dtype), "residual": tol(dtype)})


def _build_gated(name: str, row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """silu_and_mul(x, out=out) or gelu_and_mul(x, "tanh", out=out): x [T, 2d] contiguous, d the row's width."""
    op = cujit_op(name)
    d, gelu = row.width, name == "gelu_and_mul"
    x = rows_of(tokens, 2 * d, row.offset, dtype, contiguous=True)
    out = torch.full((tokens, d), math.nan, device="cuda", dtype=dtype)
    ref: Callable[[torch.Tensor], torch.Tensor] = (lambda x: refs.gelu_and_mul(x, "tanh")) if gelu \
        else refs.silu_and_mul
    a64, b64 = x[:, :d].double(), x[:, d:].double()
    exact = (F.gelu(a64, approximate="tanh") if gelu else F.silu(a64)) * b64
    call = (lambda: op(x, "tanh", out=out)) if gelu else (lambda: op(x, out=out))
    f = compiled(lambda x: ref(x))
    entries: dict[str, Entry | str] = {
        "cujit": Entry(call, lambda: {"out": out}),
        "compile": returning(lambda: f(x), ["out"]),
    }
    fn, why = liger_or_reason(liger.gelu_tanh_and_mul if gelu else liger.silu_and_mul)
    if fn is None:
        entries["liger"] = why
    else:  # gate and up as two contiguous tensors, each as aligned as x (Liger takes no halves of one tensor)
        gate, up = offset_copy(x[:, :d], row.offset), offset_copy(x[:, d:], row.offset)
        entries["liger"] = returning(lambda: fn(gate, up), ["out"])
    return Built(gated_act_bytes(tokens, d, dtype.itemsize), entries,
                 lambda got: close("out", got["out"], exact, RTOL[dtype], 1e-5),
                 {"out": ref(upcast(x))}, {"out": tol(dtype)})


def build_silu_and_mul(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """silu_and_mul: see _build_gated."""
    return _build_gated("silu_and_mul", row, tokens, dtype)


def build_gelu_and_mul(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """gelu_and_mul, tanh form: see _build_gated."""
    return _build_gated("gelu_and_mul", row, tokens, dtype)


NO_LIGER_FP8 = "n/a: Liger-Kernel has no FP8 quantization"


def build_per_token_quant_fp8(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """per_token_quant_fp8(x) -> (q [T, H], scales [T, 1])."""
    op = cujit_op("per_token_quant_fp8")
    x = rows_of(tokens, row.width, row.offset, dtype)
    q, scale = per_token_rule(x)
    f = compiled(lambda x: refs.per_token_quant_fp8(x))
    return Built(per_token_quant_bytes(tokens, row.width, dtype.itemsize),
                 {"cujit": returning(lambda: op(x), ["q", "scale"]),
                  "compile": returning(lambda: f(x), ["q", "scale"]),
                  "liger": NO_LIGER_FP8},
                 lambda got: same_quantization(got, q, scale),
                 {"q": q, "scale": scale}, {"q": REL_TOL["float8_e4m3fn"], "scale": 1e-6})


def build_per_token_group_quant_fp8(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """per_token_group_quant_fp8(x, 128) -> (q [T, H], row-major scales [T, H / 128]); H a multiple of 128."""
    op = cujit_op("per_token_group_quant_fp8")
    x = rows_of(tokens, row.width, row.offset, dtype)
    divides = row.width % GROUP == 0
    q, scale = per_group_rule(x, GROUP) if divides else (x, x)  # the op refuses the row before the check
    f = compiled(lambda x: refs.per_token_group_quant_fp8(x, GROUP))
    return Built(group_quant_bytes(tokens, row.width, dtype.itemsize, GROUP),
                 {"cujit": returning(lambda: op(x, GROUP), ["q", "scale"]),
                  "compile": returning(lambda: f(x), ["q", "scale"]),
                  "liger": NO_LIGER_FP8},
                 lambda got: same_quantization(got, q, scale),
                 {"q": q, "scale": scale}, {"q": REL_TOL["float8_e4m3fn"], "scale": 1e-6})


def add_rms_norm_quant_per_token(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` in place (rounded to its dtype), then the RMSNorm of it rounded to x's dtype, per token."""
    total = (x.float() + residual.float()).to(residual.dtype)
    residual.copy_(total)
    return refs.per_token_quant_fp8(refs.rms_norm(total, weight, eps))


def build_fused_add_rms_norm_quant_fp8(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """fused_add_rms_norm_quant_fp8(x, residual, weight, eps) per token (group_size=0: every width)."""
    op = cujit_op("fused_add_rms_norm_quant_fp8")
    x, weight = rows_of(tokens, row.width, row.offset, dtype), weight_of(row.width, dtype)
    residual = rows_of(tokens, row.width, False, dtype)
    total = x + residual
    eq, escale = per_token_rule(refs.rms_norm(total, weight, EPS))

    def inplace(call: Callable[[torch.Tensor, torch.Tensor], Any]) -> Entry:
        xc, rc = twin(x), twin(residual)
        return returning(lambda: call(xc, rc), ["q", "scale"], restore([(xc, x), (rc, residual)]),
                         lambda: {"residual": rc, "x": xc})

    def check(got: dict[str, torch.Tensor]) -> None:
        """tests/test_fused_quant_gpu.py: the residual exactly, x untouched; q and scales within one step.

        The kernel adds the squares in another order than the reference, so a normalised value may differ in its
        last place, which can move its quantization or the scale by one step.
        """
        same("residual", got["residual"], total)
        same("x", got["x"], x)
        q, scale = got["q"], got["scale"]
        expect(q.dtype == FP8 and q.shape == eq.shape and scale.shape == escale.shape,
               f"q, scale: {q.dtype} {tuple(q.shape)} {tuple(scale.shape)}, expected {FP8} {tuple(eq.shape)} "
               f"{tuple(escale.shape)}")
        close("scale", scale, escale, 2**-7, 0.0)
        width = q.shape[1]
        a, b = dequantize(q, scale, width), dequantize(eq, escale, width)
        step = b.abs() * (2**-3 + 2**-6) + escale.double().repeat_interleave(width, dim=1) * 2**-9
        expect(bool(((a - b).abs() <= step * 1.01).all()), "q: a value more than one e4m3 step from the reference")
        share = float((fp8_bytes(q) == fp8_bytes(eq)).double().mean())
        expect(share > 0.99, f"q: {share:.2%} of the bytes equal the reference's (at least 99% expected)")

    f = compiled(lambda x, r, w: add_rms_norm_quant_per_token(x, r, w, EPS))
    return Built(fused_add_rms_norm_quant_bytes(tokens, row.width, dtype.itemsize, row.width),
                 {"cujit": inplace(lambda xc, rc: op(xc, rc, weight, EPS)),
                  "compile": inplace(lambda xc, rc: f(xc, rc, weight)),
                  "liger": "n/a: Liger-Kernel has no fused norm + FP8 quantization"},
                 check, {"q": eq, "scale": escale, "residual": total, "x": x},
                 {"q": REL_TOL["float8_e4m3fn"], "scale": tol(dtype), "residual": tol(dtype), "x": 0.0})


def build_silu_and_mul_quant_fp8(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """silu_and_mul_quant_fp8(x, 128): x [T, 2d] (rows at any stride), d the row's width, a multiple of 128."""
    op = cujit_op("silu_and_mul_quant_fp8")
    d = row.width
    x = rows_of(tokens, 2 * d, row.offset, dtype)
    a64, b64 = x[:, :d].double(), x[:, d:].double()
    exact = a64 * torch.sigmoid(a64) * b64

    def check(got: dict[str, torch.Tensor]) -> None:
        """tests/test_fused_quant_gpu.py: within half an e4m3 step of the float64 value, plus y's rounding."""
        q, scale = got["q"], got["scale"]
        expect(q.dtype == FP8 and tuple(q.shape) == (tokens, d) and tuple(scale.shape) == (tokens, d // GROUP),
               f"q, scale: {q.dtype} {tuple(q.shape)} {tuple(scale.shape)}, expected {FP8} {(tokens, d)} "
               f"{(tokens, d // GROUP)}")
        approx = dequantize(q, scale, GROUP)
        scales = scale.double().repeat_interleave(GROUP, dim=1)
        bound = exact.abs() * 2**-4 + scales * 2**-9 + exact.abs() * 1e-2
        expect(bool(((approx - exact).abs() <= bound).all()), "q: a value beyond half an e4m3 step of float64")

    # A width the op refuses (d not a multiple of the group) is skipped before anything is compared.
    expected = dict(zip(("q", "scale"), silu_and_mul_quant(x, GROUP), strict=True)) if d % GROUP == 0 else {}
    f = compiled(lambda x: silu_and_mul_quant(x, GROUP))
    return Built(silu_and_mul_quant_bytes(tokens, d, dtype.itemsize, GROUP),
                 {"cujit": returning(lambda: op(x, GROUP), ["q", "scale"]),
                  "compile": returning(lambda: f(x), ["q", "scale"]),
                  "liger": "n/a: Liger-Kernel has no fused SiLU-and-mul + FP8 quantization"},
                 check, expected, {"q": REL_TOL["float8_e4m3fn"], "scale": tol(dtype)})


#: q width -> (q heads, head size): each odd width as heads of an odd head size. k has q heads // 4 heads.
ROTARY_HEADS = {4095: (35, 117), 4097: (17, 241), 2881: (43, 67), 8192: (64, 128), 4096: (32, 128)}


def build_rotary_embedding(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """rotary_embedding(positions, q, k, cache, head_size=D), neox style, in place; q and k offset alike.

    The rotary dim must be even and at most the head size, so an odd head size rotates its first D - 1 values.
    """
    op = cujit_op("rotary_embedding")
    q_heads, hs = ROTARY_HEADS[row.width]
    k_heads = max(1, q_heads // 4)
    rd = hs - hs % 2
    q = rows_of(tokens, q_heads * hs, row.offset, dtype)
    k = rows_of(tokens, k_heads * hs, row.offset, dtype)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rd, 2, dtype=torch.float64, device="cuda") / rd))
    angles = torch.outer(torch.arange(MAX_POSITION, dtype=torch.float64, device="cuda"), inv_freq)
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)
    positions = torch.randint(0, MAX_POSITION, (tokens,), device="cuda")
    want_q, want_k = q.clone(), k.clone()
    refs.rotary_embedding(positions, want_q, want_k, cache, hs, True)  # fp32, rounded once (the tests' reference)

    def inplace(call: Callable[[torch.Tensor, torch.Tensor], Any]) -> Entry:
        qc, kc = twin(q), twin(k)
        return Entry(lambda: call(qc, kc), lambda: {"q": qc, "k": kc}, restore([(qc, q), (kc, k)]))

    def check(got: dict[str, torch.Tensor]) -> None:
        close("q", got["q"], want_q, ROTARY_TOL[dtype], ROTARY_TOL[dtype])
        close("k", got["k"], want_k, ROTARY_TOL[dtype], ROTARY_TOL[dtype])

    f = compiled(lambda p, q, k, c: refs.rotary_embedding(p, q, k, c, hs, True))
    entries: dict[str, Entry | str] = {
        "cujit": inplace(lambda qc, kc: op(positions, qc, kc, cache, is_neox=True, head_size=hs)),
        "compile": inplace(lambda qc, kc: f(positions, qc, kc, cache)),
    }
    fn, why = liger_or_reason(liger.rope)
    if fn is None:
        entries["liger"] = why
    elif rd != hs:
        entries["liger"] = "n/a: Liger's rope rotates whole heads (no rotary dim below the head size)"
    else:  # [1, H, T, D] views of q and k, cos and sin [1, T, D] gathered per token (untimed), no positions
        rows = cache.index_select(0, positions)
        cos = torch.cat((rows[:, : rd // 2], rows[:, : rd // 2]), dim=-1)[None].contiguous()
        sin = torch.cat((rows[:, rd // 2:], rows[:, rd // 2:]), dim=-1)[None].contiguous()
        ql, kl = twin(q), twin(k)
        box: dict[str, Any] = {}

        def liger_call() -> None:
            box["q"], box["k"] = fn(ql.view(1, tokens, q_heads, hs).transpose(1, 2),
                                    kl.view(1, tokens, k_heads, hs).transpose(1, 2), cos, sin)

        def liger_outputs() -> dict[str, torch.Tensor]:
            """The returned rotated q and k (Liger rotates a copy of a strided q), back as [T, H*D]."""
            return {n: box[n].transpose(1, 2).reshape(tokens, -1) for n in ("q", "k")}

        entries["liger"] = Entry(liger_call, liger_outputs, restore([(ql, q), (kl, k)]))
    e = dtype.itemsize
    return Built(rotary_bytes(tokens, q_heads, k_heads, rd, e, e, positions.element_size()), entries, check,
                 {"q": want_q, "k": want_k}, {"q": tol(dtype), "k": tol(dtype)})


def build_store_kv_cache(row: Row, tokens: int, dtype: torch.dtype) -> Built:
    """store_kv_cache(k, v, k_cache, v_cache, slots): rows of W = H x D values into a cache in k's dtype.

    Heads of 128 where 128 divides the width, else one head of W (the kernel sees rows of H * D values either way);
    with ``offset``, k and v both start one element into rows one wider. Every token gets its own slot of a cache
    twice the tokens' size, in a random order.
    """
    op = cujit_op("store_kv_cache")
    heads, hs = (row.width // 128, 128) if row.width % 128 == 0 else (1, row.width)
    k = rows_of(tokens, row.width, row.offset, dtype).unflatten(1, (heads, hs))
    v = rows_of(tokens, row.width, row.offset, dtype).unflatten(1, (heads, hs))
    slots = torch.randperm(2 * tokens, device="cuda")[:tokens]
    want_k = torch.zeros(2 * tokens, heads, hs, dtype=dtype, device="cuda")
    want_v = torch.zeros_like(want_k)
    want_k[slots], want_v[slots] = k, v

    def stored(call: Callable[[torch.Tensor, torch.Tensor], Any]) -> Entry:
        kc, vc = torch.zeros_like(want_k), torch.zeros_like(want_v)
        return Entry(lambda: call(kc, vc), lambda: {"k_cache": kc, "v_cache": vc})

    def reference(k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, slots: torch.Tensor) -> None:
        kc[slots] = k
        vc[slots] = v

    f = compiled(reference)

    def check(got: dict[str, torch.Tensor]) -> None:
        same("k_cache", got["k_cache"], want_k)
        same("v_cache", got["v_cache"], want_v)

    return Built(4 * tokens * row.width * dtype.itemsize + 8 * tokens,
                 {"cujit": stored(lambda kc, vc: op(k, v, kc, vc, slots)),
                  "compile": stored(lambda kc, vc: f(k, v, kc, vc, slots)),
                  "liger": "n/a: Liger has no KV-cache store"},
                 check, {"k_cache": want_k, "v_cache": want_v}, {"k_cache": 0.0, "v_cache": 0.0})


CONTIGUOUS_OFFSET = ("offset rows: x contiguous, starting one element into its buffer (the op takes contiguous x "
                     "only); Liger's gate and up likewise")
OPS: dict[str, Op] = {op.name: op for op in (
    Op("affine", "the guide's y = x * a + b (a, b per column): cujit/rows.cuh, and vectors only when aligned "
       "(benchmarks/odd_widths.cuh)", "(2*T*W + 2*W)*e", build_affine,
       ("rows.cuh", "aligned only", "addcmul", "compile")),
    Op("rms_norm", "rms_norm(x, weight, out=out)", "(2*T*H + H)*e", build_rms_norm,
       notes=("Liger also writes an fp32 rstd per row (4*T bytes, not credited)",)),
    Op("fused_add_rms_norm", "fused_add_rms_norm(x, residual, weight), in place", "(4*T*H + H)*e",
       build_fused_add_rms_norm,
       notes=("offset rows: x offset, residual contiguous", "Liger: out of place, + an fp32 rstd per row")),
    Op("silu_and_mul", "silu_and_mul(x [T, 2W], out=out)", "3*T*W*e", build_silu_and_mul,
       notes=(CONTIGUOUS_OFFSET,)),
    Op("gelu_and_mul", "gelu_and_mul(x [T, 2W], 'tanh', out=out) (the tanh form: Liger's GEGLU has no other)",
       "3*T*W*e", build_gelu_and_mul, notes=(CONTIGUOUS_OFFSET,)),
    Op("per_token_quant_fp8", "per_token_quant_fp8(x) -> (q, scales [T, 1])", "T*H*(e + 1) + 4*T",
       build_per_token_quant_fp8),
    Op("per_token_group_quant_fp8", f"per_token_group_quant_fp8(x, {GROUP}) (H must be a multiple of {GROUP})",
       f"T*H*(e + 1) + 4*T*H/{GROUP}", build_per_token_group_quant_fp8),
    Op("fused_add_rms_norm_quant_fp8", "fused_add_rms_norm_quant_fp8(x, residual, weight), per token "
       "(group_size=0, the form that takes every width)", "T*H*(3*e + 1) + H*e + 4*T",
       build_fused_add_rms_norm_quant_fp8, notes=("offset rows: x offset, residual contiguous",)),
    Op("silu_and_mul_quant_fp8", f"silu_and_mul_quant_fp8(x [T, 2W], {GROUP}) (W must be a multiple of {GROUP})",
       f"T*W*(2*e + 1) + 4*T*W/{GROUP}", build_silu_and_mul_quant_fp8),
    Op("rotary_embedding", "rotary_embedding(positions, q, k, cos_sin_cache, head_size=D), neox, in place",
       "2*T*(Hq + Hkv)*R*e + T*R*e + 8*T", build_rotary_embedding,
       notes=("W = q's row = Hq x D, k has Hq // 4 heads, rotary dim R = D rounded down to even: "
              + ", ".join(f"{w} = {h} x {d}" for w, (h, d) in ROTARY_HEADS.items()),
              "offset rows: q and k both one element in")),
    Op("store_kv_cache", "store_kv_cache(k, v, k_cache, v_cache, slot_mapping), a cache in k's dtype",
       "4*T*W*e + 8*T", build_store_kv_cache,
       notes=("W = H x D: heads of 128 where 128 divides W, else one head of W", "offset rows: k and v both one "
              "element in")),
)}


# -- running -----------------------------------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:4])[:400]}"


def _call(entry: Entry) -> dict[str, torch.Tensor]:
    if entry.reset is not None:
        entry.reset()
    entry.fn()
    torch.cuda.synchronize()
    return entry.outputs()


def _problems(got: dict[str, torch.Tensor], built: Built) -> str:
    """What differs from the reference beyond the loose tolerances, or ""."""
    found = []
    for name, want in built.expected.items():
        problem = compare(got[name], want, built.loose[name]) if name in got else "missing"
        if problem:
            found.append(f"{name}: {problem}")
    return "; ".join(found)


def run_row(op: Op, row: Row, tokens: int, dtype: torch.dtype, flush: L2Flush, rounds: int) -> Result:
    """Check every contender of one row once, then time the right ones and copy_ interleaved.

    The op itself comes first: a width it refuses (its declared checks, before any launch) skips the row.
    """
    result = Result(row)
    built = op.build(row, tokens, dtype)
    main = op.columns[0]
    timed: dict[str, Entry] = {}
    for name in op.columns:
        entry = built.entries.get(name, "n/a: not built")
        if isinstance(entry, str):
            result.cells[name], result.reasons[name] = entry.split(":")[0], entry
            continue
        try:
            got = _call(entry)
        except (cujit.CheckError, cujit.TensorMatchError) as exc:
            if name == main:
                result.skipped = f"refused: {_short(exc)}"
                return result
            result.cells[name], result.reasons[name] = "error", f"error: {_short(exc)}"
            continue
        except Exception as exc:  # a failing contender is reported in its cell; the others still run
            result.cells[name], result.reasons[name] = "error", f"error: {_short(exc)}"
            traceback.print_exc(limit=-3, file=sys.stderr)
            continue
        try:
            if name == main:
                built.check(got)  # the tolerances of the op's own GPU tests
            else:
                problems = _problems(got, built)
                expect(not problems, problems)
        except AssertionError as exc:
            result.cells[name], result.reasons[name] = "wrong", f"wrong: {_short(exc)}"
            continue
        timed[name] = entry
    # copy_ of the op's bytes: half of them read, half written.
    src = torch.randint(0, 256, (max(built.nbytes // 2, 1),), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    fns: dict[str, Callable[[], Any]] = {"copy_": lambda: dst.copy_(src), **{n: e.fn for n, e in timed.items()}}
    resets = {n: e.reset for n, e in timed.items() if e.reset is not None}
    timings = time_flushed(fns, flush, rounds=rounds, resets=resets)
    result.copy_us = timings["copy_"].median_us
    result.cells.update({n: timings[n] for n in timed})
    return result


HEADINGS = {"compile": "torch.compile", "liger": "Liger"}
LABEL, CELL = 16, 18


def _cell(value: Timing | str, copy: float) -> str:
    if isinstance(value, str):
        return value
    return f"{value.median_us:.1f} ({copy / value.median_us:.2f}x)"


def run_op(op: Op, rows: Sequence[Row], tokens: int, dtype: torch.dtype, flush: L2Flush,
           rounds: int) -> list[Result] | str:
    """Print one op's table, row by row as measured, then why cells are empty; the rows, or why there are none."""
    print(f"\n{op.name}: {op.title}; bytes {op.formula}")
    for note in op.notes:
        print(f"  {note}")
    print(f"{'width':{LABEL}s} {'copy_ us':>9s} " + " ".join(f"{HEADINGS.get(c, c):>{CELL}s}" for c in op.columns),
          flush=True)
    results: list[Result] = []
    for row in rows:
        try:
            result = run_row(op, row, tokens, dtype, flush, rounds)
        except Unavailable as exc:  # the op is not in this cujit
            print(f"  {exc}", flush=True)
            return str(exc)
        except Exception as exc:  # the row could not be set up: say so, and go on with the next
            traceback.print_exc(file=sys.stderr)
            result = Result(row, skipped=f"failed: {_short(exc)}")
        results.append(result)
        if result.skipped:
            print(f"{row.label:{LABEL}s} skipped, {result.skipped}", flush=True)
        else:
            cells = " ".join(f"{_cell(result.cells[c], result.copy_us):>{CELL}s}" for c in op.columns)
            print(f"{row.label:{LABEL}s} {result.copy_us:9.1f} {cells}", flush=True)
    measured = [r for r in results if not r.skipped]
    reasons: dict[tuple[str, str], list[str]] = {}
    for result in measured:
        for column, reason in result.reasons.items():
            reasons.setdefault((column, reason), []).append(result.row.label)
    for (column, reason), labels in reasons.items():
        where = "every row" if len(labels) == len(measured) > 1 else "; ".join(labels)
        print(f"  {HEADINGS.get(column, column)} ({where}): {reason}")
    return results


def _worst(what: str, rows: Sequence[Result], main: str) -> str:
    """The worst x copy_ of ``main`` over ``rows``, and where it was not timed (wrong, error)."""
    timed = [(r.copy_us / r.cells[main].median_us, r.row.label) for r in rows if isinstance(r.cells[main], Timing)]
    untimed = ", ".join(f"{r.row.label} {r.cells[main]}" for r in rows if not isinstance(r.cells[main], Timing))
    if not rows:
        return f"{what}: none accepted"
    if not timed:
        return f"{what}: not timed ({untimed})"
    ratio, label = min(timed)
    return f"worst x copy_ over the {what} {ratio:.2f}x ({label})" + (f", not timed: {untimed}" if untimed else "")


def _against(rival: str, measured: Sequence[Result], main: str) -> str:
    """Whether ``main`` was at least as fast as ``rival`` at every width where both were timed."""
    heading = HEADINGS[rival]
    if not any(isinstance(r.cells.get(main), Timing) for r in measured):
        return f">= {heading}: not compared (cujit not timed)"
    pairs = [(r.cells[rival].median_us / r.cells[main].median_us, r.row.label) for r in measured
             if isinstance(r.cells.get(main), Timing) and isinstance(r.cells.get(rival), Timing)]
    if not pairs:
        why = next((r.reasons[rival] for r in measured if rival in r.reasons), "not timed")
        return f">= {heading}: {why}"
    faster = [f"{label} ({ratio:.2f}x)" for ratio, label in pairs if ratio < 1]
    text = "yes" if not faster else f"no, faster at {', '.join(faster)}"
    if len(pairs) < len(measured):
        text += f" (compared at {len(pairs)} of {len(measured)} widths)"
    return f">= {heading} at every width: {text}"


def summary(op: Op, results: list[Result] | str) -> str:
    """One line: cujit's worst x copy_ over the odd widths and over the offset rows; against compile and Liger."""
    main = op.columns[0]
    name = op.name if main == "cujit" else f"{op.name} ({main})"
    if isinstance(results, str):
        return f"{name}: {results}"
    measured = [r for r in results if not r.skipped]
    if not measured:
        return f"{name}: no width measured"
    parts = [_worst("odd widths", [r for r in measured if r.row.odd], main),
             _worst("offset rows", [r for r in measured if r.row.offset], main)]
    parts += [_against(rival, measured, main) if rival in op.columns else f">= {HEADINGS[rival]}: n/a"
              for rival in ("compile", "liger")]
    return f"{name}: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS), metavar="OP",
                        help=f"ops to time (default: all): {', '.join(OPS)}")
    parser.add_argument("--quick", action="store_true", help="widths 4097, 8192 and 4096 one element in; 5 rounds")
    parser.add_argument("--tokens", type=int, default=4097, help="rows (default 4097)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"),
                        help="activation dtype (default bfloat16)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of 10 calls per contender (default 10, --quick 5)")
    options = parser.parse_args()
    dtype = getattr(torch, options.dtype)
    rows = QUICK_ROWS if options.quick else ROWS
    rounds = options.rounds or (5 if options.quick else 10)
    start = time.perf_counter()
    flush = L2Flush()
    print(f"{torch.cuda.get_device_name()}, {options.dtype}, {options.tokens} rows, torch {torch.__version__}, "
          f"liger-kernel {liger.version() or 'not installed'}. Median us per call, L2 flushed; "
          f"x copy_ = copy_'s time over the contender's (1.00x: the speed of copy_ of the op's bytes)")
    results: dict[str, list[Result] | str] = {}
    with torch.no_grad():  # Liger's ops are autograd Functions: nothing saved for a backward pass
        for name in options.ops:
            results[name] = run_op(OPS[name], rows, options.tokens, dtype, flush, rounds)
            print(f"[{name}: done at {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    print("\nSummary (>= X: cujit's median time at most X's at every width where both were timed; "
          "(0.93x): X's time over cujit's)")
    for name in options.ops:
        print(summary(OPS[name], results[name]))


if __name__ == "__main__":
    main()
