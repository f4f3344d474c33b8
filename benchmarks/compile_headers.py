"""Compile time of the standard headers under NVRTC, each compile in a new process with an empty cache.

    python benchmarks/compile_headers.py [--arch sm_90] [--repeat 5] [--light]

Prints, per case, the best and the median over the repeats of the time ``JitModule.compile`` takes in a fresh
process, after one unrelated warm-up compile (the first compile of a process also loads NVRTC's builtins, about as
long as a small module takes), and the difference to the empty kernel.
"heavy" is a kernel that includes <type_traits>, <cmath>, <utility> and cub/block/block_reduce.cuh; "heavy,
unroll 16" is the same kernel with libcu++'s own default for NVRTC (-D_CCCL_META_UNROLL_LIMIT=16), which is how it
compiled before cujit set nvcc's value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def run_case(folder: Path, name: str, prefix: str | None, flags: list[str], arch: str) -> float:
    source = folder / f"case_{abs(hash(name))}.cuh"
    source.write_text(HEAVY if prefix is None else prefix + KERNEL)
    warm = folder / "warm.cuh"
    warm.write_text("__global__ void warm_up(int* p) { *p = 0; }\n")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CUJIT_CACHE_DIR": cache}
        command = [sys.executable, "-c", CHILD, str(source), json.dumps(flags), arch, "1" if prefix is None else "0",
                   str(warm)]
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


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
    args = parser.parse_args()
    if args.light:
        light_in_process(args.arch, args.repeat * 4)
        return
    from cujit._runtime import toolchain

    print(f"NVRTC {'.'.join(map(str, toolchain.nvrtc_version()))}, {args.arch}, CPU: {_cpu()}, "
          f"{os.cpu_count()} cores, best / median of {args.repeat} new processes")
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
