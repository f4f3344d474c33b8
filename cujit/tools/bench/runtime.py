"""The benchmark table of ``python -m cujit bench``: ratios measured side by side in one run, on one GPU.

Sections: host time per call (torch, CuPy and cujit side by side), the matcher against reading attributes by
hand, memory bandwidth on 1 GiB, and first-call / warm-start times in fresh processes. Each prints its rows as
it goes; nothing here is a test.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import interleaved as _interleaved
from .timing import median_seconds
from .timing import per_call_us as _per_call_us

__all__ = ["main"]


def _row(name: str, value: float, unit: str, ratio: float | None = None, against: str = "") -> dict[str, Any]:
    extra = f"  {ratio:5.2f} x {against}" if ratio is not None else ""
    print(f"  {name:<58s} {value:9.2f} {unit}{extra}", flush=True)
    return {"name": name, "value": value, "unit": unit, "ratio": ratio, "against": against}


def matcher_section(rows: list[dict[str, Any]], device: str) -> None:
    import torch

    import cujit

    print(f"TensorCheck, two {device} tensors, two symbols, a dtype and a device", flush=True)
    d, n = cujit.SymbolicSize("D"), cujit.SymbolicSize("N")
    dev = cujit.SymbolicDevice()
    matcher = cujit.TensorMatcher([-1, d]).with_strides([n, 1]).with_dtype(torch.float32).with_device(
        device, symbol=dev)
    check = cujit.TensorCheck(k=matcher, v=matcher)
    k = torch.zeros(100, 256, device=device)
    v = torch.zeros(100, 256, device=device)

    def by_hand() -> Any:
        out = []
        for t in (k, v):
            out.append((t.shape, t.stride(), t.dtype, t.device, t.data_ptr()))
        return out

    def noop() -> None:
        return None

    times = _interleaved({"hand": by_hand, "ours": lambda: check(k, v)}, noop, calls=20000)
    hand, ours = times["hand"], times["ours"]
    rows.append(_row("reading shape, stride, dtype, device, data_ptr by hand", hand, "us"))
    rows.append(_row("TensorCheck(k=..., v=...)(k, v)", ours, "us", ours / hand, "by hand"))

    def chain() -> None:
        d2, n2, dev2 = cujit.SymbolicSize("D"), cujit.SymbolicSize("N"), cujit.SymbolicDevice()
        (cujit.TensorMatcher([-1, d2]).with_strides([n2, 1]).with_dtype(torch.float32)
         .with_device(device, symbol=dev2).verify(k, "k").verify(v, "v"))

    chained = _per_call_us(chain, noop, calls=2000)
    rows.append(_row("the chain of API.md, built and verified per call", chained, "us", chained / hand, "by hand"))


def bandwidth_section(rows: list[dict[str, Any]]) -> None:
    import torch

    from cujit.add_constant import add_constant

    print("bandwidth, 1 GiB int32 in + 1 GiB out (CUDA events, median of 20)", flush=True)
    n = 2**28
    x = torch.randint(-(2**30), 2**30, (n,), dtype=torch.int32, device="cuda")
    y = torch.empty_like(x)

    def gbps(fn: Callable[[], Any], elements: int = n) -> float:
        return 2 * 4 * elements / median_seconds(fn) / 1e9

    copy = gbps(lambda: y.copy_(x))
    rows.append(_row("y.copy_(x)", copy, "GB/s"))
    add = gbps(lambda: torch.add(x, 3, out=y))
    rows.append(_row("torch.add(x, 3, out=y)", add, "GB/s", add / copy, "copy_"))
    ours = gbps(lambda: add_constant(x, 3, out=y))
    rows.append(_row("cujit add_constant(x, 3, out=y)", ours, "GB/s", ours / copy, "copy_"))
    torch.testing.assert_close(y, x + 3)
    xs, ys = x[1:], y[1:]
    unaligned = gbps(lambda: add_constant(xs, 3, out=ys), n - 1)
    rows.append(_row("cujit add_constant on a view 4 bytes off alignment", unaligned, "GB/s", unaligned / copy,
                     "copy_"))


_CHILD = r"""
import json, os, sys, time
import torch, cupy
import cujit
from cujit.add_constant import add_constant
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
from cupy_backends.cuda.libs import nvrtc  # imports only; the library loads on first use below
x = torch.arange(4096, dtype=torch.int32, device="cuda"); y = torch.empty_like(x)
times = []
for c in CONSTANTS:
    k = add_constant.op.module(constant=c).add_constant
    t0 = time.perf_counter()
    cujit.LaunchKernel(4, 256)(k, y, x, 4096)
    torch.cuda.synchronize()
    times.append((time.perf_counter() - t0) * 1e3)
    assert torch.equal(y, x + c), c
