"""Compile time of the standard headers under NVRTC, each compile in a new process with an empty cache.

    python benchmarks/compile_headers.py [--arch sm_90] [--repeat 5] [--light] [--server]

Prints, per case, the best and the median over the repeats of the time ``JitModule.compile`` takes in a fresh
process, after one unrelated warm-up compile (the first compile of a process also loads NVRTC's builtins, about as
long as a small module takes), and the difference to the empty kernel.
"heavy" is a kernel that includes <type_traits>, <cmath>, <utility> and cub/block/block_reduce.cuh; "heavy,
unroll 16" is the same kernel with libcu++'s own default for NVRTC (-D_CCCL_META_UNROLL_LIMIT=16), which is how it
compiled before cujit set nvcc's value. Every case runs with CUJIT_COMPILE_SERVER=0 (each process compiles
alone), except with --server: then only "heavy" runs, in new processes that share one cache folder (emptied of
compiled modules before each) and so one compile server, already running, which has seen another kernel with the
same leading includes; each repeat edits the kernel's body, so nothing is served from a cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL = "__global__ void k(float* p) { p[threadIdx.x] = 1.0f; }\n"
HEAVY = """#include <cmath>
#include <type_traits>
#include <utility>
#include <cub/block/block_reduce.cuh>
template <int kBlock>
__global__ void k(float* p) {
  using R = cub::BlockReduce<float, kBlock>;
  __shared__ typename R::TempStorage t;
  float v = R(t).Sum(p[threadIdx.x]);
  if (threadIdx.x == 0) p[0] = std::sqrt(v);
}
"""
CASES: dict[str, tuple[str, list[str]]] = {
    "empty": ("", []),
    "<cstdint>": ("#include <cstdint>\n", []),
    "<cstddef>": ("#include <cstddef>\n", []),
    "<cmath>": ("#include <cmath>\n", []),
    "<cfloat>": ("#include <cfloat>\n", []),
    "<climits>": ("#include <climits>\n", []),
    "all five light": ("#include <cstdint>\n#include <cstddef>\n#include <cmath>\n#include <cfloat>\n"
                       "#include <climits>\n", []),
    "<type_traits>": ("#include <type_traits>\n", []),
    "<utility>": ("#include <utility>\n", []),
    "<cuda/std/cmath>": ("#include <cuda/std/cmath>\n", []),
    "cub block_reduce": ("#include <cub/block/block_reduce.cuh>\n", []),
    "heavy": (None, []),
    "heavy, unroll 16": (None, ["-D_CCCL_META_UNROLL_LIMIT=16"]),
}

CHILD = """
import json, sys, time
from cujit._runtime import toolchain
import cujit
path, flags, arch, heavy = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
expr = "k<128>" if heavy else "k"
warm = cujit.load_jit("warm", cuda_files=[sys.argv[5]], cuda_wrappers=[("w", "warm_up")])
warm.compile(arch)
m = cujit.load_jit("bench", cuda_files=[path], cuda_wrappers=[("k", expr)], extra_cuda_cflags=flags)
t = time.perf_counter()
m.compile(arch)
print(json.dumps((time.perf_counter() - t) * 1e3))
"""


def run_case(folder: Path, name: str, prefix: str | None, flags: list[str], arch: str,
             server_cache: Path | None = None, variant: int = 0) -> float:
    source = folder / f"case_{abs(hash(name))}.cuh"
    text = HEAVY if prefix is None else prefix + KERNEL
    source.write_text(text.replace("std::sqrt(v)", f"std::sqrt(v) + {variant}.0f"))
    warm = folder / "warm.cuh"
    warm.write_text("__global__ void warm_up(int* p) { *p = 0; }\n")
    command = [sys.executable, "-c", CHILD, str(source), json.dumps(flags), arch, "1" if prefix is None else "0",
               str(warm)]
    if server_cache is not None:
        for entry in server_cache.iterdir():  # an empty cache, but the same server
            if entry.name != "server":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        env = {**os.environ, "CUJIT_CACHE_DIR": str(server_cache), "CUJIT_COMPILE_SERVER": "1"}
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CUJIT_CACHE_DIR": cache, "CUJIT_COMPILE_SERVER": "0"}
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def with_server(arch: str, repeat: int) -> None:
    """The heavy kernel through a running compile server, against the same processes compiling alone."""
    times: dict[str, list[float]] = {"heavy, alone": [], "heavy, server": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        # Start the server and let it make the PCH of the heavy headers, from other kernels than those timed.
        for variant in (-1, -2):
            run_case(Path(tmp), "heavy", None, [], arch, cache, variant)
            time.sleep(5)
        for i in range(repeat):
            times["heavy, alone"].append(run_case(Path(tmp), "heavy", None, [], arch, None, i))
            times["heavy, server"].append(run_case(Path(tmp), "heavy", None, [], arch, cache, i))
    for name, values in times.items():
        print(f"{name:18s} best {min(values):8.1f} ms   median {statistics.median(values):8.1f} ms   "
              f"all {' '.join(f'{v:.0f}' for v in values)}")


LIGHT = ("<cstdint>", "<cstddef>", "<cmath>", "<cfloat>", "<climits>", "all five light")


def light_in_process(arch: str, repeat: int) -> None:
    """The light headers, interleaved in one process: the per-process noise is larger than what they cost."""
    import cujit
    from cujit._runtime import compile as compiling
    from cujit._runtime import headers

    headers.pch_options = lambda *args: ()  # every compile parses its headers in full, as the first one does
    with tempfile.TemporaryDirectory() as tmp:
        modules = {}
        for name in ("empty", *LIGHT):
            path = Path(tmp) / f"light_{len(modules)}.cuh"
            path.write_text(CASES[name][0] + KERNEL)  # type: ignore[operator]
            modules[name] = cujit.load_jit("light", len(modules), cuda_files=[path], cuda_wrappers=[("k", "k")])
        compiling.compile_nvrtc(modules["empty"].sources, arch)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(repeat):
            for name, module in modules.items():
                start = time.perf_counter()
                compiling.compile_nvrtc(module.sources, arch)
                times[name].append((time.perf_counter() - start) * 1e3)
    empty = min(times["empty"])
    print(f"in one process, best / median of {repeat} interleaved compiles:")
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        extra = "" if name == "empty" else f"  (+{best - empty:5.1f} ms over empty)"
        print(f"{name:18s} best {best:8.1f} ms   median {median:8.1f} ms{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--light", action="store_true", help="only the light headers, in one process, 4x repeats")
    parser.add_argument("--server", action="store_true", help="only the heavy kernel, alone and through a server")
    args = parser.parse_args()
    if args.light:
        light_in_process(args.arch, args.repeat * 4)
        return
    from cujit._runtime import toolchain

    print(f"NVRTC {'.'.join(map(str, toolchain.nvrtc_version()))}, {args.arch}, CPU: {_cpu()}, "
          f"{os.cpu_count()} cores, best / median of {args.repeat} new processes")
    if args.server:
        with_server(args.arch, args.repeat)
        return
    times: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):  # interleaved, so that a burst of load hits every case alike
            for name, (prefix, flags) in CASES.items():
                times[name].append(run_case(Path(tmp), name, prefix, flags, args.arch))
    empty = min(times["empty"])
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        extra = "" if name == "empty" else f"  (+{best - empty:7.1f} ms over empty)"
        print(f"{name:18s} best {best:8.1f} ms   median {median:8.1f} ms{extra}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
