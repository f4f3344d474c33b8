"""Run the whole test suite on a GPU machine in parallel shards, one pytest process per shard, and sum the counts.

Usage: python3 .ci/gpu/run_suite.py [--shards N] [--logs DIR] [FILE ...] [-- PYTEST_ARGS ...]

The GPU tests spend most of their time compiling with NVRTC on the CPU, so N processes on a machine of many cores
finish the suite in a fraction of one process's time. Test files are dealt to the shards largest first (by size,
a stand-in for their run time). Each shard's log goes to DIR (default: $OUT or ./out); the last lines printed are
every shard's pytest summary and the totals, and the exit code is non-zero if any shard failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _shards(files: list[Path], n: int) -> list[list[Path]]:
    loads = [0] * n
    shards: list[list[Path]] = [[] for _ in range(n)]
    for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        i = loads.index(min(loads))
        shards[i].append(path)
        loads[i] += path.stat().st_size
    return [s for s in shards if s]


def main() -> int:
    """Run the shards; the exit code is the worst shard's."""
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--logs", default=os.environ.get("OUT", "out"))
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    files = [Path(f) for f in args.files] or sorted((ROOT / "tests").glob("**/test_*.py"))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    procs = []
    for i, shard in enumerate(_shards(files, args.shards)):
        log = (logs / f"shard{i:02d}.log").open("w")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *map(str, shard)]
        procs.append((i, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    totals: dict[str, int] = {}
    worst = 0
    for i, proc, log in procs:
        code = proc.wait()
        log.close()
        text = (logs / f"shard{i:02d}.log").read_text(errors="replace").strip().splitlines()
        summary = text[-1] if text else "(no output)"
        for number, word in _COUNT.findall(summary):
            key = "errors" if word.startswith("error") else word
            totals[key] = totals.get(key, 0) + int(number)
        failures = [line for line in text if line.startswith(("FAILED", "ERROR"))]
        print(f"shard {i}: exit {code}: {summary}")
        for line in failures[:20]:
            print(f"  {line[:300]}")
        worst = max(worst, code)
    elapsed = time.perf_counter() - start
    print(f"total in {elapsed:.0f} s: " + ", ".join(f"{v} {k}" for k, v in sorted(totals.items())))
    return worst


if __name__ == "__main__":
    sys.exit(main())
