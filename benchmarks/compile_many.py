"""Wall time of compiling 40 public-style kernel instantiations: one after the other, and with compile_modules.

    python benchmarks/compile_many.py [--arch sm_90] [--jobs N]

Each run starts from an empty cache folder. "jobs=1, no PCH" is how cujit compiled before precompiled headers: one
module after the other, every one parsing its headers in full. The modules are instantiations of
tests/kernels/ported_*.cuh (RMSNorm with CUB, activations, a CUB max reduction, WMMA, C++20), each its own module,
as a serving process declares them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import cujit
from benchmarks.compile_many import modules
jobs = int(sys.argv[1])
if sys.argv[3] == "no-pch":
    from cujit._runtime import headers
    headers.pch_options = lambda *args: ()
mods = modules()
start = time.perf_counter()
cujit.compile_modules(mods, arch=sys.argv[2], jobs=jobs)
print(len(mods), time.perf_counter() - start)
"""


def modules() -> list:
    import cujit

    kernels = Path(__file__).resolve().parent.parent / "tests" / "kernels"
    norm, wmma, concepts = kernels / "ported_norm.cuh", kernels / "ported_wmma.cuh", kernels / "ported_concepts.cuh"
    types = ["__half", "__nv_bfloat16", "float"]
    exprs = [f"ported::fused_add_rms_norm<{t}, {b}>" for t in types for b in (128, 256, 512, 1024)]
    exprs += [f"ported::act_and_mul<{t}, &ported::{a}>" for t in types for a in ("silu", "gelu_tanh")]
    exprs += [f"ported::row_abs_max<{t}, {b}>" for t in types for b in (128, 256, 512, 1024)]
    out = [cujit.load_jit("norm", i, cuda_files=[norm], cuda_wrappers=[("k", e)]) for i, e in enumerate(exprs)]
    out.append(cujit.load_jit("wmma", cuda_files=[wmma], cuda_wrappers=[("k", "ported::wmma_gemm")]))
    out += [cujit.load_jit("axpb", t, cuda_files=[concepts], cuda_wrappers=[("k", f"ported::axpb<{t}>")],
                           extra_cuda_cflags=["-std=c++20"]) for t in ("float", "double", "int8_t", "int16_t",
                                                                        "int32_t", "int64_t", "uint8_t", "uint32_t",
                                                                        "uint64_t")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    repo = str(Path(__file__).resolve().parent.parent)
    print(f"{len(os.sched_getaffinity(0))} usable cores")
    for jobs, pch in ((1, "no-pch"), (1, "pch"), (args.jobs, "pch")):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "CUJIT_CACHE_DIR": cache}
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD.format(repo=repo), str(jobs), args.arch, pch],
                                  env=env, capture_output=True, text=True, check=True)
            count, seconds = done.stdout.split()
            total = time.perf_counter() - start
            label = f"jobs={jobs}{', no PCH' if pch == 'no-pch' else ''}"
            print(f"{label:16s} {count} modules in {float(seconds):6.1f} s (whole process {total:.1f} s)")


if __name__ == "__main__":
    main()
