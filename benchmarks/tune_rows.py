"""Time candidate forms of a cujit::row_map kernel side by side on one GPU (benchmarks/tune_rows.cuh; seconds).

The guide's y = x * a + b over rows of bf16 (a and b per column), one block of 256 threads per row, 4097 rows, at
widths 4097, 8192 (aligned), 2881, and 4096 with x starting one element into each row. Candidates: cujit::row_map
at 2 and 1 vectors a thread in flight, each free or with launch bounds that cap its registers (more blocks per SM),
and row_map with the edges loaded first; the usual form (vectors only when every row is aligned,
benchmarks/odd_widths.cuh) and Liger's form (every value loaded alone, 8 or 16 of each input a thread in flight)
for reference. Every candidate's output is checked against torch first; a wrong one is
reported and not timed. Each cell: median device time of one call after an L2 flush, and ``copy_`` of the same
bytes over it (1.00x: the speed of a copy). The register count of each candidate is in tune_rows.cuh.

    python benchmarks/tune_rows.py [--tokens 4097] [--rounds 5] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import cujit
from cujit.tools.bench.timing import L2Flush, time_flushed

HERE = Path(__file__).resolve().parent
BLOCK = 256
WIDTHS = ((4097, 0), (8192, 0), (2881, 0), (4096, 1))


def candidates(alias: str) -> dict[str, str]:
    """Candidate label -> name expression in tune_rows.cuh (or odd_widths.cuh for the usual form)."""
    return {
        "usual": f"affine_aligned_only<{alias}>",
        "row_map<2>": f"affine_free<false, 2, {alias}>",
        "row_map<1>": f"affine_free<false, 1, {alias}>",
        "row_map<2>, 4 blocks": f"affine_bounded<false, 2, 4, {alias}>",
        "row_map<1>, 6 blocks": f"affine_bounded<false, 1, 6, {alias}>",
        "edges first<1>": f"affine_free<true, 1, {alias}>",
        "edges first<1>, 6 blocks": f"affine_bounded<true, 1, 6, {alias}>",
        "elements<8>": f"affine_elements<8, {alias}>",
        "elements<16>": f"affine_elements<16, {alias}>",
    }


def module(dtype: torch.dtype) -> tuple[cujit.JitModule, dict[str, str]]:
    alias = str(cujit.make_cpp_args(dtype))
    forms = candidates(alias)
    wrappers = [(f"k{i}", expression) for i, expression in enumerate(forms.values())]
    jit = cujit.load_jit("tune_rows", alias, cuda_files=[HERE / "tune_rows.cuh", HERE / "odd_widths.cuh"],
                         cuda_wrappers=wrappers)
    return jit, {label: f"k{i}" for i, label in enumerate(forms)}


def time_width(jit: cujit.JitModule, names: dict[str, str], flush: L2Flush, tokens: int, width: int, offset: int,
               dtype: torch.dtype, rounds: int) -> None:
    """Check and time every candidate at one width; print one line (and one per wrong candidate)."""
    launch = cujit.LaunchKernel(tokens, BLOCK)
    base = torch.randn(tokens, width + offset, device="cuda").to(dtype)
    x = base[:, offset:]
    a = torch.randn(width, device="cuda").to(dtype)
    b = torch.randn(width, device="cuda").to(dtype)
    expected = (x.float() * a.float() + b.float()).to(dtype)
    nbytes = (2 * tokens * width + 2 * width) * dtype.itemsize
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    fns = {"copy_": lambda: dst.copy_(src)}
    wrong = []
    for label, name in names.items():
        out = torch.full((tokens, width), math.nan, device="cuda", dtype=dtype)
        kernel = getattr(jit, name)

        def run(kernel: cujit.Kernel = kernel, out: torch.Tensor = out) -> None:
            launch(kernel, out, x, a, b, width, x.stride(0), out.stride(0))

        run()
        if torch.allclose(out.float(), expected.float(), rtol=1e-2, atol=1e-2):
            fns[label] = run
        else:
            wrong.append(label)
    timings = time_flushed(fns, flush, rounds=rounds)
    copy_us = timings["copy_"].median_us
    cells = [f"{label} {timings[label].median_us:.1f} ({copy_us / timings[label].median_us:.2f}x)"
             for label in names if label in timings]
    where = f"{width}" + (", x[:, 1:]" if offset else "")
    print(f"{where}: copy_ {copy_us:.1f} | " + " | ".join(cells), flush=True)
    for label in wrong:
        print(f"  {label}: WRONG output, not timed", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4097)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    jit, names = module(dtype)
    flush = L2Flush()
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, {args.tokens} rows, torch {torch.__version__}; "
          "median us per call, L2 flushed; (x copy_)", flush=True)
    for width, offset in WIDTHS:
        time_width(jit, names, flush, args.tokens, width, offset, dtype, args.rounds)


if __name__ == "__main__":
    main()
