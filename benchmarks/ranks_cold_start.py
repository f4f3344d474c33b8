"""Many processes starting at once on one host, cold: each module compiled once, and the total against one process.

    python benchmarks/ranks_cold_start.py [--ranks 4] [--modules 12] [--arch sm_90]

Every rank of a serving job declares the same kernels and compiles them on its first calls. Here each of N
processes compiles the same modules (instantiations of tests/kernels/ported_norm.cuh, as `compile_many.py` builds
them), in the same order, into one empty cache folder, all started at the same moment; the baseline is one process
compiling them alone. Printed: the wall time of both, and the compiles every rank counted (their sum must equal the
number of modules: the cache's lock makes the others wait and read the result). No GPU needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import cujit
from benchmarks.compile_many import modules
mods = modules()[: int(sys.argv[1])]
start = time.perf_counter()
for m in mods:
    m.compile(arch=sys.argv[2])
print(json.dumps({{"seconds": time.perf_counter() - start, "compiles": cujit.cache_stats()["compiles"]}}))
"""


def _run(ranks: int, count: int, arch: str, cache: str) -> tuple[float, list[dict[str, float]]]:
    env = {**os.environ, "CUJIT_CACHE_DIR": cache, "CUJIT_COMPILE_SERVER": "0"}
    code = CHILD.format(repo=str(REPO))
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(count), arch], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(ranks)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a rank failed with exit code {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--modules", type=int, default=12)
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    print(f"{len(os.sched_getaffinity(0))} usable cores, {args.modules} modules, {args.ranks} ranks")
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as shared:
        alone, solo = _run(1, args.modules, args.arch, one)
        together, ranks = _run(args.ranks, args.modules, args.arch, shared)
        # The same ranks again on the filled cache: what starting N interpreters costs here, compiles aside.
        warm, _ = _run(args.ranks, args.modules, args.arch, shared)
    compiles = [int(r["compiles"]) for r in ranks]
    print(f"one process:            {alone:6.1f} s wall, {int(solo[0]['compiles'])} compiles")
    print(f"{args.ranks} processes at once:   {together:6.1f} s wall ({together / alone:.2f}x one process), "
          f"compiles per rank {compiles} (sum {sum(compiles)})")
    print(f"the same, cache filled: {warm:6.1f} s wall (start-up of {args.ranks} processes and disk hits); "
          f"cold minus that: {together - warm:.1f} s")


if __name__ == "__main__":
    main()