print(json.dumps({"ms": times, "stats": dict(cujit.cache_stats())}))
"""

_CUPY_CHILD = r"""
import json, sys, time
import cupy, torch
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
src = open(sys.argv[1]).read()
x = cupy.arange(4096, dtype=cupy.int32); y = cupy.empty_like(x); n = cupy.uint64(4096)
cupy.cuda.runtime.deviceSynchronize()
times = []
for c in CONSTANTS:
    t0 = time.perf_counter()
    m = cupy.RawModule(code=src, options=("-std=c++17", "-I" + sys.argv[2], "-I" + sys.argv[3]),
                       name_expressions=[f"add_constant_kernel<{c}>"])
    m.get_function(f"add_constant_kernel<{c}>")((4,), (256,), (y, x, n))
    cupy.cuda.runtime.deviceSynchronize()
    times.append((time.perf_counter() - t0) * 1e3)
    assert bool((y == x + c).all()), c
print(json.dumps({"ms": times}))
"""


# The whole warm start as a serving process meets it: torch imported and its CUDA context made, then everything
# the first call of a cached op costs (importing cujit and the op's module, the cache lookup, loading the module on
# the GPU, the checks and the launch), timed to the end of the kernel. A finder on sys.meta_path notes who imports
# CuPy, if anything does (the warm path should not need it): the innermost frames of the importing stack. Only an
# import counts (the import system's _find_and_load on the stack): importlib.util.find_spec("cupy"), which locates
# CuPy's headers without importing it, asks the same finders.
_FIRST_CALL_CHILD = r"""
import json, sys, time, traceback
cupy_by = []
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "cupy" and not cupy_by:
            stack = traceback.extract_stack()[:-1]
            if not any(f.name == "_find_and_load" for f in stack):
                return None
            frames = [f for f in stack if "importlib" not in f.filename and "<frozen" not in f.filename]
            cupy_by.extend(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in frames[-6:])
        return None
sys.meta_path.insert(0, _Watch())
import torch
x = torch.arange(4096, dtype=torch.int32, device="cuda"); torch.cuda.synchronize()
profile = "--profile" in sys.argv
if profile:
    import cProfile, pstats
    profiler = cProfile.Profile()
before = set(sys.modules)
t0 = time.perf_counter()
from cujit.add_constant import add_constant
t1 = time.perf_counter()
if profile:
    profiler.enable()
y = add_constant(x, 3)
torch.cuda.synchronize()
if profile:
    profiler.disable()
t2 = time.perf_counter()
assert torch.equal(y, x + 3)
import cujit
out = {"import_ms": (t1 - t0) * 1e3, "call_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3,
       "cupy_imported": "cupy" in sys.modules, "cupy_by": cupy_by, "stats": dict(cujit.cache_stats())}
if profile:
    # The first call's costliest functions by cumulative time (the profiler's overhead included), and the modules
    # that the import and the first call brought in, by top-level package.
    stats = pstats.Stats(profiler).stats
    top = sorted(((v[3], f"{k[0].rsplit('/', 2)[-1]}:{k[1]}({k[2]})") for k, v in stats.items()
                  if not k[0].startswith("<frozen") and "builtins.exec" not in k[2]), reverse=True)
    out["profile"] = [(round(t * 1e3, 2), where) for t, where in top[:25]]
    import collections
    out["imported"] = collections.Counter(name.split(".")[0] for name in set(sys.modules) - before).most_common()
