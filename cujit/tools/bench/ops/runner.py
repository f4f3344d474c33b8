"""Checking and timing one row of the serving-op sweep, and running the sweep.

``run_case`` asks the row's family (``registry.py``) for its inputs and contenders, adds ``copy_`` of the row's
bytes (twice: the two copies' difference is the row's noise), checks each contender once against the reference,
times the rest side by side and returns the row; ``run_sweep`` does that for every case on the GPU and writes the
report as it goes. The method is in the package's docstring.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import flashinfer, liger, quack
from ..timing import L2Flush, Timing, capture_graph, time_flushed, time_graphs
from .case import Case
from .contenders import Compiler, Contender, Env, Setup, compare
from .registry import family_of

__all__ = ["CALLS_PER_GRAPH", "CONTENDERS", "GpuTimer", "run_case", "run_sweep"]

#: Column order of the contenders in the report.
CONTENDERS: tuple[str, ...] = ("cujit", "cujit unfused", "eager", "compile", "liger", "quack", "flashinfer")
#: Calls captured in one CUDA graph for the small rows.
CALLS_PER_GRAPH = 32

# -- running a row -----------------------------------------------------------------------------------------------


class GpuTimer:
    """Times contenders on the GPU: CUDA-graph replays for small rows, L2-flushed single calls for the rest."""

    def __init__(self, rounds: int = 10, flushed_iters: int = 10, graph_iters: int = 5) -> None:
        self.flush = L2Flush()
        self.rounds, self.flushed_iters, self.graph_iters = rounds, flushed_iters, graph_iters

    def flushed(self, fns: Mapping[str, Callable[[], Any]],
                resets: Mapping[str, Callable[[], None]]) -> tuple[dict[str, Timing], dict[str, str]]:
        """Each call alone after an L2 flush (see ``time_flushed``)."""
        return time_flushed(fns, self.flush, rounds=self.rounds, iters=self.flushed_iters, resets=resets), {}

    def graphed(self, fns: Mapping[str, Callable[[], Any]], calls: int,
                resets: Mapping[str, Callable[[], None]]) -> tuple[dict[str, Timing], dict[str, str]]:
        """``calls`` calls captured per graph, replays timed (see ``time_graphs``); capture failures reported."""
        graphs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, fn in fns.items():
            reset = resets.get(name)
            if reset is not None:
                reset()
            try:
                graphs[name] = capture_graph(fn, calls)
            except Exception as exc:  # reported in the contender's cell; the other contenders still run
                errors[name] = f"error: graph capture failed: {_short(exc)}"
                _print_traceback(name)
        timings = time_graphs(graphs, calls, rounds=self.rounds, iters=self.graph_iters, resets=resets)
        return timings, errors


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _print_traceback(name: str) -> None:
    print(f"    [{name}] " + "    ".join(traceback.format_exc(limit=-4).splitlines(keepends=True)), file=sys.stderr,
          end="", flush=True)


def _check(contender: Contender, setup: Setup, sync: Callable[[], None]) -> None:
    """Run the contender once on its reset inputs and compare every output; a failure stops it being timed."""
    if contender.fn is None or contender.outputs is None:
        return
    for attempt in range(2):
        try:
            if contender.reset is not None:
                contender.reset()
            if contender.poison is not None:
                contender.poison()
            sync()
            start = time.perf_counter()
            contender.fn()
            sync()
            contender.first_call_s = time.perf_counter() - start
            got = contender.outputs()
            break
        except Exception as exc:  # a failing contender is reported in its cell, the row goes on
            if attempt == 0 and contender.fallback is not None:
                contender.fallback()
                continue
            _print_traceback(contender.name)
            contender.fail(f"error: {_short(exc)}")
            return
    problems = []
    for name, want in setup.expected.items():
        if name not in got:
            problems.append(f"{name} missing")
            continue
        problem = compare(got[name], want, contender.tolerance.get(name, setup.tolerance[name]))
        if problem:
            problems.append(f"{name}: {problem}")
    if problems:
        contender.fail("wrong: " + "; ".join(problems))


def _finite(contender: Contender) -> bool:
    import torch

    if contender.outputs is None:
        return True
    for value in contender.outputs().values():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.element_size() > 1:
            if not bool(torch.isfinite(value).all()):
                return False
    return True


def run_case(case: Case, env: Env) -> dict[str, Any]:
    """Build, check and time one row; returns it as a JSON-ready dict (see ``report``)."""
    import torch

    setup = family_of(case.op).build(case, env)
    half = max(case.nbytes // 2, 1)
    src = torch.randint(0, 256, (half,), dtype=torch.uint8, device=env.device)
    dst = torch.empty_like(src)
    copies = [Contender("copy_", lambda: dst.copy_(src)), Contender("copy_ again", lambda: dst.copy_(src))]
    for contender in setup.contenders:
        _check(contender, setup, env.sync)
    timed = [c for c in copies + setup.contenders if c.fn is not None]
    fns = {c.name: c.fn for c in timed if c.fn is not None}
    resets = {c.name: c.reset for c in timed if c.reset is not None}
    if case.graph:
        timings, errors = env.timer.graphed(fns, CALLS_PER_GRAPH, resets)
    else:
        timings, errors = env.timer.flushed(fns, resets)
    for contender in timed:
        if contender.name in errors:
            contender.fail(errors[contender.name])
        else:
            contender.timing = timings.get(contender.name)
            if setup.inplace and contender.name not in ("copy_", "copy_ again") and not _finite(contender):
                contender.note = (contender.note + "; " if contender.note else "") + "non-finite values after timing"
    return _row(case, copies, setup.contenders)


def _row(case: Case, copies: list[Contender], contenders: list[Contender]) -> dict[str, Any]:
    copy, again = copies
    copy_us = copy.timing.median_us if copy.timing else None
    noise = None
    if copy.timing and again.timing:
        noise = abs(again.timing.median_us / copy.timing.median_us - 1)
    copy_gbps = case.nbytes / (copy_us * 1e-6) / 1e9 if copy_us else None
    cells: dict[str, Any] = {}
    for c in contenders:
        cell: dict[str, Any] = {"status": c.status, "note": c.note}
        if c.nbytes is not None:
            cell["bytes"] = c.nbytes
        if c.first_call_s is not None:
            cell["first_call_s"] = round(c.first_call_s, 4)
        if c.status == "ok" and c.timing is not None:
            nbytes = c.nbytes if c.nbytes is not None else case.nbytes
            gbps = nbytes / (c.timing.median_us * 1e-6) / 1e9
            cell.update(us=c.timing.median_us, low_us=c.timing.low_us, high_us=c.timing.high_us,
                        samples=c.timing.samples, gbps=gbps, x_copy=gbps / copy_gbps if copy_gbps else None)
        elif c.status == "ok":
            cell["status"] = "not timed"
        cells[c.name] = cell
    return {**_describe(case), "copy_us": copy_us, "copy_gbps": copy_gbps, "noise": noise, "contenders": cells}


def _describe(case: Case) -> dict[str, Any]:
    """The fields of a row that say what it measures."""
    return {
        "family": family_of(case.op).name, "op": case.op, "variant": case.variant, "label": case.label,
        "dtype": case.dtype, "tokens": case.tokens, "shape": dict(case.params), "group": case.group,
        "bytes": case.nbytes, "formula": case.formula, "timing": "graph" if case.graph else "flush",
        "calls_per_graph": CALLS_PER_GRAPH if case.graph else None,
    }


# -- the sweep ---------------------------------------------------------------------------------------------------


def _error_row(case: Case, message: str) -> dict[str, Any]:
    return {**_describe(case), "copy_us": None, "copy_gbps": None, "noise": None, "contenders": {}, "error": message}


def _versions() -> dict[str, Any]:
    import platform
    from importlib import metadata

    import torch

    import cujit

    try:
        triton: str | None = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = None
    found: dict[str, Any] = {"torch": torch.__version__, "triton": triton, "cujit": cujit.__version__,
                             "python": platform.python_version()}
    for name, adapter in (("liger", liger), ("quack", quack), ("flashinfer", flashinfer)):
        # The version, and why the adapters cannot use the package here (None: they can), for the header.
        found[name], found[f"{name}_problem"] = adapter.version(), adapter.problem()
    return found


def run_sweep(cases: Sequence[Case], folder: Path, compile_mode: str = "static", argv: Sequence[str] = (),
              quick: bool = False, time_limit: float | None = None) -> int:
    """Run every case on the current GPU, print a line per row and the tables, write the report into ``folder``.

    The tables and the JSON are rewritten after every row, so a run stopped from outside keeps what it measured;
    with ``time_limit`` (seconds) no row starts after that much time and the rows left are listed as not run.
    Returns the exit code: 0 when every row ran (contenders may still be unavailable or wrong: the report says),
    1 without a GPU, with no rows, when the time limit left rows out, or when the CUDA context broke.
    """
    import datetime

    import torch

    from ..report import peers_text, progress_line, write_report

    if not torch.cuda.is_available():
        print("cujit bench --ops needs a CUDA GPU; none is visible here.", file=sys.stderr)
        return 1
    if not cases:
        print("cujit bench --ops: no row matches the --ops, --tokens and --sizes given.", file=sys.stderr)
        return 1
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    meta: dict[str, Any] = {
        "device": torch.cuda.get_device_name(index), "sms": props.multi_processor_count,
        "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0), "memory_bytes": props.total_memory,
        **_versions(), "compile": compile_mode, "quick": quick, "argv": list(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "calls_per_graph": CALLS_PER_GRAPH,
    }
    print(f"cujit serving-op benchmark on {meta['device']} ({meta['sms']} SMs, L2 {meta['l2_bytes'] / 1e6:.0f} MB): "
          f"{len(cases)} rows; torch {meta['torch']}, triton {meta['triton']}, {peers_text(meta)}; "
          f"torch.compile {compile_mode}", flush=True)
    env = Env("cuda", Compiler(compile_mode), GpuTimer(), torch.cuda.synchronize)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    broken = False
    skipped: list[Case] = []
    with torch.no_grad():
        for i, case in enumerate(cases, 1):
            if time_limit is not None and time.perf_counter() - start > time_limit:
                skipped = list(cases[i - 1:])
                print(f"time limit of {time_limit:.0f} s reached: {len(skipped)} rows not run", file=sys.stderr,
                      flush=True)
                break
            torch.manual_seed(i)
            try:
                row = run_case(case, env)
            except Exception as exc:  # one row's failure (out of memory, a bug) must not lose the whole sweep
                _print_traceback(case.label)
                row = _error_row(case, f"row failed: {_short(exc)}")
                try:
                    torch.cuda.synchronize()
                except Exception:  # a kernel fault ends the CUDA context: nothing after it can be measured
                    broken = True
            rows.append(row)
            gc.collect()  # the row's tensors and graphs, before the next row allocates its own
            torch.cuda.empty_cache()
            print(progress_line(i, len(cases), row, time.perf_counter() - start), flush=True)
            write_report(rows, {**meta, "partial": True}, folder, plots=False)
            if broken:
                print("the CUDA context broke: stopping; the rows so far are written", file=sys.stderr, flush=True)
                break
    meta["elapsed_s"] = round(time.perf_counter() - start, 1)
    meta["not_run"] = [f"{c.label} {c.dtype} T={c.tokens} {c.shape_text()}" for c in skipped]
    meta["compile_first_calls_s"] = round(sum(
        r["contenders"].get("compile", {}).get("first_call_s", 0.0) for r in rows), 1)
    result = write_report(rows, meta, folder)
    print()
    print(result["text"])
    plots = f"{len(result['plots'])} plots" if result["plots"] else result["plot_message"]
    print(f"wrote {result['markdown']}, {result['json']}; {plots} (in {folder}); {meta['elapsed_s']:.0f} s, of "
          f"which torch.compile's first calls {meta['compile_first_calls_s']:.0f} s", flush=True)
    return 1 if broken or skipped else 0
