"""``python -m cujit bench``: the runtime's benchmark sections, or with ``--ops`` the serving-op sweep.

Modules: ``runtime`` (host time per call, matcher, bandwidth, start-up), ``timing`` (host and device timing
helpers shared with ``benchmarks/``), ``cases`` (the sweep, collected from the op families), ``references`` (plain
torch references), ``liger``, ``quack`` and ``flashinfer`` (adapters of those libraries' kernels, each import
guarded by ``adapters``), ``ops`` (one module per op family with its rows, byte formulas and inputs, and the
runner that checks and times each row), ``report`` and ``summary`` (Markdown, JSON, plots).
"""

from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path

__all__ = ["main", "parser"]

_RUNTIME_SECTIONS = ["percall", "matcher", "bandwidth", "startup"]

_EPILOG = """\
Without --ops: host time per call of ops (cujit's direct call, torch's own ops, the torch.library dispatcher and
its anchors, launch routes), the matcher against reading attributes by hand,
bandwidth on 1 GiB and first-call / warm-start times (--json, --only pick what to write and run).

With --ops: per op, shape and dtype, the time, the GB/s over the bytes the op must move and the ratio to copy_
of the same bytes, for cujit, torch eager and torch.compile of a plain reference, and Liger-Kernel, QuACK and
FlashInfer where they are installed and have the op (a cell says why not); every contender checked against a
reference first, all measured in this process, interleaved; rows of at most 16 tokens as CUDA-graph replays,
larger ones with L2 flushed before each call. Writes DIR/bench_ops.md,
DIR/bench_ops.json and DIR/<op>_<dtype>_<size>.png (with matplotlib).
{names}
Expected time on one H100: --quick 2-5 minutes, the full sweep 7-11 minutes (mostly torch.compile compiling
one graph per shape; --compile dynamic compiles once per size with the token count dynamic), plus FlashInfer's
first build of its CUDA kernels where it is installed (minutes, cached in ~/.cache/flashinfer). The tables and
the JSON are rewritten after every row; --time-limit starts no row after that many seconds.

examples:
  python -m cujit bench
  python -m cujit bench --ops --quick --out results/
  python -m cujit bench --ops norms silu_and_mul --tokens 1,4097 --sizes 8192
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m cujit bench``."""
    from .cases import FAMILIES, OPS

    names = textwrap.fill(f"Names: ops ({', '.join(OPS)}) or families ({', '.join(FAMILIES)}); none: all.", 115)
    p = argparse.ArgumentParser(prog="python -m cujit bench", epilog=_EPILOG.format(names=names),
                                description="The runtime's benchmark sections, or with --ops the serving-op sweep.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ops = p.add_argument_group("serving-op sweep")
    ops.add_argument("--ops", nargs="*", metavar="NAME", help="run the serving-op sweep: every op, or the ops and "
                     "families named")
    ops.add_argument("--out", metavar="DIR", type=Path, help="where to write the report (default: ./bench-ops)")
    ops.add_argument("--quick", action="store_true", help="fewer shapes: tokens 1, 16, 4097 and one or two sizes")
    ops.add_argument("--tokens", type=_int_list, metavar="N,N", help="keep only rows with these token counts")
    ops.add_argument("--sizes", type=_int_list, metavar="N,N", help="keep only rows with these hidden sizes or d "
                     "(rows that have neither stay)")
    ops.add_argument("--compile", choices=["static", "dynamic", "off"], help="torch.compile per shape (static, "
                     "default), once per size with dynamic tokens (dynamic; 1 and 4097 tokens stay static), or off")
    ops.add_argument("--time-limit", type=_seconds, metavar="SECONDS", help="start no row after this many seconds "
                     "(the report lists the rows left out)")
    ops.add_argument("--peak-tbps", type=_positive, metavar="TB/S", help="the card's peak DRAM bandwidth for the "
                     "report's fraction of peak (default: from the table in cujit/tools/bench/summary.py by device "
                     "name, e.g. H100 SXM 3.35, H200 4.8)")
    runtime = p.add_argument_group("runtime sections (without --ops)")
    runtime.add_argument("--json", help="also write the rows to this file")
    runtime.add_argument("--only", choices=_RUNTIME_SECTIONS, action="append", help="run only this section "
                         "(repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run what it asks for, return the exit code."""
    import sys

    args_list = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(args_list)
    if args.ops is None:
        given = [flag for flag, value in (("--out", args.out), ("--quick", args.quick), ("--tokens", args.tokens),
                                          ("--sizes", args.sizes), ("--compile", args.compile),
                                          ("--time-limit", args.time_limit), ("--peak-tbps", args.peak_tbps))
                 if value]
        if given:
            p.error(f"{', '.join(given)}: expected with --ops")
        from .runtime import main as runtime_main

        rest: list[str] = ["--json", args.json] if args.json else []
        for section in args.only or []:
            rest += ["--only", section]
        return runtime_main(rest)
    if args.json or args.only:
        p.error("--json and --only are for the runtime sections: expected without --ops")
    from .cases import select_ops, sweep

    try:
        names = select_ops(args.ops)
    except ValueError as exc:
        p.error(str(exc))
    cases = sweep(names, quick=args.quick, tokens=args.tokens, sizes=args.sizes)
    from .ops import run_sweep

    folder = args.out or Path("bench-ops")
    code = run_sweep(cases, folder, args.compile or "static", args_list, args.quick, args.time_limit)
    if args.peak_tbps is not None and (folder / "bench_ops.json").exists():
        from .report import rewrite_report

        rewrite_report(folder, args.peak_tbps)  # the sweep's report, its fraction of peak at the given peak
    return code