print(json.dumps(out))
"""


def _child(code: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def startup_section(rows: list[dict[str, Any]]) -> None:
    import cujit

    print("first call and warm start in new processes (after imports and CUDA context creation)", flush=True)
    constants = [11, 12, 13, 14]
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "CUJIT_CACHE_DIR": str(Path(folder) / "cujit"),
               "CUPY_CACHE_DIR": str(Path(folder) / "cupy")}
        code = _CHILD.replace("CONSTANTS", repr(constants))
        cold = _child(code, env)
        warm = _child(code, env)
        rows.append(_row("cujit first call, empty cache: compile + load + launch (1st)", cold["ms"][0], "ms"))
        rows.append(_row("cujit first call, empty cache, later modules (median)", statistics.median(cold["ms"][1:]),
                         "ms"))
        rows.append(_row("cujit warm start from disk + launch, 1st module", warm["ms"][0], "ms"))
        per_module = statistics.median(warm["ms"][1:])
        source = str(Path(cujit.__file__).parent / "kernels" / "add_constant.cuh")
        # cujit's headers, and the folder of standard-header stand-ins that cujit gives NVRTC (base.cuh includes
        # <cstddef>, which NVRTC alone does not have).
        include = str(Path(cujit.__file__).parent / "include")
        stand_ins = str(Path(cujit.__file__).parent / "include_nvrtc")
        cupy_code = _CUPY_CHILD.replace("CONSTANTS", repr(constants))
        _child(cupy_code, env, source, include, stand_ins)
        cupy_warm = _child(cupy_code, env, source, include, stand_ins)
        cupy_per_module = statistics.median(cupy_warm["ms"][1:])
        rows.append(_row("CuPy RawModule disk-cache hit + launch, 1st module", cupy_warm["ms"][0], "ms"))
        rows.append(_row("CuPy RawModule disk-cache hit + launch, later modules (median)", cupy_per_module, "ms"))
        rows.append(_row("cujit warm start from disk + launch, later modules (median)", per_module, "ms",
                         per_module / cupy_per_module, "CuPy's disk hit"))
        if warm["stats"]["compiles"]:
            print(f"  warning: the warm process compiled {warm['stats']['compiles']} times", flush=True)
        # As an installed package starts: its modules' bytecode cached (pip writes it at install). A checkout run
        # with PYTHONDONTWRITEBYTECODE set would compile every module of cujit from source in every process.
        bytecode_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        _child(_FIRST_CALL_CHILD, bytecode_env)  # fills the cache for add_constant<3> and writes the bytecode
        starts = [_child(_FIRST_CALL_CHILD, bytecode_env) for _ in range(5)]
        best = min(starts, key=lambda r: r["total_ms"])
        median = statistics.median(r["total_ms"] for r in starts)
        rows.append(_row("warm start, everything: import cujit + op module, cache hit, load, launch (median of 5)",
                         median, "ms"))
        print(f"  of the best of 5: import {best['import_ms']:.1f} ms, first call {best['call_ms']:.1f} ms; "
              f"CuPy imported: {best['cupy_imported']}"
              + (f" (by {' <- '.join(reversed(best['cupy_by']))})" if best["cupy_by"] else ""), flush=True)
        # Where the first call's time goes: one more start, under a profiler (slower; not counted above).
        profiled = _child(_FIRST_CALL_CHILD, bytecode_env, "--profile")
        print(f"  under a profiler, the first call's costliest functions (cumulative ms; first call "
              f"{profiled['call_ms']:.1f} ms):", flush=True)
        for ms, where in profiled["profile"][:15]:
            print(f"    {ms:8.2f}  {where}", flush=True)
        print("  modules imported by the import and the first call, by package: "
              + ", ".join(f"{name} {count}" for name, count in profiled["imported"][:12]), flush=True)
        if "PYTHONDONTWRITEBYTECODE" in env:
            uncached = [_child(_FIRST_CALL_CHILD, env) for _ in range(3)]
            rows.append(_row("the same with PYTHONDONTWRITEBYTECODE as set here (modules compiled from source; "
                             "median of 3)", statistics.median(r["total_ms"] for r in uncached), "ms"))


def main(argv: list[str] | None = None) -> int:
    """Run every section; with ``--json PATH`` also write the rows there."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cujit bench", description=__doc__)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--only", choices=["percall", "matcher", "bandwidth", "startup"], action="append")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("cujit bench needs a CUDA GPU; none is visible here. The matcher section runs on CPU tensors:")
        rows: list[dict[str, Any]] = []
        matcher_section(rows, "cpu")
        return 0
    print(f"cujit benchmarks on {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    rows = []
    sections = args.only or ["percall", "matcher", "bandwidth", "startup"]
    if "percall" in sections:
        from .percall import percall_section

        percall_section(rows, _row)
    if "matcher" in sections:
        matcher_section(rows, "cpu")
        matcher_section(rows, "cuda")
    if "bandwidth" in sections:
        bandwidth_section(rows)
    if "startup" in sections:
        startup_section(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0
