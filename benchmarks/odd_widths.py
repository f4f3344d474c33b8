"""Rows of odd width at full speed: y = x * a + b over rows (a, b per column), side by side in one run (GPU).

    python benchmarks/odd_widths.py [--tokens 4097] [--dtype bfloat16] [--rounds 10]

The elementwise pattern of docs/guide.md applied to rows, in two forms of one kernel (benchmarks/odd_widths.cuh):
"aligned only" uses 16-byte vectors only when the row is a whole number of vectors and every pointer is aligned,
and goes element by element otherwise; "rows.cuh" walks each row with cujit::row_map. Next to them,
``torch.addcmul(b, x, a, out=y)`` and ``torch.compile`` of ``x * a + b``. Each width is timed with L2 flushed
before every call, all contenders interleaved (cujit/tools/bench/timing.py), and ``copy_`` of the same bytes
(x read, y written) in the same rounds; the table gives the median time and the fraction of ``copy_``'s bandwidth
("x copy_", higher is better). The last rows read x through a view that starts one element into each row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import cujit
from cujit.tools.bench.timing import L2Flush, time_flushed

HERE = Path(__file__).resolve().parent
BLOCK = 256
#: (label, width, view): view rows are x[:, 1:] of a tensor one column wider.
CASES = [("4095", 4095, False), ("4097", 4097, False), ("2881", 2881, False), ("8192", 8192, False),
         ("4096, x[:, 1:]", 4096, True), ("8192, x[:, 1:]", 8192, True)]


def _module(dtype: torch.dtype) -> cujit.JitModule:
    alias = str(cujit.make_cpp_args(dtype))
    return cujit.load_jit("odd_widths", alias, cuda_files=[HERE / "odd_widths.cuh"],
                          cuda_wrappers=[("aligned_only", f"affine_aligned_only<{alias}>"),
                                         ("rows", f"affine_rows<{alias}>")])


def run_case(label: str, width: int, view: bool, rows: int, dtype: torch.dtype, module: cujit.JitModule,
             flush: L2Flush, rounds: int) -> str:
    """One line of the table: every contender at one width, checked first, then timed interleaved."""
    base = torch.randn(rows, width + 1 if view else width, device="cuda").to(dtype)
    x = base[:, 1:] if view else base
    a = torch.randn(width, device="cuda").to(dtype)
    b = torch.randn(width, device="cuda").to(dtype)
    outs = {name: torch.empty(rows, width, device="cuda", dtype=dtype) for name in ("old", "rows", "addcmul")}
    src = torch.empty(rows, width, device="cuda", dtype=dtype)
    dst = torch.empty_like(src)
    compiled = torch.compile(lambda x, a, b: x * a + b, dynamic=False)
    launch = cujit.LaunchKernel(rows, BLOCK)

    def kernel(name: str, out: torch.Tensor) -> None:
        launch(getattr(module, name), out, x, a, b, width, x.stride(0), out.stride(0))

    fns = {
        "copy_": lambda: dst.copy_(src),
        "old": lambda: kernel("aligned_only", outs["old"]),
        "rows": lambda: kernel("rows", outs["rows"]),
        "addcmul": lambda: torch.addcmul(b, x, a, out=outs["addcmul"]),
        "compile": lambda: compiled(x, a, b),
    }
    for fn in fns.values():
        fn()
    expected = (x.float() * a.float() + b.float()).to(dtype)
    for name in ("old", "rows"):
        torch.testing.assert_close(outs[name], expected, rtol=1e-2, atol=1e-2)
    if not torch.equal(outs["old"], outs["rows"]):
        raise AssertionError(f"width {label}: the two kernel forms disagree")
    timings = time_flushed(fns, flush, rounds=rounds)
    copy = timings["copy_"].median_us
    cells = [f"{timings[n].median_us:8.1f} ({copy / timings[n].median_us:4.2f}x)"
             for n in ("old", "rows", "addcmul", "compile")]
    return f"{label:16s} {copy:8.1f} " + " ".join(f"{c:>18s}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4097, help="rows (default 4097)")
    parser.add_argument("--dtype", default="bfloat16", help="float32, float16 or bfloat16 (default bfloat16)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of 10 calls (default 10)")
    options = parser.parse_args()
    dtype = getattr(torch, options.dtype)
    module = _module(dtype)
    flush = L2Flush()
    print(f"{torch.cuda.get_device_name()}, {options.dtype}, {options.tokens} rows; median us (x copy_)")
    print(f"{'width':16s} {'copy_':>8s} {'aligned only':>18s} {'rows.cuh':>18s} {'addcmul':>18s} {'compile':>18s}")
    for label, width, view in CASES:
        print(run_case(label, width, view, options.tokens, dtype, module, flush, options.rounds), flush=True)


if __name__ == "__main__":
    main()
